"""Cost of the issue-16 state options, the compressed state's memory, and the study's whole pass.

Three sections, each measured side by side in one run (smollm2-135m, fp32,
``torch.set_num_threads(2)``, medians of interleaved rounds after a warm-up, see
:func:`run.interleaved`; ``plain_2`` is a second, identical plain forward: its ratio to ``plain``
is the noise of the run):

1. **options** — the recorder (:class:`~kvstate.representations.RepresentationRecorder`, layers
   upper3, default phis with Taylor-2, sweep on) with the options off (``default``) and with each
   option alone: ``decays=(0.9, 0.99)``, ``compress=(16, 16)``, ``deltas=True``; reads prompt_end
   and end (a synthetic prompt of half the tokens, then a reply), against a plain forward.
   Synthetic ids of exact length (:func:`run.synthetic_ids`).
2. **memory** — the compressed state A S B^T (16 x 16 per head, elu features, upper3 layers)
   recorded alone during a capture forward, against the full state S and a plain forward: bytes of
   the state and peak extra RSS at 128...4096 tokens, one fresh subprocess per cell
   (:func:`run.peak_rss`, :func:`run.run_child`).
3. **study** — the study's all-representations pass on the 32 longest prompts of
   ``load_suite("jailbreak", limit=200, seed=0)`` (batches of 8, reads prompt_end and end, as
   ``store.chunks.capture_chunk``) against a plain forward with ``output_hidden_states=True`` on
   the same padded batches, with and without the learned (Hedgehog) phi a default study adds, and
   where the recorder's time goes (wall time inside each of its steps, one extra pass).

    python benchmarks/state_options.py --quick      # a few minutes on 2 idle cores
    python benchmarks/state_options.py              # the full grid
    python benchmarks/state_options.py --only study # one section; the others' numbers are kept

Writes benchmarks/results/state_options.json and state_options.md.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from run import (  # noqa: E402 - after the sys.path line; run.py sets the offline environment
    THREADS,
    interleaved,
    log,
    machine_info,
    peak_rss,
    run_child,
    synthetic_ids,
)

OUT = HERE / "results"
SECTIONS = ("options", "memory", "study")
MODEL = "smollm2-135m"
OPTIONS = {"default": {}, "decays": {"decays": (0.9, 0.99)}, "compress": {"compress": (16, 16)},
           "deltas": {"deltas": True}}
READS = ["prompt_end", "end"]
MB = 1024 * 1024


@functools.lru_cache(maxsize=None)
def model():
    import kvstate

    return kvstate.load_model(MODEL)


def settings(lm, **options):
    from kvstate.capture import check_layers
    from kvstate.representations import RepresentationSettings

    return RepresentationSettings(layers=tuple(check_layers(lm, "upper3")), **options)


def synthetic_items(lm, B: int, T: int):
    """B pre-tokenised items of T tokens: a prompt of T // 2 tokens, then a reply."""
    from kvstate.capture.tokens import Encoded

    half = T // 2
    return [Encoded(row, half, ["user"] * half + ["response"] * (T - half)) for row in synthetic_ids(lm, B, T).tolist()]


def plain_batches(lm, encoded, batch_size: int, hidden: bool):
    """A plain forward over the same sorted, padded batches as the capture engine builds."""
    from kvstate.capture import make_batch

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    side = getattr(lm.tokenizer, "padding_side", "right") or "right"
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    batches = [make_batch([encoded[i] for i in order[s : s + batch_size]], READS, "all", 0, pad, side)
               for s in range(0, len(order), batch_size)]

    def f():
        outs = []
        with torch.inference_mode():
            for b in batches:
                out = lm.model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids,
                               use_cache=False, output_hidden_states=hidden)
                outs.append(out.hidden_states if hidden else out.logits)
        return outs
    return f


def recording(lm, encoded, st, batch_size: int):
    """The study's recorder over pre-tokenised items (what capture_representations runs after encoding)."""
    from kvstate.capture import run
    from kvstate.representations import RepresentationRecorder

    def f():
        rec = RepresentationRecorder(st, lm.num_layers)
        run(lm, encoded, [rec], reads=READS, batch_size=batch_size, progress=False,
            forward_kwargs={"output_hidden_states": True})
        return rec.rows
    return f


