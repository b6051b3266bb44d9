"""Figures for the report: matplotlib ``Figure`` objects (no pyplot: no global state, no GUI
backend), returned as base64 PNG data URIs."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .verdict import _num

MAX_CURVES = 4

__all__ = ["MAX_CURVES", "curve_label", "forest_figure", "heatmap_figure", "hist_figure", "label", "lines_figure", "png",
           "roc_figure", "transfer_figure"]


def label(text: Any, limit: int = 60) -> str:
    """Figure text from data: truncated, and '$' escaped so mathtext never parses it."""
    s = str(text)
    s = s if len(s) <= limit else s[:limit - 1] + "…"
    return s.replace("$", r"\$")


def curve_label(key: str) -> str:
    """'<representation>|<detector>' -> 'representation, detector' (representations may contain '|')."""
    return ", ".join(key.rsplit("|", 1))


def png(fig: Figure) -> str:
    """Figure -> base64 PNG (metadata stripped so equal figures give equal bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def roc_figure(curves: Mapping[str, Mapping[str, Any]]) -> str:
    fig = Figure(figsize=(5, 4.2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
    for name, c in list(curves.items())[:MAX_CURVES]:
        if c.get("fpr") and c.get("tpr"):
            ax.plot(c["fpr"], c["tpr"], lw=1.6, label=label(curve_label(name)))
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    ax.legend(fontsize=7, loc="lower right")
    return png(fig)


def hist_figure(curves: Mapping[str, Mapping[str, Any]]) -> str:
    items = [(k, c) for k, c in curves.items() if c.get("scores_normal") or c.get("scores_anomalous")][:MAX_CURVES]
    cols = min(2, len(items))
    rows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(5 * cols, 2.8 * rows))
    for i, (name, c) in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1)
        normal = np.asarray(c.get("scores_normal") or [], float)
        anom = np.asarray(c.get("scores_anomalous") or [], float)
        both = np.concatenate([normal, anom])
        both = both[np.isfinite(both)]
        bins = np.histogram_bin_edges(both, bins=30) if both.size else 10
        ax.hist(normal, bins=bins, alpha=0.6, density=True, label="normal (0)", color="#4477aa")
        ax.hist(anom, bins=bins, alpha=0.6, density=True, label="anomalous (1)", color="#cc6677")
        ax.set_title(label(curve_label(name)), fontsize=9)
        ax.set_xlabel("score (higher = more anomalous)", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return png(fig)


def lines_figure(x: Sequence[Any], series: Mapping[str, Sequence[Any]], ylabel: str, title: str,
                  chance: float | None = None) -> str:
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    for name, ys in series.items():
        k = min(len(x), len(ys))
        ax.plot(list(x)[:k], [_num(y) if _num(y) is not None else np.nan for y in list(ys)[:k]], marker="o", ms=3,
                label=label(name))
    if chance is not None:
        ax.axhline(chance, ls="--", c="0.6", lw=1)
    ax.set(xlabel="layer", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return png(fig)


def heatmap_figure(suites: Sequence[str], auroc: Sequence[Sequence[Any]], title: str) -> str:
    m = np.array([[_num(v) if _num(v) is not None else np.nan for v in row] for row in auroc], float)
    m = np.atleast_2d(m)
    k = max(m.shape)
    fig = Figure(figsize=(1.2 * k + 2.5, 1.0 * k + 1.8))
    ax = fig.add_subplot()
    im = ax.imshow(m, vmin=0.3, vmax=1.0, cmap="viridis")
    labels = [label(s, 24) for s in suites] + ["?"] * k
    ax.set_xticks(range(m.shape[1]), labels[:m.shape[1]], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(m.shape[0]), labels[:m.shape[0]], fontsize=8)
    ax.set(xlabel="scored on", ylabel="fit on", title=label(title, 70))
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] < 0.7 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="AUROC")
    return png(fig)


def forest_figure(rows: Sequence[tuple[str, str, float | None, float | None, float | None]], title: str) -> str:
    """Dot-and-whisker plot: one line per (group, series, AUROC, lo, hi), grouped top to bottom, chance at 0.5."""
    colours = {"KV state": "#2f6db5", "activation": "#d9822b", "control": "#6b7489"}
    fig = Figure(figsize=(7.2, 0.28 * len(rows) + 1.0))
    ax = fig.add_subplot()
    labels = []
    for i, (group, series, auc, lo, hi) in enumerate(rows):
        yy = len(rows) - 1 - i
        labels.append(f"{group} · {series}")
        if _num(auc) is None:
            continue
        c = next((v for k, v in colours.items() if series.startswith(k)), "#444")
        if _num(lo) is not None and _num(hi) is not None:
            ax.plot([lo, hi], [yy, yy], c=c, lw=1.6)
        ax.plot([auc], [yy], "o", c=c, ms=4.5)
    ax.axvline(0.5, ls="--", c="0.6", lw=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([label(t, 70) for t in reversed(labels)], fontsize=7)
    ax.set(xlim=(0, 1), xlabel="AUROC (95% CI)", title=title)
    fig.tight_layout()
    return png(fig)


def transfer_figure(rows: Sequence[Mapping[str, Any]], title: str) -> str:
    """In-distribution vs transfer AUROC per family (supervised and unsupervised), with CIs."""
    fig = Figure(figsize=(6.4, 3.4))
    ax = fig.add_subplot()
    names = [f"{r['family']}{'' if r['supervised'] else ' (unsup.)'}" for r in rows]
    x = np.arange(len(rows))
    for off, key, ci_key, c, lab in ((-0.15, "in_distribution_auroc", "in_distribution_ci", "#8aa9d6", "in distribution (CV)"),
                                     (0.15, "auroc", "auroc_ci", "#c0392b", "transfer")):
        vals = [_num(r.get(key)) for r in rows]
        for xi, v, r in zip(x, vals, rows):
            ci = r.get(ci_key) or [None, None]
            if v is None:
                continue
            if _num(ci[0]) is not None and _num(ci[1]) is not None:
                ax.plot([xi + off] * 2, ci, c=c, lw=1.5)
            ax.plot([xi + off], [v], "o", c=c, ms=5, label=lab if xi == 0 else None)
    ax.axhline(0.5, ls="--", c="0.6", lw=1)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=7)
    ax.set(ylim=(0, 1.02), ylabel="AUROC", title=label(title, 70))
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return png(fig)
