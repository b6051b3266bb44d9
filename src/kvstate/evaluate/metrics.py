"""Metrics and seeded bootstrap CIs. Every score is "higher = more anomalous/positive", so
AUROC = P(score(positive) > score(negative))."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = ["METRICS", "auroc_ci", "bootstrap_ci", "metrics"]

MetricFn = Callable[[NDArray[Any], NDArray[np.float64]], float]


# --------------------------------------------------------------------------- metrics
def _check_y_scores(y: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    y = np.asarray(y).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y has {y.size} items, scores {s.size}")
    if not np.all(np.isin(y, (0, 1))):
        raise ValueError("y must be 0/1 (1 = positive/anomalous)")
    if y.min() == y.max():
        raise ValueError("y needs both classes (0 and 1) for AUROC-type metrics")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores contain NaN/inf")
    return y.astype(np.int64), s


def _auroc(y: NDArray[Any], s: NDArray[np.float64]) -> float:
    return float(roc_auc_score(y, s))


def _auprc(y: NDArray[Any], s: NDArray[np.float64]) -> float:
    return float(average_precision_score(y, s))


def _tpr_at_fpr(y: NDArray[Any], s: NDArray[np.float64], fpr_max: float = 0.01) -> float:
    """Largest TPR on the exact ROC curve with FPR <= fpr_max."""
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(tpr[fpr <= fpr_max].max())


def _fpr_at_tpr(y: NDArray[Any], s: NDArray[np.float64], tpr_min: float = 0.95) -> float:
    """Smallest FPR on the exact ROC curve with TPR >= tpr_min."""
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(fpr[tpr >= tpr_min].min())


#: metric name -> fn(y, scores); the keys of :func:`metrics`.
METRICS: dict[str, MetricFn] = {
    "auroc": _auroc,
    "auprc": _auprc,
    "fpr_at_95tpr": _fpr_at_tpr,
    "tpr_at_1fpr": _tpr_at_fpr,
}


def metrics(y: ArrayLike, scores: ArrayLike) -> dict[str, float]:
    """AUROC, AUPRC (= sklearn's average precision), FPR at 95% TPR, TPR at 1% FPR.

    The last two read the exact (non-thinned) ROC curve: ``tpr_at_1fpr`` is the max TPR over
    points with FPR <= 0.01, ``fpr_at_95tpr`` the min FPR over points with TPR >= 0.95.
    """
    y_, s = _check_y_scores(y, scores)
    return {name: fn(y_, s) for name, fn in METRICS.items()}


# --------------------------------------------------------------------------- bootstrap
def _auroc_rows(y: NDArray[np.int64], s: NDArray[np.float64]) -> NDArray[np.float64]:
    """Mann-Whitney AUROC per row of (n_boot, n) label/score matrices (ties count 1/2)."""
    ranks = rankdata(s, axis=-1)
    n1 = y.sum(axis=-1)
    n0 = y.shape[-1] - n1
    return ((ranks * y).sum(axis=-1) - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def _roc_fast(y: NDArray[np.int64], s: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(fpr, tpr) at every distinct threshold, as ``roc_curve(drop_intermediate=False)``."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]
    tps = np.cumsum(y_sorted)[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


#: bootstrap-speed versions of METRICS (equal values, no input validation per draw).
_FAST: dict[str, MetricFn] = {
    "auroc": lambda y, s: float(_auroc_rows(y, s)),
    "tpr_at_1fpr": lambda y, s: float((lambda f, t: t[f <= 0.01].max())(*_roc_fast(y, s))),
    "fpr_at_95tpr": lambda y, s: float((lambda f, t: f[t >= 0.95].min())(*_roc_fast(y, s))),
}


def _bootstrap_indices(y: NDArray[np.int64], groups: NDArray[Any] | None, n_boot: int,
                       rng: np.random.Generator) -> Iterable[NDArray[np.int64]]:
    """Resample items within each label (or whole groups within "has a positive" strata)."""
    if groups is None:
        strata = [np.flatnonzero(y == c) for c in (0, 1)]
        for _ in range(n_boot):
            yield np.concatenate([rng.choice(idx, size=idx.size, replace=True) for idx in strata])
        return
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    by_group = np.argsort(inverse, kind="stable")  # items of group k: by_group[starts[k]:starts[k]+counts[k]]
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    has_pos = np.zeros(counts.size, dtype=np.int64)
    np.maximum.at(has_pos, inverse, y)
    strata = [np.flatnonzero(has_pos == c) for c in (0, 1)]
    for _ in range(n_boot):
        picked = np.concatenate([rng.choice(st, size=st.size, replace=True) for st in strata if st.size])
        n_items = counts[picked]
        offsets = np.arange(n_items.sum()) - np.repeat(np.cumsum(n_items) - n_items, n_items)
        yield by_group[np.repeat(starts[picked], n_items) + offsets]


def bootstrap_ci(y: ArrayLike, scores: ArrayLike, metric: str | MetricFn = "auroc", n_boot: int = 1000,
                 seed: int = 0, alpha: float = 0.05, groups: ArrayLike | None = None) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of ``metric``, stratified by label.

    With ``groups``, whole groups are resampled (stratified by whether a group holds a
    positive), so correlated items (paired prompts, turns of one dialogue) are not counted as
    independent evidence. Draws that lose a class are skipped.
    """
    y_, s = _check_y_scores(y, scores)
    g = None if groups is None else np.asarray(groups).ravel()
    if g is not None and g.shape != y_.shape:
        raise ValueError("groups must have one entry per item")
    fn = _FAST.get(metric, METRICS[metric]) if isinstance(metric, str) else metric
    rng = np.random.default_rng(seed)
    stats: list[float] = []
    if metric == "auroc" and g is None:  # vectorised fast path (same value as roc_auc_score)
        draws = np.stack(list(_bootstrap_indices(y_, None, n_boot, rng)))
        for chunk in np.array_split(draws, max(1, n_boot // 100)):
            stats.extend(_auroc_rows(y_[chunk], s[chunk]).tolist())
    else:
        for idx in _bootstrap_indices(y_, g, n_boot, rng):
            yb = y_[idx]
            if yb.min() != yb.max():
                stats.append(fn(yb, s[idx]))
    if not stats:
        raise ValueError("every bootstrap draw lost a class; too few groups")
    lo, hi = np.quantile(np.asarray(stats), [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def auroc_ci(y: ArrayLike, scores: ArrayLike, *, n_boot: int = 1000, seed: int = 0,
             groups: ArrayLike | None = None) -> tuple[float, list[float] | None]:
    """AUROC and its grouped bootstrap CI as ``[lo, hi]``, or None when too few groups remain to resample."""
    auc = metrics(y, scores)["auroc"]
    try:
        return auc, list(bootstrap_ci(y, scores, "auroc", n_boot=n_boot, seed=seed, groups=groups))
    except ValueError:
        return auc, None
