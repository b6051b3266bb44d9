"""kvstate benchmarks (issue 8): capture time, memory vs length, monitor overhead, representation size.

Everything is measured in one run on one machine, fp32, ``torch.set_num_threads(2)``, on synthetic
token ids of exact lengths. Times are medians of interleaved rounds after a warm-up: in each round
every method runs once (in a rotated order), and ratios are the median of the per-round ratios to
the plain forward of the same round, so that load from other processes hits all methods alike.

    python benchmarks/run.py --quick            # what `make bench` runs (~15-25 min on 2 cores)
    python benchmarks/run.py                    # full grid (~1.5-2 h on 2 busy cores)
    python benchmarks/run.py --only memory      # one section (capture, memory, monitor, size, profile);
                                                # other sections' numbers in bench.json are kept

Writes benchmarks/results/bench.json, summary.md and *.png. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

THREADS = 2
HERE = Path(__file__).resolve().parent
SECTIONS = ("capture", "memory", "monitor", "size", "profile")
MB = 1024 * 1024


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# methods: each is setup(lm, B, T) -> callable() that returns what the method keeps
# ---------------------------------------------------------------------------------------------

def synthetic_ids(lm, B: int, T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1000 + T * 10 + B)
    special = set(lm.tokenizer.all_special_ids)
    lo = max(special) + 1 if special and max(special) < 1000 else 1000
    hi = min(lm.tokenizer.vocab_size, 30000)
    return torch.randint(lo, hi, (B, T), generator=g)


def exact_texts(lm, ids: torch.Tensor) -> tuple[list[str], list[int]]:
    """Texts that kvstate's own tokenisation (chat=False) turns into exactly T tokens where possible."""
    from kvstate.capture import encode_all

    T = ids.shape[1]
    texts, lens = [], []
    for row in ids.tolist():
        text = lm.tokenizer.decode(row)
        for _ in range(12):
            enc = encode_all(lm, [text], chat=False)[0].ids
            if len(enc) == T:
                break
            if len(enc) > T:
                text = lm.tokenizer.decode(enc[:T])
            else:
                text = text + lm.tokenizer.decode(row[: T - len(enc)])
        texts.append(text)
        lens.append(len(encode_all(lm, [text], chat=False)[0].ids))
    return texts, lens


class Methods:
    """Capture methods for one loaded model (peers get their own copy of the model)."""

    def __init__(self, lm, want: list[str]):
        self.lm, self.want = lm, want
        self.model = lm.model
        self.layers = list(range(lm.num_layers))
        self.bridge = self.eager = self.nn = None
        if "tl_run_with_cache" in want or "plain_eager" in want:
            from transformer_lens.model_bridge import TransformerBridge

            own = copy.deepcopy(lm.model)  # boot_transformers switches its model to eager in place
            self.bridge = TransformerBridge.boot_transformers(lm.name, hf_model=own, tokenizer=lm.tokenizer)
            self.eager = own
            self.tl_names = {f"blocks.{l}.attn.{h}" for l in self.layers for h in ("hook_rot_k", "hook_v")}
            assert all(n in self.bridge.hook_dict for n in self.tl_names), "TransformerLens hook names changed"
        if "nnsight_trace" in want:
            import warnings

            from nnsight import LanguageModel

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.nn = LanguageModel(lm.model, tokenizer=lm.tokenizer)

    def setup(self, name: str, ids: torch.Tensor):
        lm, model = self.lm, self.model
        B, T = ids.shape
        mask = torch.ones_like(ids)
        if name == "plain":
            def f():
                with torch.inference_mode():
                    return model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            return f
        if name == "plain_eager":
            eager = self.eager

            def f():
                with torch.inference_mode():
                    return eager(input_ids=ids, attention_mask=mask, use_cache=False).logits
            return f
        if name == "hidden_states":
            def f():
                with torch.inference_mode():
                    out = model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
                return out.hidden_states
            return f
        if name in ("kvstate_capture", "kvstate_run"):
            from kvstate.capture import KVCapture, make_batch, run
            from kvstate.capture.tokens import Encoded
            from kvstate.state import StateRecorder
            from kvstate.state.phi import get_phi

            encoded = [Encoded(row, len(row), ["user"] * len(row)) for row in ids.tolist()]
            pad = lm.tokenizer.pad_token_id or 0
            if name == "kvstate_run":  # kvstate's own loop on pre-tokenised items (sort, pad, weights)
                def f():
                    rec = StateRecorder(self.layers, [get_phi("identity")])
                    run(lm, encoded, [rec], reads=["end"], batch_size=B, progress=False)
                    return rec.out
                return f
            batch = make_batch(encoded, ["end"], "all", 0, pad, "right")

            def f():  # the floor of the kvstate path: one capture-wrapped forward, no batching work
                rec = StateRecorder(self.layers, [get_phi("identity")])
                rec.begin(batch)
                with KVCapture(model, rec), torch.inference_mode():
                    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, use_cache=False)
                rec.end(out)
                return rec.out
            return f
        if name == "kvstate_extract":
            import kvstate

            texts, lens = exact_texts(lm, ids)
            self.extract_lens = lens

            def f():
                return kvstate.extract(lm, texts, layers="all", phi="identity", chat=False, batch_size=B, progress=False)
            return f
        if name == "tl_run_with_cache":
            bridge, names = self.bridge, self.tl_names

            def f():
                with torch.no_grad():  # TL's docs: torch.set_grad_enabled(False) for inference
                    _, cache = bridge.run_with_cache(ids, names_filter=lambda n: n in names)
                return cache
            return f
        if name == "nnsight_trace":
            nn = self.nn

            def f():
                saved = []
                with torch.no_grad():
                    with nn.trace(ids):
                        for layer in nn.model.layers:  # k_proj before v_proj, layer by layer
                            saved.append((layer.self_attn.k_proj.output.save(), layer.self_attn.v_proj.output.save()))
                return saved
            return f
        raise KeyError(name)


def nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.nelement() * obj.element_size()
    if isinstance(obj, dict) or hasattr(obj, "items"):
        try:
            return sum(nbytes(v) for _, v in obj.items())
        except Exception:
            pass
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v) for v in obj)
    if hasattr(obj, "S") and hasattr(obj, "z"):
        return nbytes(obj.S) + nbytes(obj.z) + nbytes(getattr(obj, "n", None))
    return 0


def timed(f):
    w, c = time.perf_counter(), time.process_time()
    out = f()
    return time.perf_counter() - w, time.process_time() - c, out


def interleaved(fns: dict, rounds: int, warmup: int = 1, ref: str = "plain") -> dict:
    """Median wall/CPU seconds per method, and the median per-round ratio to ``ref``."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    out_bytes = {}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            gc.collect()
            w, c, out = timed(fns[n])
            wall[n].append(w)
            cpu[n].append(c)
            out_bytes[n] = nbytes(out)
            del out
    res = {}
    for n in names:
        res[n] = {"wall_s": wall[n], "cpu_s": cpu[n], "wall_median_s": float(np.median(wall[n])),
                  "cpu_median_s": float(np.median(cpu[n])), "output_bytes": out_bytes[n]}
        if ref in wall:
            res[n]["ratio_wall"] = float(np.median([a / b for a, b in zip(wall[n], wall[ref])]))
            res[n]["ratio_cpu"] = float(np.median([a / b for a, b in zip(cpu[n], cpu[ref])]))
    return res


# ---------------------------------------------------------------------------------------------
# 1. capture time
# ---------------------------------------------------------------------------------------------

CAPTURE_METHODS = ["plain", "kvstate_capture", "kvstate_run", "kvstate_extract", "hidden_states",
                   "tl_run_with_cache", "plain_eager", "nnsight_trace"]


def capture_grid(quick: bool):
    """(model, B, T, rounds) to run, and (model, B, T, why) skipped."""
    if quick:
        run = [("smollm2-135m", 1, 128, 5), ("smollm2-135m", 8, 128, 3), ("smollm2-135m", 1, 1024, 3),
               ("qwen2.5-0.5b", 1, 128, 3)]
        skip = [(m, b, t, "not in --quick (run without --quick)") for m, b, t in
                [("smollm2-135m", 8, 1024), ("qwen2.5-0.5b", 8, 128), ("qwen2.5-0.5b", 1, 1024), ("qwen2.5-0.5b", 8, 1024)]]
    else:
        run = [("smollm2-135m", 1, 128, 5), ("smollm2-135m", 8, 128, 3), ("smollm2-135m", 1, 1024, 3),
               ("smollm2-135m", 8, 1024, 2), ("qwen2.5-0.5b", 1, 128, 3), ("qwen2.5-0.5b", 8, 128, 2),
               ("qwen2.5-0.5b", 1, 1024, 2)]
        skip = [("qwen2.5-0.5b", 8, 1024, "one plain forward alone takes ~3-5 min on 2 cores; x8 methods x3 runs "
                 "would be over an hour")]
    return run, skip


def bench_capture(quick: bool) -> dict:
    import kvstate

    grid, skipped = capture_grid(quick)
    out = {"configs": [], "skipped": [dict(zip(("model", "batch", "tokens", "why"), s)) for s in skipped]}
    for model_name in dict.fromkeys(m for m, *_ in grid):
        lm = kvstate.load_model(model_name)
        meth = Methods(lm, CAPTURE_METHODS)
        for m, B, T, rounds in grid:
            if m != model_name:
                continue
            ids = synthetic_ids(lm, B, T)
            fns = {n: meth.setup(n, ids) for n in CAPTURE_METHODS}
            log(f"capture {m} B={B} T={T} rounds={rounds}")
            res = interleaved(fns, rounds, warmup=1)
            cfg = {"model": m, "batch": B, "tokens": T, "rounds": rounds, "methods": res,
                   "extract_tokens": getattr(meth, "extract_lens", None)}
            out["configs"].append(cfg)
            log("  " + ", ".join(f"{n}={r['wall_median_s']:.2f}s x{r.get('ratio_wall', 0):.3f}" for n, r in res.items()))
            save_partial("capture", out)
        del meth, lm
        gc.collect()
    return out


# ---------------------------------------------------------------------------------------------
# 2. memory vs length (fresh subprocess per measurement, peak RSS via /proc VmHWM reset)
# ---------------------------------------------------------------------------------------------

MEMORY_METHODS = ["plain", "kvstate_capture", "hidden_states", "tl_run_with_cache", "nnsight_trace"]


def _status(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_rss(f) -> dict:
    """Run ``f()`` once and measure its peak extra RSS (Linux): trim the heap, reset the kernel's
    peak counter (``/proc/self/clear_refs`` <- 5), run, read ``VmHWM`` minus the RSS before.

    Returns baseline/peak/held RSS in bytes, ``peak_extra``, ``held_extra``, ``seconds`` and the
    bytes of what ``f`` returned (``output_bytes``, :func:`nbytes`). Meant for a fresh subprocess
    started by :func:`run_child`, after a warm-up, so that imports and lazy init are not counted.
    """
    gc.collect()
    try:  # hand freed heap back to the OS so that the baseline RSS is live memory only
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except Exception:  # noqa: BLE001 - not glibc
        pass
    with open("/proc/self/clear_refs", "w") as fh:  # reset the peak (VmHWM) to the current RSS
        fh.write("5")
    base = _status("VmRSS")
    t = time.perf_counter()
    out = f()
    secs = time.perf_counter() - t
    peak = _status("VmHWM")
    held = _status("VmRSS")
    return {"baseline_rss": base, "peak_rss": peak, "peak_extra": peak - base, "held_extra": held - base,
            "output_bytes": nbytes(out), "seconds": secs}


def run_child(cmd: list[str], timeout: int = 1800) -> dict:
    """Run a measurement subprocess; its last stdout line is JSON. ``{"error": [...]}`` if it failed.

    Every child alike: large blocks go to mmap and back to the OS when freed
    (``MALLOC_MMAP_THRESHOLD_``), so peak RSS tracks live tensors instead of glibc's heap retention
    (which moved kvstate's 8192-token number by hundreds of MB between runs).
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        log("  failed:", p.stderr[-500:])
        return {"error": p.stderr.strip().splitlines()[-1:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def memory_child(method: str, T: int, model_name: str) -> dict:
    import kvstate

    torch.set_num_threads(THREADS)
    lm = kvstate.load_model(model_name)
    meth = Methods(lm, [method])
    warm = meth.setup(method, synthetic_ids(lm, 1, 16, seed=1))
    warm()  # imports, lazy init; 16 tokens
    f = meth.setup(method, synthetic_ids(lm, 1, T))
    del warm
    return {"method": method, "tokens": T, **peak_rss(f)}


def bench_memory(quick: bool) -> dict:
    lengths = [128, 512, 2048] if quick else [128, 512, 2048, 8192]
    model_name = "smollm2-135m"
    out = {"model": model_name, "lengths": lengths, "runs": [], "skipped": []}
    if quick:  # the flatness check only: kvstate vs the plain forward at 8192 tokens
        lengths = lengths + [8192]
        out["lengths"] = lengths
        out["skipped"] = [{"tokens": 8192, "methods": [m for m in MEMORY_METHODS if m not in ("plain", "kvstate_capture")],
                           "why": "not in --quick (each 8192-token forward takes 1-3 min on 2 cores)"}]
    for T in lengths:
        for method in MEMORY_METHODS:
            if quick and T == 8192 and method not in ("plain", "kvstate_capture"):
                continue
            log(f"memory {method} T={T}")
            r = run_child([sys.executable, str(Path(__file__).resolve()), "--_memory-child", method, str(T), model_name])
            if "error" in r:
                out["runs"].append({"method": method, "tokens": T, **r})
                continue
            out["runs"].append(r)
            log(f"  peak extra {r['peak_extra'] / MB:.0f} MB, output {r['output_bytes'] / MB:.1f} MB, {r['seconds']:.1f}s")
            save_partial("memory", out)
    return out


# ---------------------------------------------------------------------------------------------
# 3. monitor overhead
# ---------------------------------------------------------------------------------------------

def monitor_spec(layers, projection: str = "gaussian", max_dim: int = 2048, rep: str = "kv-elu-S/n", compress=()):
    """The monitor spec the monitor benchmarks score: elu states of ``layers``, projected above ``max_dim``
    (``compress=(a, b)`` with ``rep="kv-elu-ASB/n"``: the compressed state, kept as A S B^T)."""
    from kvstate.monitor import MonitorSpec
    from kvstate.representations import RepresentationSettings

    return MonitorSpec(rep, list(layers), {"name": "elu"},
                       RepresentationSettings(layers=tuple(layers), max_dim=max_dim, projection=projection,
                                              compress=tuple(compress)).to_dict())


def monitor_feature_dim(lm, spec) -> int:
    """Width of the features ``spec`` produces on ``lm`` (after the projection), from a zero state.

    The read-out's width capped at ``max_dim``, without building the projection matrix (2.8 GiB for
    all layers of smollm2, which would stay cached and count against every later variant)."""
    from kvstate.representations import COMPRESSED, RepresentationSettings, parse_kv_name
    from kvstate.representations.readout import kv_readout

    cfg = lm.model.config
    L, H = len(spec.layers), cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    settings, kind = RepresentationSettings.from_dict(spec.settings), parse_kv_name(spec.representation)[1]
    S = torch.zeros(1, L, H, *(settings.compress if kind == COMPRESSED else (d, d)))  # the state as the monitor keeps it
    width = kv_readout(S, torch.zeros(1, L, H, d), torch.ones(1, L), kind, settings, d).shape[1]
    return width if kind == COMPRESSED else min(width, settings.max_dim)


def monitor_detector(lm, spec, name: str = "mahalanobis", n: int = 300, seed: int = 0):
    """A detector fitted on random features of the spec's dimension (supervised ones: a planted direction in
    the positive half). Returns (detector, dim)."""
    from kvstate.detect import get_detector, is_supervised

    dim = monitor_feature_dim(lm, spec)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim)).astype(np.float32)
    det = get_detector(name)
    if not is_supervised(det):
        return det.fit(X), dim
    y = np.r_[np.zeros(n - n // 2, int), np.ones(n // 2, int)]
    u = rng.normal(size=dim)
    X[y == 1] += (1.5 * u / np.linalg.norm(u)).astype(np.float32)
    return det.fit(X, y), dim


def monitor_breakdown(mon, prompts, new: int) -> dict:
    """Seconds (wall) one generation spends in the monitor's listener, scorer and features, and in all."""
    acc = {"listen_s": 0.0, "score_s": 0.0, "features_s": 0.0}

    def wrap(fn, slot):
        def g(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[slot] += time.perf_counter() - t
        return g
    orig = (mon._listen, mon._score_tensor, mon.features)  # _score_tensor: what each step calls (score() wraps it)
    mon._listen, mon._score_tensor, mon.features = (wrap(orig[0], "listen_s"), wrap(orig[1], "score_s"),
                                                    wrap(orig[2], "features_s"))
    t = time.perf_counter()
    try:
        mon.generate(prompts, max_new_tokens=new, min_new_tokens=new)
    finally:
        mon._listen, mon._score_tensor, mon.features = orig
    total = time.perf_counter() - t
    return {"total_s": total, **acc, "detector_only_s": acc["score_s"] - acc["features_s"]}


def bench_monitor(quick: bool) -> dict:
    import kvstate
    from kvstate.monitor import Monitor

    lm = kvstate.load_model("smollm2-135m")
    new = 64
    prompt = ["Write a short story about a lighthouse keeper who finds a message in a bottle."]
    tok = lm.tokenizer
    from kvstate.capture import check_layers, encode_all, make_batch

    enc = encode_all(lm, prompt)
    batch = make_batch(enc, ["end"], "all", 0, tok.pad_token_id, "left")

    all_layers = list(range(lm.num_layers))
    variants = {}
    setup = {}

    def plain():
        with torch.inference_mode():
            return lm.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, max_new_tokens=new,
                                     min_new_tokens=new, do_sample=False, pad_token_id=tok.pad_token_id)

    variants["plain_generate"] = plain
    for key, layers, with_det, projection in [("monitor_state_only_all", all_layers, False, "gaussian"),
                                              ("monitor_mahalanobis_all", all_layers, True, "gaussian"),
                                              ("monitor_mahalanobis_all_sparse", all_layers, True, "sparse"),
                                              ("monitor_mahalanobis_upper3", "upper3", True, "gaussian"),
                                              ("monitor_mahalanobis_upper3_sparse", "upper3", True, "sparse")]:
        layers = check_layers(lm, layers)
        spec = monitor_spec(layers, projection)
        t = time.perf_counter()
        det, dim = monitor_detector(lm, spec) if with_det else (None, None)
        mon = Monitor(lm, spec, det)
        mon.generate(prompt, max_new_tokens=2, min_new_tokens=2)  # builds the cached projection
        setup[key] = {"layers": len(layers), "feature_dim": dim, "projection": projection,
                      "setup_s": time.perf_counter() - t}

        def f(mon=mon):
            return mon.generate(prompt, max_new_tokens=new, min_new_tokens=new)
        variants[key] = f
    log("monitor: timing")
    res = interleaved(variants, rounds=3 if quick else 5, warmup=1, ref="plain_generate")
    for k, r in res.items():
        r["per_token_ms"] = r["wall_median_s"] / new * 1e3
        r["per_token_cpu_ms"] = r["cpu_median_s"] / new * 1e3
        r.update(setup.get(k, {}))
    # where the monitor's time goes: wrap its listener and scorer (timing only, no behaviour change)
    prof = {key: monitor_breakdown(variants[key].__defaults__[0], prompt, new)
            for key in ("monitor_mahalanobis_all", "monitor_mahalanobis_all_sparse", "monitor_state_only_all")}
    return {"model": "smollm2-135m", "new_tokens": new, "prompt_tokens": len(enc[0]), "methods": res, "breakdown": prof}


# ---------------------------------------------------------------------------------------------
# 4. representation size and detector cost vs dimensionality
# ---------------------------------------------------------------------------------------------

def bench_size(quick: bool) -> dict:
    from transformers import AutoConfig

    import kvstate
    from kvstate.capture.layers import select_layers
    from kvstate.detect import get_detector
    from kvstate.models import resolve

    sizes = []
    for name in ("smollm2-135m", "qwen2.5-0.5b"):
        cfg = AutoConfig.from_pretrained(str(resolve(name)))
        L, Hkv, D = cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.hidden_size
        d = getattr(cfg, "head_dim", None) or D // cfg.num_attention_heads
        rows = []
        for scheme in ("middle", "upper3", "all"):
            nl = len(select_layers(scheme, L))
            rows.append({"representation": f"kv-state S ({scheme}, {nl} layers)", "floats": nl * Hkv * d * d})
            rows.append({"representation": f"kv-state S+z ({scheme})", "floats": nl * Hkv * (d * d + d)})
        rows.append({"representation": "kv-state, study-stored (JL to max_dim=2048)", "floats": 2048})
        rows.append({"representation": "last-token residual (1 layer)", "floats": D})
        rows.append({"representation": f"last-token residual (all {L + 1} hidden states)", "floats": D * (L + 1)})
        for T in (128, 1024):
            rows.append({"representation": f"full activation record d_model x layers x {T} tokens", "floats": D * L * T})
            rows.append({"representation": f"full K,V record (all layers) x {T} tokens", "floats": 2 * L * Hkv * d * T})
        for r in rows:
            r["bytes"] = 4 * r["floats"]
        sizes.append({"model": name, "layers": L, "kv_heads": Hkv, "head_dim": d, "d_model": D, "rows": rows})
    # check the kv-state formula against a real extraction
    lm = kvstate.load_model("smollm2-135m")
    st = kvstate.extract(lm, ["The quick brown fox jumps over the lazy dog."], layers="upper3", phi="identity", progress=False)
    measured = nbytes(st.S[0]) + nbytes(st.z[0])
    del lm
    # detectors
    dims = [64, 256, 1024, 4096, 16384]
    maha_max = 1024 if quick else 4096
    det_rows = []
    n = 300
    rng = np.random.default_rng(0)
    for dim in dims:
        Xtr = rng.normal(size=(n, dim)).astype(np.float32)
        Xte = rng.normal(size=(n, dim)).astype(np.float32)
        for det_name in ("mahalanobis", "pca", "knn"):
            if det_name == "mahalanobis" and dim > maha_max:
                det_rows.append({"detector": det_name, "dim": dim, "skipped": f"Ledoit-Wolf covariance is dim^2 "
                                 f"({dim * dim * 8 / 2**30:.1f} GiB float64) and its inverse O(dim^3); "
                                 f"reduce first (the study projects to 2048)"})
                continue
            fits, scores = [], []
            for _ in range(3 if dim <= 4096 else 1):
                det = get_detector(det_name)
                t = time.perf_counter()
                det.fit(Xtr)
                fits.append(time.perf_counter() - t)
                t = time.perf_counter()
                det.decision_function(Xte)
                scores.append(time.perf_counter() - t)
            det_rows.append({"detector": det_name, "dim": dim, "fit_s": float(np.median(fits)),
                             "score_s": float(np.median(scores)), "score_ms_per_item": float(np.median(scores)) / n * 1e3})
            log(f"size: {det_name} dim={dim} fit {det_rows[-1]['fit_s']:.3f}s")
    return {"sizes": sizes, "kv_upper3_measured_bytes": measured, "detectors": det_rows, "n_train": n, "n_score": n}


# ---------------------------------------------------------------------------------------------
# 5. where kvstate's capture time goes
# ---------------------------------------------------------------------------------------------

def bench_profile(quick: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile

    import kvstate
    from kvstate.state import StateRecorder

    lm = kvstate.load_model("smollm2-135m")
    meth = Methods(lm, ["plain", "kvstate_capture"])
    out = {}
    # many short interleaved rounds: the overhead ratio with a no-extra-work control (hidden states)
    ids = synthetic_ids(lm, 1, 128)
    fns = {n: meth.setup(n, ids) for n in ("plain", "kvstate_capture", "hidden_states")}
    ab = interleaved(fns, rounds=9 if quick else 25, warmup=2)
    out["_ab_1x128"] = {n: {k: v for k, v in r.items()} for n, r in ab.items()}
    log("profile A/B 1x128: " + ", ".join(f"{n} x{r['ratio_wall']:.3f} (cpu x{r['ratio_cpu']:.3f})" for n, r in ab.items()))
    for B, T in [(1, 128), (1, 1024)] + ([] if quick else [(8, 128)]):
        ids = synthetic_ids(lm, B, T)
        plain, cap = meth.setup("plain", ids), meth.setup("kvstate_capture", ids)
        plain(), cap()
        # 1) time inside the StateRecorder (the listener) vs the whole capture forward
        acc = {"s": 0.0, "calls": 0}
        orig = StateRecorder.__call__

        def timed_call(self, call):
            t = time.perf_counter()
            orig(self, call)
            acc["s"] += time.perf_counter() - t
            acc["calls"] += 1
        StateRecorder.__call__ = timed_call
        try:
            walls = []
            rec_s = []
            for _ in range(3):
                acc["s"] = 0.0
                w, _, _ = timed(cap)
                walls.append(w)
                rec_s.append(acc["s"])
        finally:
            StateRecorder.__call__ = orig
        pw = [timed(plain)[0] for _ in range(3)]
        # the same reduction outside the model, on this config's K,V shapes (intrinsic cost, min of 20)
        from kvstate.state import parallel_state

        cfg = lm.model.config
        d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        k = torch.randn(B, cfg.num_key_value_heads, T, d)
        v = torch.randn_like(k)
        w = torch.ones(B, 1, T)
        iso = []
        for _ in range(20):
            t = time.perf_counter()
            parallel_state(k, v, "identity", w)
            iso.append(time.perf_counter() - t)
        # 2) torch.profiler op table for one capture forward
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            cap()
        ka = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in ka)
        top = sorted(ka, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
        out[f"B{B}_T{T}"] = {
            "capture_wall_median_s": float(np.median(walls)), "plain_wall_median_s": float(np.median(pw)),
            "recorder_median_s": float(np.median(rec_s)), "recorder_share": float(np.median(rec_s) / np.median(walls)),
            "recorder_calls_per_forward": acc["calls"] // 3 if acc["calls"] else 0,
            "parallel_state_isolated_min_s": float(min(iso)), "parallel_state_isolated_median_s": float(np.median(iso)),
            "isolated_share_estimate": float(min(iso) * lm.num_layers / min(pw)),
            "top_ops": [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
                         "calls": e.count} for e in top],
        }
        log(f"profile B={B} T={T}: recorder share {out[f'B{B}_T{T}']['recorder_share']:.3f}")
    return out


# ---------------------------------------------------------------------------------------------
# bookkeeping, plots, summary
# ---------------------------------------------------------------------------------------------

OUT = HERE / "results"
STATE: dict = {}


def save_partial(section: str, data: dict) -> None:
    STATE[section] = data
    (OUT / "bench.json").write_text(json.dumps(STATE, indent=1, default=float))


def machine_info() -> dict:
    import transformers

    info = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "transformers": transformers.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "dtype": "float32"}
    try:
        info["cpu_model"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except Exception:
        pass
    for pkg in ("transformer_lens", "nnsight"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg.replace("_", "-"))
        except Exception as e:  # noqa: BLE001
            info[pkg] = f"not installed ({e})"
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller grid (what `make bench` runs)")
    ap.add_argument("--only", default="", help=f"comma list of sections: {', '.join(SECTIONS)}")
    ap.add_argument("--_memory-child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(THREADS)
    if a._memory_child:
        m, T, model = a._memory_child
        print(json.dumps(memory_child(m, int(T), model)))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    sections = [s.strip() for s in a.only.split(",") if s.strip()] or list(SECTIONS)
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    if a.only and (OUT / "bench.json").exists():
        STATE.update(json.loads((OUT / "bench.json").read_text()))
    run_info = {"command": "python " + " ".join(shlex.quote(x) for x in ["benchmarks/run.py", *sys.argv[1:]]),
                "quick": a.quick, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": os.getloadavg(),
                "machine": machine_info(), "sections": sections}
    STATE.setdefault("runs", {})
    t0 = time.time()
    for s in sections:
        log(f"== {s}")
        ts = time.time()
        try:
            STATE[s] = globals()[f"bench_{s}"](a.quick)
        except Exception as e:  # keep the other sections; the summary shows the error
            import traceback

            traceback.print_exc()
            STATE[s] = {"error": f"{type(e).__name__}: {e}"}
        STATE[s]["_seconds"] = time.time() - ts
        STATE[s]["_loadavg_end"] = os.getloadavg()
        STATE[s]["_run"] = run_info["command"]
        save_partial(s, STATE[s])
    run_info.update({"seconds": time.time() - t0, "loadavg_end": os.getloadavg()})
    STATE["runs"][run_info["started"]] = run_info
    STATE["last_run"] = run_info
    save_partial("last_run", run_info)
    from report import write_report

    write_report(STATE, OUT)
    log(f"done in {time.time() - t0:.0f}s -> {OUT}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
