"""Live monitor overhead per generated token (issue #17): plain ``model.generate`` vs ``kvstate.Monitor``
scoring every step, side by side in one run.

Variants, all greedy with the same prompts and ``min_new_tokens = max_new_tokens`` (equal lengths):

- ``plain`` and ``plain_again``: ``model.generate`` twice; the ratio of the second to the first is the
  noise floor of the machine (the noise control);
- ``folded_upper3``: the monitor on the upper 3 layers, ``kv-elu-S/n``, a logistic probe fitted on
  random features with a planted direction at the spec's width (2048, after the seeded projection),
  scored folded (one dot product with the unprojected read-out, :mod:`kvstate.monitor.fold`);
- ``dense_upper3``: the same monitor and probe with ``fold=False`` (projection + detector per step);
- ``folded_all``: all layers, folded;
- ``compressed_upper3``: the compressed state ``kv-elu-ASB/n`` (16 x 16 per head, kept as A S B^T:
  O((a + b) d) per token, never projected), the same kind of probe, folded;
- ``folded_upper3_full``: ``folded_upper3`` as issue #17 measured it (issue 29's control): the
  prompts tokenised inside the timed call and the extra forward of the last token
  (``final_state=True``) so that the final state covers the whole reply.

Every other monitor variant runs as a server does (issue 29): the batch encoded once outside the
timed loop (``Monitor.encode``; ``plain`` gets the same pre-tokenised batch) and
``final_state=False`` (no extra forward: the per-step scores are the same, only ``Monitor.state()``
then lacks the last token).

fp32, ``torch.set_num_threads(2)``, batch 1 and 8, median of interleaved rounds after a warm-up (each
round runs every variant once in a rotated order; ratios are medians of per-round ratios to
``plain``). The folded and dense monitors' scores are compared too (they must agree to ~1e-5).

    python benchmarks/monitor_overhead.py                          # smollm2-135m, 7 rounds, 64 tokens
    python benchmarks/monitor_overhead.py --rounds 2 --tokens 16   # a quick check that it runs
    python benchmarks/monitor_overhead.py --models smollm2-135m qwen2.5-1.5b   # qwen: ~1.1 GB, 8.6 GiB peak

Writes benchmarks/results/monitor_overhead.json and monitor_overhead.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from run import THREADS, interleaved, log, machine_info, monitor_breakdown, monitor_detector, monitor_spec  # noqa: E402

PROMPTS = ["Write a short story about a lighthouse keeper who finds a message in a bottle.",
           "Explain how a refrigerator keeps food cold.",
           "List five things to pack for a weekend of hiking.",
           "What are the main causes of inflation?",
           "Describe the rules of chess in a few sentences.",
           "Give me a recipe for a simple tomato soup.",
           "Why is the sky blue?",
           "Summarise the plot of a detective novel you invent."]


VARIANTS = ["folded_upper3", "folded_upper3_full", "dense_upper3", "folded_all", "compressed_upper3"]


def bench_model(model: str, batches: list[int], tokens: int, rounds: int, variants: list[str] = VARIANTS,
                done=None) -> dict:
    import kvstate
    from kvstate.capture import check_layers, encode_all, make_batch
    from kvstate.monitor import Monitor

    lm = kvstate.load_model(model)
    tok = lm.tokenizer
    monitors = {}
    for key, layers, fold, compress in [("folded_upper3", "upper3", True, ()), ("folded_upper3_full", "upper3", True, ()),
                                        ("dense_upper3", "upper3", False, ()), ("folded_all", "all", True, ()),
                                        ("compressed_upper3", "upper3", True, (16, 16))]:
        if key not in variants:
            continue
        layers = check_layers(lm, layers)
        spec = monitor_spec(layers, rep="kv-elu-ASB/n", compress=compress) if compress else monitor_spec(layers)
        det, dim = monitor_detector(lm, spec, "logistic")
        monitors[key] = (Monitor(lm, spec, det, fold=fold), {"layers": len(layers), "feature_dim": dim, "fold": fold})
    out = {"model": model, "new_tokens": tokens, "batches": {}}
    for B in batches:
        prompts = (PROMPTS * B)[:B]
        batch = make_batch(encode_all(lm, prompts), ["end"], "all", 0, tok.pad_token_id, "left")

        def plain():
            with torch.inference_mode():
                return lm.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                         max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                         pad_token_id=tok.pad_token_id)

        fns = {"plain": plain, "plain_again": plain}
        setup, scores = {}, {}
        for key, (mon, info) in monitors.items():
            t = time.perf_counter()
            scores[key] = mon.generate(prompts, max_new_tokens=tokens, min_new_tokens=tokens).scores  # builds the fold once
            setup[key] = {**info, "first_call_s": time.perf_counter() - t, "scoring": mon.scoring}
            if key.endswith("_full"):  # issue #17's path: tokenise inside, feed the last token once more
                fns[key] = lambda mon=mon: mon.generate(prompts, max_new_tokens=tokens, min_new_tokens=tokens)
            else:
                mb = mon.encode(prompts)
                fns[key] = lambda mon=mon, mb=mb: mon.generate(mb, max_new_tokens=tokens, min_new_tokens=tokens,
                                                               final_state=False)
        if "folded_upper3" in scores and "folded_upper3_full" in scores:  # the lean path changes no score
            assert np.array_equal(scores["folded_upper3"], scores["folded_upper3_full"], equal_nan=True)
        d = scores.get("dense_upper3")
        agree = float(np.max(np.abs(scores["folded_upper3"] - d)) / max(np.max(np.abs(d)), 1e-30)) \
            if d is not None and "folded_upper3" in scores else float("nan")
        log(f"{model} batch {B}: timing {len(fns)} variants x {rounds} rounds")
        res = interleaved(fns, rounds=rounds, warmup=1, ref="plain")
        for k, r in res.items():
            r["per_token_ms"] = r["wall_median_s"] / tokens * 1e3
            r["per_token_cpu_ms"] = r["cpu_median_s"] / tokens * 1e3
            r.update(setup.get(k, {}))
        # where each monitor's time goes, per token (one more generation each, wall seconds)
        parts = {k: {p: v / tokens * 1e3 for p, v in monitor_breakdown(mon, prompts, tokens).items()}
                 for k, (mon, _) in monitors.items() if k in ("folded_upper3", "compressed_upper3")}
        out["batches"][str(B)] = {"prompt_tokens": int(batch.input_ids.shape[1]), "methods": res,
                                  "folded_vs_dense_max_rel_diff": agree, "breakdown_ms_per_token": parts}
        if done is not None:  # write what is measured so far (a long run on a busy machine may be cut short)
            done(out)
    return out


def render(res: dict) -> str:
    lines = ["# Live monitor overhead per token (issue #17)", "",
             f"Command: `{res['command']}`  ", f"Started {res['started']}, load average at start {res['loadavg_start']}, "
             f"at end {res['loadavg_end']}; {res['machine'].get('cpu_model', '?')}, {res['machine']['cpus']} CPUs, "
             f"torch threads {res['machine']['threads']}, fp32, {res['rounds']} interleaved rounds.", "",
             "Monitors run with the batch encoded outside the timed call and no extra forward of the last token "
             "(`final_state=False`), except `folded_upper3_full`, which tokenises inside and feeds the last token once "
             "more (the path issue #17 measured).", ""]
    if max(res["loadavg_start"][0], res["loadavg_end"][0]) > THREADS:
        lines += [f"**Taken under load** (load average above {THREADS}): the noise control shows how far to trust the "
                  "ratios; rerun on a quiet machine for final numbers.", ""]
    for m in res["models"]:
        for B, b in m["batches"].items():
            lines += [f"## {m['model']}, batch {B}, {m['new_tokens']} new tokens (prompt {b['prompt_tokens']} tokens)", "",
                      "| variant | scoring | layers | per token (ms, median) | ratio to plain (median of rounds) |",
                      "|---|---|---|---|---|"]
            for k, r in b["methods"].items():
                lines.append(f"| {k} | {r.get('scoring', '-')} | {r.get('layers', '-')} | {r['per_token_ms']:.2f} | "
                             f"{r['ratio_wall']:.3f} |")
            lines += ["", f"Folded vs dense scores (upper3): max relative difference {b['folded_vs_dense_max_rel_diff']:.1e}. "
                      "`plain_again / plain` is the noise floor.", "",
                      "Per token, inside the monitor (ms, one generation each; `score` includes `features` on the dense path):", "",
                      "| variant | state update (`_listen`, all layer calls) | `score` | whole generation |", "|---|---|---|---|"]
            for k, r in b["breakdown_ms_per_token"].items():
                lines.append(f"| {k} | {r['listen_s']:.3f} | {r['score_s']:.3f} | {r['total_s']:.2f} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["smollm2-135m"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--tokens", type=int, default=64, help="new tokens per generation (default 64)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved timed rounds (default 7)")
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS,
                   help="monitor variants besides plain and plain_again (default: all)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "monitor_overhead.json")
    a = p.parse_args(argv)
    torch.set_num_threads(THREADS)
    res = {"command": "python " + " ".join(shlex.quote(x) for x in ["benchmarks/monitor_overhead.py", *sys.argv[1:]]),
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_start": os.getloadavg(), "machine": machine_info(),
           "rounds": a.rounds, "models": []}
    a.out.parent.mkdir(parents=True, exist_ok=True)

    def write(partial=None):
        res["loadavg_end"] = os.getloadavg()
        done = res["models"] + ([partial] if partial is not None else [])
        full = {**res, "models": done}
        a.out.write_text(json.dumps(full, indent=1, default=float) + "\n")
        a.out.with_suffix(".md").write_text(render(full))

    for model in a.models:
        res["models"].append(bench_model(model, a.batches, a.tokens, a.rounds, a.variants, done=write))
    write()
    print(render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