def _summarise(res: dict, ref: str) -> dict:
    """Per method: median ms, median per-round ratio to plain and to ``ref``, extra ms over ``ref``."""
    out = {}
    for n, r in res.items():
        wall = np.asarray(r["wall_s"])
        out[n] = {"wall_median_ms": 1e3 * r["wall_median_s"], "cpu_median_ms": 1e3 * r["cpu_median_s"],
                  "ratio_to_plain": r.get("ratio_wall"), "rounds_ms": (1e3 * wall).tolist()}
        if ref in res:
            base = np.asarray(res[ref]["wall_s"])
            out[n][f"ratio_to_{ref}"] = float(np.median(wall / base))
            out[n][f"extra_over_{ref}_ms"] = float(np.median(1e3 * (wall - base)))
    return out


# ---------------------------------------------------------------------------------------------
# 1. extra cost of each option
# ---------------------------------------------------------------------------------------------

def bench_options(quick: bool) -> dict:
    lm = model()
    grid = [(1, 256, 3)] if quick else [(1, 256, 7), (1, 1024, 5), (8, 256, 5)]
    out = {"model": MODEL, "layers": "upper3", "reads": READS, "configs": []}
    for B, T, rounds in grid:
        items = synthetic_items(lm, B, T)
        fns = {"plain": plain_batches(lm, items, B, hidden=False), "plain_2": plain_batches(lm, items, B, hidden=False)}
        for name, opts in OPTIONS.items():
            fns[name] = recording(lm, items, settings(lm, **opts), B)
        log(f"options B={B} T={T} rounds={rounds}")
        res = _summarise(interleaved(fns, rounds, warmup=1), ref="default")
        out["configs"].append({"batch": B, "tokens": T, "rounds": rounds, "methods": res})
        log("  " + ", ".join(f"{n}={r['wall_median_ms']:.0f}ms" for n, r in res.items()))
    return out


# ---------------------------------------------------------------------------------------------
# 2. the compressed state's memory vs length
# ---------------------------------------------------------------------------------------------

MEMORY_METHODS = ("plain", "compressed_state", "full_state")


def state_only(lm, method: str, T: int):
    """One capture forward at 1 x T keeping only the elu state of the upper3 layers (A S B^T or S)."""
    from kvstate.capture import KVCapture, Recorder, check_layers, make_batch
    from kvstate.state import compression_matrices, parallel_state

    items = synthetic_items(lm, 1, T)
    if method == "plain":
        forward = plain_batches(lm, items, 1, hidden=False)
        return lambda: forward() and []  # the same forward, no state kept (the logits are dropped)
    layers = set(check_layers(lm, "upper3"))
    cfg = lm.model.config
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    AB = compression_matrices(cfg.num_key_value_heads, d, d, 16, 16, 0)
    batch = make_batch(items, READS, "all", 0, lm.tokenizer.pad_token_id or 0, "right")

    class Keep(Recorder):
        def __call__(self, call):
            if call.layer in layers:
                project = AB if method == "compressed_state" else None
                self.states.append(parallel_state(call.new_keys("post"), call.new_values(), "elu", self.batch.weights,
                                                  project=project)[0])

    def f():
        rec = Keep()
        rec.states = []
        rec.begin(batch)
        with KVCapture(lm.model, rec), torch.inference_mode():
            lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                     use_cache=False)
        return rec.states
    return f


def memory_child(method: str, T: int) -> dict:
    torch.set_num_threads(THREADS)
    lm = model()
    state_only(lm, method, 16)()  # imports, lazy init
    return {"method": method, "tokens": T, **peak_rss(state_only(lm, method, T))}


def bench_memory(quick: bool) -> dict:
    lengths = [128, 512, 2048] if quick else [128, 256, 512, 1024, 2048, 4096]
    out = {"model": MODEL, "layers": "upper3", "phi": "elu", "compress": [16, 16], "lengths": lengths, "runs": []}
    for T in lengths:
        for method in MEMORY_METHODS:
            log(f"memory {method} T={T}")
            r = run_child([sys.executable, str(Path(__file__).resolve()), "--_memory-child", method, str(T)])
            out["runs"].append({"method": method, "tokens": T, **r})
            if "error" not in r:
                log(f"  state {r['output_bytes'] / 1024:.1f} KiB, peak extra {r['peak_extra'] / MB:.0f} MB")
    return out


# ---------------------------------------------------------------------------------------------
# 3. the study's whole pass
# ---------------------------------------------------------------------------------------------

