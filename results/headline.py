"""Cross-model headline tables from results/<model>/results.json (printed as Markdown).

    .venv/bin/python results/headline.py > results/headline.md

Table 1 is the study's own summary per (model, task): best unsupervised KV-state row vs best
unsupervised activation row (maxima over representations x detectors, so optimistic), the probes
as an upper bound, and the controls. Table 2 fixes the detector (Mahalanobis, PCA-64 first when the
vector is wide) and varies only the token range / RoPE / normalisation of the identity state S/n, the
ablations the pilot's AUROC 0.6-0.7 asked for, all read at the end of the conversation (no selection
over read points: for hallucination pairs the prompt alone is identical, so prompt_end is 0.50 by design).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from kvstate.report import best_row, compare

HERE = Path(__file__).resolve().parent
MODELS = ["smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"]
ABLATIONS = [("S/n", "post-RoPE, all tokens"), ("S/n-content", "sink + template dropped"), ("S/n-pre", "pre-RoPE"),
             ("S/n-pre-content", "pre-RoPE, content"), ("S/n-hn", "per-head normalised")]
MAHALANOBIS = ("mahalanobis", "pca64+mahalanobis")
PHIS = ["identity", "elu", "random64", "taylor"]


def _ci(row: dict | None, tpr: bool = False) -> str:
    if not row:
        return "–"
    out = f"{row['auroc']:.2f} [{row['auroc_lo']:.2f}, {row['auroc_hi']:.2f}]"
    return out + (f", TPR@1%FPR {row['tpr_at_1fpr']:.2f}" if tpr else "")


def _held_out(task: dict) -> str:
    """Selection-corrected best per family (picked on half the groups, scored on the other half)."""
    sel = task.get("selection_corrected")
    if not sel:
        return "not computed"
    f = sel["families"]
    if not {"kv-state", "activation"} <= set(f):
        return "–"
    cell = lambda x: f"{x['auroc']:.2f} [{x['lo']:.2f}, {x['hi']:.2f}]"
    return f"{cell(f['kv-state'])} / {cell(f['activation'])} ({sel['wins']['kv-state']['activation']:.0%})"


def _rate(x) -> str:
    return "–" if x is None else f"{x:.2f}"


def _rep(name: str, table: list[dict]) -> dict | None:
    """One representation read at the end, under the fixed Mahalanobis detector."""
    rows = [r for r in table if r["representation"] == f"{name}@end" and r["detector"] in MAHALANOBIS
            and not r["supervised"] and r.get("auroc") is not None]
    return rows[0] if rows else None


def main(models: list[str]) -> None:
    found = [(m, json.loads((HERE / m / "results.json").read_text())) for m in models if (HERE / m / "results.json").exists()]
    print("| model | task | n (0/1) | length only | best unsupervised KV state | best unsupervised activation | "
          "held-out choice KV / activation (KV ahead) | KV probe | activation probe | BoW probe | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m, res in found:
        for key, task in res["tasks"].items():
            c, table = compare(task), task["table"]
            bow = [r for r in table if r["representation"].startswith("ctl-bow") and r["supervised"]]
            counts = task.get("label_counts") or {}
            n = f"{counts.get('0', counts.get(0, '?'))}/{counts.get('1', counts.get(1, '?'))}"
            kv = f"{_ci(c.kv, True)} `{c.kv['representation']}` {c.kv['detector']}" if c.kv else "–"
            act = f"{_ci(c.act, True)} `{c.act['representation']}` {c.act['detector']}" if c.act else "–"
            if c.outcome in ("wins", "loses", "ties"):
                side = {"wins": "KV state", "loses": "activation", "ties": "tie"}[c.outcome]
                verdict = side + (" (CIs overlap)" if c.overlap else "")
            else:
                verdict = c.outcome
            print(f"| {m} | {task['suite']} | {n} | {c.length_auroc:.2f} | {kv} | {act} | {_held_out(task)} | "
                  f"{_ci(best_row(table, 'kv-state', True))} | {_ci(best_row(table, 'activation', True))} | "
                  f"{_ci(max(bow, key=lambda r: r['auroc']) if bow else None)} | {verdict} |")
    print()
    print("Identity-state ablations, Mahalanobis (PCA-64 first above 512 dims), AUROC [95% CI], read at the end:")
    print()
    print("| model | task | " + " | ".join(f"`{a}` ({d})" for a, d in ABLATIONS) + " | residual `act-resid-last` |")
    print("|---|---|" + "---|" * (len(ABLATIONS) + 1))
    for m, res in found:
        for task in res["tasks"].values():
            cells = [_ci(_rep(f"kv-identity-{a}", task["table"])) for a, _ in ABLATIONS]
            print(f"| {m} | {task['suite']} | " + " | ".join(cells) + f" | {_ci(_rep('act-resid-last', task['table']))} |")
    print()
    print("Live monitor on held-out items (rates per reply: flagged if any step crosses the threshold). "
          "Per-step threshold: 1% FPR of single normal states; per-sequence threshold: 1% FPR of the peaks of "
          "normal replies generated from held-out prompts (`Monitor.calibrate`); peak AUROC: each reply's highest score.")
    print()
    print("| model | suite | test items (anomalous) | calibration replies | peak AUROC | per-step threshold: anomalous / normal flagged | "
          "per-sequence threshold: anomalous / normal flagged | median tokens to flag |")
    print("|---|---|---|---|---|---|---|---|")
    for m, res in found:
        for key, mon in (res.get("monitor") or {}).items():
            if "n_test" not in mon:
                print(f"| {m} | {key.split('/')[-1]} | {mon.get('error', mon)} | | | | | |")
                continue
            seq = "not run (older study)" if "seq_flagged_normal" not in mon else \
                f"{_rate(mon['seq_flagged_anomalous'])} / {_rate(mon['seq_flagged_normal'])}"
            first = mon.get("seq_median_tokens_to_flag", mon.get("median_tokens_to_flag"))
            print(f"| {m} | {key.split('/')[-1]} | {mon['n_test']} ({mon['n_anomalous']}) | {mon.get('n_calibration', '–')} | "
                  f"{_rate(mon.get('peak_auroc'))} | {_rate(mon['flagged_anomalous'])} / {_rate(mon['flagged_normal'])} | "
                  f"{seq} | {first if first is not None else '–'} |")
    print()
    print("phi fidelity: relative error of the linear-attention output against softmax attention, median over the study layers:")
    print()
    print("| model | layers | " + " | ".join(PHIS) + " |")
    print("|---|---|" + "---|" * len(PHIS))
    for m, res in found:
        for name, fid in (res.get("fidelity") or {}).items():
            series = fid.get("series", {})
            cells = [f"{statistics.median(series[p]):.2f}" if p in series else "–" for p in PHIS]
            print(f"| {name} | {fid.get('layers')} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or MODELS)
