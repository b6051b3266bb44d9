"""kvstate on the shapes users run (issue 29): random-weight models with the exact attention shapes of
Llama-3.1-8B, Mistral-7B (sliding window), Qwen2.5-7B, Gemma-3-4B and a 70B cut to 4 layers, each
measured side by side against the plain model in one run.

Performance needs shapes, not trained weights: every model is built from a config (no hub access),
seeded, with a byte-level tokenizer (random text -> one token per byte). Per shape:

- ``capture``: ``kvstate.extract`` (elu states of every layer) vs a plain forward of the same batch;
- ``study``: ``capture_representations`` (the study's one pass, default settings) vs a plain forward
  with ``output_hidden_states=True``;
- ``monitor``: ``Monitor.generate`` (upper 3 layers, ``kv-elu-S/n``, a folded logistic probe, the
  batch encoded once outside the loop, ``final_state=False``) vs ``model.generate``, per token, at
  batch 1, 8 and 64, equal lengths (``min_new_tokens``);
- ``memory``: the running state's bytes per sequence (monitored layers, and all layers) next to the
  KV cache's bytes per sequence at the run's length; on CUDA the peak allocated memory of plain
  generate and of the monitor at each batch.

Ratios are medians of per-round ratios over interleaved rounds. On CPU use ``--scale`` (heads,
layers, widths and vocabulary shrink; head_dim, RoPE and sliding windows stay exact); on a GPU run
full size (bfloat16 by default there)::

    python benchmarks/shapes.py --scale 0.0625                   # CPU, a few minutes on 2 cores
    python benchmarks/shapes.py --device cuda --out $OUT          # H100/H200 class GPU, full size

Writes ``shapes_<device>[_scale<s>].json`` under ``--out`` (default benchmarks/results).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# Values copied from each model's published config.json on the Hugging Face hub (read by hand, not
# fetched): meta-llama/Llama-3.1-8B, mistralai/Mistral-7B-v0.1, Qwen/Qwen2.5-7B,
# google/gemma-3-4b-pt (its text_config; Gemma3TextConfig's default layer pattern: 5 sliding : 1 full),
# meta-llama/Llama-3.1-70B (80 layers there; cut to 4 here).
LLAMA31_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
SHAPES = {
    "llama-3.1-8b": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=8, head_dim=128, vocab_size=128256, rope_theta=500000.0,
                                   rope_scaling=LLAMA31_ROPE, max_position_embeddings=131072, rms_norm_eps=1e-5)),
    "mistral-7b": ("mistral", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                                   num_key_value_heads=8, head_dim=128, vocab_size=32000, rope_theta=10000.0,
                                   sliding_window=4096, max_position_embeddings=32768, rms_norm_eps=1e-5)),
    "qwen2.5-7b": ("qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                                 num_key_value_heads=4, vocab_size=152064, rope_theta=1000000.0,
                                 max_position_embeddings=131072, rms_norm_eps=1e-6, use_sliding_window=False)),
    "gemma-3-4b": ("gemma3_text", dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8,
                                       num_key_value_heads=4, head_dim=256, vocab_size=262208, rope_theta=1000000.0,
                                       rope_local_base_freq=10000.0, rope_scaling={"rope_type": "linear", "factor": 8.0},
                                       sliding_window=1024, query_pre_attn_scalar=256, max_position_embeddings=131072)),
    "llama-3.1-70b-4layers": ("llama", dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=4,
                                            num_attention_heads=64, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                                            rope_theta=500000.0, rope_scaling=LLAMA31_ROPE, max_position_embeddings=131072,
                                            rms_norm_eps=1e-5)),
}
WORDS = ("the model reads every token and writes a state of keys and values while the monitor keeps "
         "one running sum per head so that each new word costs the same small update").split()


def _round(x: float, to: int, low: int) -> int:
    return max(low, int(round(x / to)) * to)


def scaled(arch: str, cfg: dict, scale: float) -> dict:
    """The config with heads, layers, widths and vocabulary times ``scale``; head_dim, RoPE, windows exact."""
    if scale == 1.0:
        return dict(cfg)
    if not 0 < scale <= 1:
        raise ValueError(f"--scale must be in (0, 1], got {scale}")
    out = dict(cfg)
    hd = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    kv = max(1, round(cfg["num_key_value_heads"] * scale))
    group = cfg["num_attention_heads"] // cfg["num_key_value_heads"]
    out.update(num_key_value_heads=kv, num_attention_heads=kv * group, head_dim=hd,  # the GQA group stays exact
               hidden_size=_round(cfg["hidden_size"] * scale, 64, 64),
               intermediate_size=_round(cfg["intermediate_size"] * scale, 64, 128),
               num_hidden_layers=max(4, round(cfg["num_hidden_layers"] * scale)),
               vocab_size=max(1024, round(cfg["vocab_size"] * scale)))
    if arch == "gemma3_text":  # keep a global layer: 5 sliding : 1 full, and the last layer full
        L = out["num_hidden_layers"]
        out["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 or i == L - 1 else "sliding_attention" for i in range(L)]
    return out


def byte_tokenizer():
    """A byte-level fast tokenizer (256 byte symbols + bos/eos), built locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({"<s>": 256, "</s>": 257})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="</s>")