def study_items(lm, n: int):
    from kvstate.capture import encode_all
    from kvstate.data import load_suite

    suite = load_suite("jailbreak", limit=200, seed=0)
    prompts = [{"messages": it.messages, "response": it.response, "id": it.id} for it in suite.items]
    encoded = encode_all(lm, prompts)
    longest = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))[-n:]
    return [encoded[i] for i in longest]


def breakdown(f) -> dict:
    """Wall seconds inside each step of the recorder during one ``f()`` (timing wrappers only)."""
    import kvstate.representations.recorder as R
    from kvstate.representations.projection import Reducer

    acc: collections.Counter = collections.Counter()
    targets = [(R.RepresentationRecorder, m) for m in ("__call__", "_readouts_16", "_cache_variants", "_activations",
                                                       "end", "_flush")]
    targets += [(R, m) for m in ("parallel_state", "_top_singular_values", "_linear_readout", "_hidden_logdet",
                                 "_token_stats", "_hash_bow")]
    targets += [(Reducer, "__call__")]
    saved = []
    for obj, name in targets:
        fn = getattr(obj, name)
        label = f"{getattr(obj, '__name__', '')}.{name}".lstrip(".")

        def g(*a, _fn=fn, _label=label, **k):
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                acc[_label] += time.perf_counter() - t
        saved.append((obj, name, fn))
        setattr(obj, name, g)
    try:
        t = time.perf_counter()
        f()
        total = time.perf_counter() - t
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)
    return {"total_s": total, "inside_s": dict(acc.most_common())}


def learned_spec(lm, layers) -> str:
    """The study's learned phi (``StudyConfig.learned_phi``): a Hedgehog map trained on the
    calibration prompts at ``layers``, saved to a temporary file; its ``learned:<path>`` spec."""
    import tempfile

    from kvstate.state.learned import CALIBRATION_PROMPTS, train_learned_phi

    path = Path(tempfile.mkdtemp(prefix="kvstate-bench-")) / "phi.safetensors"
    train_learned_phi(lm, CALIBRATION_PROMPTS, list(layers)).save(path)
    return f"learned:{path}"


def bench_study(quick: bool) -> dict:
    lm = model()
    n, rounds = (8, 1) if quick else (32, 3)
    items = study_items(lm, n)
    st = settings(lm)
    with_learned = settings(lm, phis=(*st.phis, learned_spec(lm, st.layers)))  # what a default study records now
    fns = {"plain_hidden": plain_batches(lm, items, 8, hidden=True),
           "plain_hidden_2": plain_batches(lm, items, 8, hidden=True),
           "all_representations": recording(lm, items, st, 8),
           "all_representations_learned_phi": recording(lm, items, with_learned, 8)}
    log(f"study n={n} rounds={rounds} tokens {len(items[0])}..{len(items[-1])}")
    res = interleaved(fns, rounds, warmup=1, ref="plain_hidden")
    out = {"model": MODEL, "suite": "jailbreak", "items": n, "tokens": [len(e) for e in items], "batch_size": 8,
           "settings": st.to_dict(), "rounds": rounds, "methods": _summarise(res, ref="plain_hidden")}
    out["goal_ratio"] = 1.3
    out["ratio"] = out["methods"]["all_representations"]["ratio_to_plain_hidden"]
    out["noise_ratio"] = out["methods"]["plain_hidden_2"]["ratio_to_plain_hidden"]
    out["ratio_learned_phi"] = out["methods"]["all_representations_learned_phi"]["ratio_to_plain_hidden"]
    log(f"  ratio {out['ratio']:.2f}, with the learned phi {out['ratio_learned_phi']:.2f} "
        f"(noise control {out['noise_ratio']:.2f})")
    out["breakdown"] = breakdown(fns["all_representations"])
    return out


# ---------------------------------------------------------------------------------------------
# summary
# ---------------------------------------------------------------------------------------------

