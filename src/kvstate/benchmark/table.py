"""A benchmark's results.json as a Markdown table per model (figure first) and a PNG figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .._io import atomic_write

__all__ = ["markdown", "write_tables"]

FAMILY_LABEL = {"kv-state": "KV state", "activation": "activations", "control": "control"}


def _ci(ci) -> str:
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def _cell(f: dict[str, Any] | None) -> str:
    if not f:
        return "–"
    return (f"{f['auroc']:.3f}{_ci(f['auroc_ci'])} · TPR {f['tpr']:.2f} · FPR {f['fpr_realised']:.2f} · F1 {f['f1']:.2f}")


def _paired(p: dict[str, Any] | None) -> str:
    if not p:
        return "–"
    below = " (both below chance: a flipped direction, not a detector)" if max(p["auroc_a"], p["auroc_b"]) < 0.5 else ""
    return (f"{p['delta']:+.3f} [{p['ci'][0]:+.3f}, {p['ci'][1]:+.3f}], p={p['p']:.2g}, "
            f"detectable ≥{p['min_detectable']:.3f}: **{p['verdict']}**{below}")


def model_table(res: dict[str, Any], model: str) -> list[str]:
    """Rows: test benchmarks; columns: each family's choice, the paired Δ (KV − activations), the anchor."""
    m = res["models"][model]
    chosen = m["chosen"]
    sel = {(r["representation"], r["detector"]): r for r in m["selection"]}
    lines = [f"### {model}", "",
             f"Layers {m['layers']}; items {m['n']}; calibration: {m['calibration']['n']} benign items from "
             f"{', '.join(m['calibration']['sources'])}.", "",
             "| family | choice (LOSO) | LOSO AUROC (worst fold) | same-source CV AUROC |", "|---|---|---|---|"]
    for fam, (rep, det) in chosen.items():
        r = sel[(rep, det)]
        lines.append(f"| {FAMILY_LABEL.get(fam, fam)} | `{rep}` {det} | {r['loso_auroc']:.3f} ({r['loso_worst']:.3f}) | "
                     f"{r['same_source_auroc']:.3f} |")
    lines += ["", "| test | n (pos) | KV state | activations | control | Δ KV − act. (paired) | length AUROC | anchor |",
              "|---|---|---|---|---|---|---|---|"]
    for name, t in m["tests"].items():
        if "families" not in t:
            lines.append(f"| {name} | {t.get('note', '')} |  |  |  |  |  |  |")
            continue
        fams = t["families"]
        lines.append(f"| {name} | {t['n']} ({t['n_positive']}) | {_cell(fams.get('kv-state'))} | {_cell(fams.get('activation'))} | "
                     f"{_cell(fams.get('control'))} | {_paired(t.get('paired'))} | {t['length_auroc']:.2f} | {t.get('anchor') or '–'} |")
    return lines + [""]


def markdown(res: dict[str, Any], figure: str | None = None) -> str:
    """The whole report: the figure, how to read it, the duplicate report and one table per model."""
    task = res["task"]
    dup = res["duplicates"]
    lines = [f"# Benchmark: {task['name']}", "", task["description"], ""]
    if figure:
        lines += [f"![AUROC per test benchmark]({figure})", ""]
    lines += ["Choices (representation, layers, detector) are made by leave-one-source-out CV on the training sources "
              f"({', '.join(s['suite'] for s in task['sources'] if 'train' in s['roles'])}); test labels are read only to "
              "score the choices. Thresholds: the calibration set's benign items at "
              f"{res['config']['fpr']:.0%} FPR. Each cell: AUROC [95% grouped bootstrap CI] · TPR and realised FPR at that "
              "threshold · unsafe-class F1. Δ: paired (same items) KV − activation AUROC with its paired bootstrap CI, "
              "DeLong's p and the smallest difference the test could detect (80% power); verdict *equivalent* when the CI "
              "is inside ±0.02.", "",
              f"Near-duplicates (character 5-gram Jaccard ≥ {dup['threshold_jaccard']}): "
              + (", ".join(f"{p['source_a']} ~ {p['source_b']}: {p['pairs']}" for p in dup["pairs_by_source"]) or "none")
              + f". Dropped as duplicates of training items: {dup['dropped'] or 'none'}.", ""]
    for model in res.get("models", {}):
        lines += model_table(res, model)
    return "\n".join(lines)


def figure(res: dict[str, Any], path: Path) -> bool:
    """AUROC with CIs per test benchmark, KV state beside activations, one panel per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(res.get("models", {}))
    if not models:
        return False
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.4), squeeze=False, sharey=True)
    for ax, model in zip(axes[0], models):
        tests = {k: v for k, v in res["models"][model]["tests"].items() if "families" in v}
        for j, (fam, color) in enumerate((("kv-state", "tab:blue"), ("activation", "tab:orange"), ("control", "tab:gray"))):
            xs, ys, err = [], [], [[], []]
            for i, t in enumerate(tests.values()):
                f = t["families"].get(fam)
                if f:
                    xs.append(i + (j - 1) * 0.25)
                    ys.append(f["auroc"])
                    lo, hi = f["auroc_ci"] or (f["auroc"], f["auroc"])
                    err[0].append(f["auroc"] - lo)
                    err[1].append(hi - f["auroc"])
            ax.errorbar(xs, ys, yerr=err, fmt="o", color=color, label=FAMILY_LABEL[fam], capsize=2)
        ax.axhline(0.5, color="k", lw=0.5, ls=":")
        ax.set_xticks(range(len(tests)), list(tests), rotation=30, ha="right", fontsize=8)
        ax.set_title(model, fontsize=9)
        ax.set_ylim(0.3, 1.0)
    axes[0][0].set_ylabel("test AUROC (95% CI)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png"))
    plt.close(fig)
    return True


def write_tables(res: dict[str, Any], out: str | Path) -> Path:
    """``out/benchmark.md`` (and ``out/benchmark.png``) from the results."""
    out = Path(out)
    png = out / "benchmark.png"
    has_fig = figure(res, png)
    return atomic_write(out / "benchmark.md", markdown(res, png.name if has_fig else None) + "\n")