def build(name: str, scale: float, device: str, dtype: torch.dtype, seed: int = 0):
    """A seeded random-weight LoadedModel of shape ``name`` on ``device`` (weights initialised there)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from kvstate.models import from_hf

    arch, cfg = SHAPES[name]
    cfg = scaled(arch, cfg, scale)
    config = AutoConfig.for_model(arch, **cfg, bos_token_id=256, eos_token_id=257, pad_token_id=257,
                                  tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=dtype)
    model.generation_config.eos_token_id = None  # random weights: every run generates exactly the asked tokens
    return from_hf(model, byte_tokenizer(), name=name), cfg


def texts(n: int, chars: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = ""
        while len(s) < chars:
            s += rng.choice(WORDS) + " "
        out.append(s[:chars])
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def side_by_side(fns: dict, device: str, rounds: int, ref: str) -> dict:
    """Median seconds per variant and the median per-round ratio to ``ref`` (one warm-up, rotated order)."""
    names = list(fns)
    for n in names:
        fns[n]()
    secs = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            gc.collect()
            _sync(device)
            t = time.perf_counter()
            fns[n]()
            _sync(device)
            secs[n].append(time.perf_counter() - t)
    return {n: {"s": secs[n], "median_s": float(np.median(secs[n])),
                "ratio": float(np.median([a / b for a, b in zip(secs[n], secs[ref])]))} for n in names}


def _peak(fn, device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    fn()
    return int(torch.cuda.max_memory_allocated())


def bench_shape(name: str, a) -> dict:
    from run import monitor_detector, monitor_spec

    import kvstate
    from kvstate.capture import check_layers, encode_all, make_batch
    from kvstate.monitor import Monitor
    from kvstate.representations import RepresentationSettings, capture_representations

    t0 = time.perf_counter()
    lm, cfg = build(name, a.scale, a.device, a.dtype)
    model, tok = lm.model, lm.tokenizer
    out = {"shape": name, "config": {k: v for k, v in cfg.items() if not isinstance(v, dict)},
           "build_s": time.perf_counter() - t0, "parameters": sum(p.numel() for p in model.parameters())}
    prompts = texts(a.capture_batch, a.prompt_tokens, seed=1)
    batch = make_batch(encode_all(lm, prompts, chat=False), ["end"], "all", 0, tok.pad_token_id, "left")
    ids, mask = batch.input_ids.to(a.device), batch.attention_mask.to(a.device)

    @torch.inference_mode()
    def forward(**kw):
        return model(input_ids=ids, attention_mask=mask, use_cache=False, **kw).logits[:, -1].sum()

    out["capture"] = side_by_side({"plain_forward": forward,
                                   "extract": lambda: kvstate.extract(lm, prompts, layers="all", phi="elu", chat=False,
                                                                      batch_size=a.capture_batch, progress=False)},
                                  a.device, a.rounds, "plain_forward")
    settings = RepresentationSettings()
    out["study"] = side_by_side({"plain_forward_hidden": lambda: forward(output_hidden_states=True),
                                 "capture_representations": lambda: capture_representations(
                                     lm, prompts, settings, batch_size=a.capture_batch, chat=False, progress=False)},
                                a.device, a.rounds, "plain_forward_hidden")
    layers = check_layers(lm, "upper3")
    spec = monitor_spec(layers)
    det, dim = monitor_detector(lm, spec, "logistic")
    mon = Monitor(lm, spec, det)
    out["monitor"] = {"layers": layers, "feature_dim": dim, "new_tokens": a.new_tokens, "batches": {}}
    for B in a.batches:
        mb = mon.encode(texts(B, a.prompt_tokens, seed=2 + B), chat=False)
        mids, mmask = mb.input_ids.to(a.device), mb.attention_mask.to(a.device)
        n = a.new_tokens

        @torch.inference_mode()
        def plain():
            return model.generate(input_ids=mids, attention_mask=mmask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, pad_token_id=tok.pad_token_id)

        def monitored():
            return mon.generate(mb, max_new_tokens=n, min_new_tokens=n, final_state=False)

        res = side_by_side({"plain_generate": plain, "monitor": monitored}, a.device, a.rounds, "plain_generate")
        for r in res.values():
            r["per_token_ms"] = r["median_s"] / n * 1e3
        S, z, cnt = mon.state()
        res["scoring"] = mon.scoring
        res["peak_bytes"] = {"plain_generate": _peak(plain, a.device), "monitor": _peak(monitored, a.device)}
        out["monitor"]["batches"][str(B)] = res
    L, H = lm.num_layers, cfg["num_key_value_heads"]
    hd = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    per_layer = H * (hd * hd + hd + 1) * 4  # elu: d_phi = head_dim; S, z, n in float32
    T = a.prompt_tokens + a.new_tokens
    out["memory"] = {"state_bytes_per_seq_monitored": int((S[0].numel() + z[0].numel() + cnt[0].numel()) * S.element_size()),
                     "state_bytes_per_seq_all_layers": per_layer * L,
                     "kv_cache_bytes_per_seq": 2 * L * H * hd * T * torch.finfo(a.dtype).bits // 8,
                     "kv_cache_tokens": T}
    out["total_s"] = time.perf_counter() - t0
    return out


def summary(res: dict) -> str:
    lines = [f"{res['device']} {res['dtype']} scale {res['scale']}: ratios to the plain model (median of rounds)",
             f"{'shape':24} {'capture':>8} {'study':>8} " + " ".join(f"{'mon b' + b:>9}" for b in map(str, res["batches"]))
             + f" {'state/seq':>10} {'kv/seq':>10}"]
    for s in res["shapes"]:
        if "error" in s:
            lines.append(f"{s['shape']:24} error: {s['error']}")
            continue
        mons = " ".join(f"{s['monitor']['batches'][str(b)]['monitor']['ratio']:9.3f}" for b in res["batches"])
        m = s["memory"]
        lines.append(f"{s['shape']:24} {s['capture']['extract']['ratio']:8.2f} "
                     f"{s['study']['capture_representations']['ratio']:8.2f} {mons} "
                     f"{m['state_bytes_per_seq_all_layers'] / 2**20:8.1f}MB {m['kv_cache_bytes_per_seq'] / 2**20:8.1f}MB")
    return "\n".join(lines)


def render(res: dict) -> str:
    """The run as markdown: the summary table and its absolute numbers."""
    lines = [f"# Big-model shapes, random weights (issue 29): {res['device_name']}, {res['dtype']}, scale {res['scale']}", "",
             f"Command: `{res['command']}`  ", f"Started {res['started']}, load average at start {res['loadavg_start']}, "
             f"at end {res.get('loadavg_end')}; torch {res['torch']}, {res['threads']} CPU threads; {res['rounds']} "
             f"interleaved rounds; prompts of {res['prompt_tokens']} tokens, {res['new_tokens']} new tokens.", "",
             "Ratios: kvstate / plain model, median of per-round ratios (capture: `extract` vs a forward; study: "
             "`capture_representations` vs a forward with hidden states; monitor: `Monitor.generate` vs `generate`).", "",
             "```", summary(res), "```", "", "| shape | batch | plain ms/token | monitor ms/token | ratio |", "|---|---|---|---|---|"]
    for s in res["shapes"]:
        for b, v in s.get("monitor", {}).get("batches", {}).items():
            lines.append(f"| {s['shape']} | {b} | {v['plain_generate']['per_token_ms']:.2f} | "
                         f"{v['monitor']['per_token_ms']:.2f} | {v['monitor']['ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    p.add_argument("--scale", type=float, default=1.0, help="shrink heads, layers, widths, vocab (CPU: 0.0625)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--prompt-tokens", type=int, default=None, help="default: 256 on cuda, 32 on cpu")
    p.add_argument("--new-tokens", type=int, default=None, help="default: 32 on cuda, 8 on cpu")
    p.add_argument("--capture-batch", type=int, default=None, help="default: 8 on cuda, 4 on cpu")
    p.add_argument("--rounds", type=int, default=None, help="default: 3 on cuda, 2 on cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no further shape after this many seconds (the rest are recorded as skipped)")
    a = p.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False; run on a GPU machine or pass --device cpu")
    gpu = a.device.startswith("cuda")
    a.dtype = getattr(torch, a.dtype or ("bfloat16" if gpu else "float32"))
    a.prompt_tokens = a.prompt_tokens or (256 if gpu else 32)
    a.capture_batch = a.capture_batch or (8 if gpu else 4)
    a.rounds = a.rounds or (3 if gpu else 2)
    a.new_tokens = a.new_tokens or (32 if gpu else 8)
    torch.set_num_threads(a.threads)
    res = {"command": "python " + " ".join(shlex.quote(x) for x in ["benchmarks/shapes.py", *sys.argv[1:]]),
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": os.getloadavg(), "device": a.device,
           "device_name": torch.cuda.get_device_name() if gpu else "cpu", "dtype": str(a.dtype).removeprefix("torch."),
           "scale": a.scale, "batches": a.batches, "prompt_tokens": a.prompt_tokens, "new_tokens": a.new_tokens,
           "rounds": a.rounds, "torch": torch.__version__, "threads": a.threads, "shapes": []}
    a.out.mkdir(parents=True, exist_ok=True)
    tag = a.device.split(":")[0] + ("" if a.scale == 1.0 else f"_scale{a.scale:g}")
    path = a.out / f"shapes_{tag}.json"
    t0 = time.perf_counter()
    for name in a.shapes:
        if a.budget_s is not None and time.perf_counter() - t0 > a.budget_s:
            res["shapes"].append({"shape": name, "error": f"skipped: --budget-s {a.budget_s:g} spent"})
            continue
        print(f"[shapes] {name} ...", flush=True)
        try:
            res["shapes"].append(bench_shape(name, a))
            gc.collect()  # the shape's model went out of scope with bench_shape
            if a.device.startswith("cuda"):
                torch.cuda.empty_cache()
        except torch.cuda.OutOfMemoryError as e:  # one shape too big must not lose the others
            res["shapes"].append({"shape": name, "error": f"out of memory: {str(e).splitlines()[0]}"})
            gc.collect()
            torch.cuda.empty_cache()
        res["loadavg_end"] = os.getloadavg()
        path.write_text(json.dumps(res, indent=1) + "\n")  # after every shape: a killed run keeps what it measured
    path.with_suffix(".md").write_text(render(res))
    print(summary(res))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