def render(state: dict) -> str:
    run = state.get("last_run", {})
    lines = ["# State options, compressed-state memory and the study's pass", "",
             f"`{run.get('command', '')}` — started {run.get('started', '')}, load average "
             f"{run.get('loadavg_start')} → {run.get('loadavg_end')} on {run.get('machine', {}).get('cpus')} CPUs.", ""]
    if run.get("note"):
        lines += [f"**{run['note']}**", ""]
    opt = state.get("options", {})
    for cfg in opt.get("configs", []):
        lines += [f"## Options, {cfg['batch']} × {cfg['tokens']} tokens ({cfg['rounds']} rounds)", "",
                  "| method | median ms | × plain | × default | extra over default (ms) |", "|---|---|---|---|---|"]
        for n, r in cfg["methods"].items():
            lines.append(f"| {n} | {r['wall_median_ms']:.0f} | {r['ratio_to_plain']:.3f} | "
                         f"{r['ratio_to_default']:.3f} | {r['extra_over_default_ms']:.0f} |")
        lines.append("")
    mem = state.get("memory", {})
    if mem.get("runs"):
        lines += ["## Compressed state memory (elu, upper3, A S Bᵀ 16 × 16 per head)", "",
                  "| tokens | method | state bytes | peak extra RSS (MB) | minus plain's (MB) |", "|---|---|---|---|---|"]
        plain = {r["tokens"]: r["peak_extra"] for r in mem["runs"] if r["method"] == "plain" and "error" not in r}
        for r in mem["runs"]:
            if "error" in r:
                lines.append(f"| {r['tokens']} | {r['method']} | error: {r['error']} | | |")
                continue
            over = f"{(r['peak_extra'] - plain[r['tokens']]) / MB:+.0f}" if r["tokens"] in plain else ""
            kept = "—" if r["method"] == "plain" else f"{r['output_bytes']:,}"
            lines.append(f"| {r['tokens']} | {r['method']} | {kept} | {r['peak_extra'] / MB:.0f} | {over} |")
        lines.append("")
    stu = state.get("study", {})
    if stu.get("methods"):
        lines += [f"## Study pass: {stu['items']} longest jailbreak prompts ({min(stu['tokens'])}–{max(stu['tokens'])} "
                  f"tokens), batches of {stu['batch_size']}, {stu['rounds']} rounds", "",
                  "| method | median s | × plain_hidden |", "|---|---|---|"]
        for n, r in stu["methods"].items():
            lines.append(f"| {n} | {r['wall_median_ms'] / 1e3:.1f} | {r['ratio_to_plain_hidden']:.3f} |")
        learned = (f"; {stu['ratio_learned_phi']:.2f}× with the learned φ the default study now adds"
                   if stu.get("ratio_learned_phi") else "")
        lines += ["", f"Goal ≤ {stu['goal_ratio']}×: measured {stu['ratio']:.2f}×{learned} "
                  f"(noise control {stu['noise_ratio']:.2f}×).",
                  "", "Wall time inside the recorder's steps (one extra pass; nested steps are counted in their parents too):",
                  "", "| step | s | share of the pass |", "|---|---|---|"]
        bd = stu["breakdown"]
        for k, v in bd["inside_s"].items():
            lines.append(f"| {k} | {v:.2f} | {v / bd['total_s']:.3f} |")
        lines += ["", f"(pass total {bd['total_s']:.1f} s)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    from kvstate._io import atomic_write, read_json, write_json

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a reduced grid that finishes in a few minutes")
    ap.add_argument("--only", default="", help=f"comma list of sections: {', '.join(SECTIONS)}")
    ap.add_argument("--note", default="", help="a line printed in bold above the tables (e.g. 'under load')")
    ap.add_argument("--render", action="store_true", help="only re-render state_options.md from the JSON")
    ap.add_argument("--_memory-child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    path = OUT / "state_options.json"
    if a.render:
        atomic_write(OUT / "state_options.md", render(read_json(path, "state options results")))
        return
    torch.set_num_threads(THREADS)
    if a._memory_child:
        import json

        print(json.dumps(memory_child(a._memory_child[0], int(a._memory_child[1]))))
        return
    sections = [s.strip() for s in a.only.split(",") if s.strip()] or list(SECTIONS)
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    state = read_json(path, "state options results") if a.only and path.exists() else {}
    run_info = {"command": "python " + " ".join(shlex.quote(x) for x in ["benchmarks/state_options.py", *sys.argv[1:]]),
                "quick": a.quick, "note": a.note, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "loadavg_start": os.getloadavg(), "machine": machine_info(), "sections": sections}
    t0 = time.time()
    for s in sections:
        log(f"== {s}")
        ts = time.time()
        state[s] = globals()[f"bench_{s}"](a.quick)
        state[s].update({"_seconds": time.time() - ts, "_loadavg_end": os.getloadavg(), "_run": run_info["command"]})
        write_json(path, state)
    run_info.update({"seconds": time.time() - t0, "loadavg_end": os.getloadavg()})
    state["last_run"] = run_info
    write_json(path, state)
    atomic_write(OUT / "state_options.md", render(state))
    log(f"done in {time.time() - t0:.0f}s -> {path}")


if __name__ == "__main__":
    main()
