"""Paired comparison of two detectors scored on the same items: ΔAUROC = AUROC(a) − AUROC(b).

Two independent estimates of the same quantity, side by side:

* **DeLong's test** (DeLong, DeLong & Clarke-Pearson 1988), in the fast O(n log n) form of Sun &
  Xu (2014): each AUROC is the mean of per-item structural components
  ``V10(x_i) = P(s(x_i) > s(Y))`` over positives and ``V01(y_j) = P(s(X) > s(y_j))`` over
  negatives; ``Var(Δ) = (S10_aa + S10_bb − 2 S10_ab)/m + (S01_aa + S01_bb − 2 S01_ab)/n`` with
  the sample covariances ``S10`` / ``S01`` of those components across the two detectors.
* **A paired, grouped bootstrap:** the same resampled items (whole groups, stratified by class)
  score both detectors, so the CI of Δ keeps their correlation.

:func:`verdict` reads only the paired CI and the equivalence margin: *equivalent* when the CI lies
inside ±margin, *better* / *worse* when it excludes 0, *unresolved* otherwise.
:func:`min_detectable_difference` is the |Δ| the test had 80% power to detect at α = 0.05.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import norm, rankdata

from .metrics import _auroc_rows, _bootstrap_indices, _check_y_scores

__all__ = ["EQUIVALENCE_MARGIN", "Verdict", "delong", "f1_at", "min_detectable_difference", "paired_auroc",
           "paired_bootstrap", "verdict"]

Verdict = Literal["better", "worse", "equivalent", "unresolved"]
EQUIVALENCE_MARGIN = 0.02


def _components(y: NDArray[np.int64], s: NDArray[np.float64]) -> tuple[float, NDArray[np.float64], NDArray[np.float64]]:
    """AUROC and the DeLong structural components (V10 over positives, V01 over negatives)."""
    pos, neg = s[y == 1], s[y == 0]
    m, n = pos.size, neg.size
    tz = rankdata(np.r_[pos, neg])  # midranks: ties count one half
    tx, ty = rankdata(pos), rankdata(neg)
    v10 = (tz[:m] - tx) / n  # share of negatives below each positive
    v01 = 1.0 - (tz[m:] - ty) / m  # share of positives above each negative
    return float(v10.mean()), v10, v01


def delong(y: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike) -> dict[str, float]:
    """DeLong's paired test of AUROC(a) − AUROC(b) on the same items.

    Parameters
    ----------
    y : array-like of shape (n_items,)
        0/1 labels (1 = positive / anomalous).
    scores_a, scores_b : array-like of shape (n_items,)
        Higher = more positive.

    Returns
    -------
    dict
        ``auroc_a``, ``auroc_b``, ``delta``, ``se`` (standard error of delta), ``z`` and the
        two-sided ``p``; ``se`` is 0 (and ``p`` 1) when the two score vectors rank every item alike.
    """
    y_, a = _check_y_scores(y, scores_a)
    _, b = _check_y_scores(y, scores_b)
    auc_a, v10a, v01a = _components(y_, a)
    auc_b, v10b, v01b = _components(y_, b)
    if v10a.size < 2 or v01a.size < 2:
        raise ValueError("DeLong's test needs at least 2 items of each class")
    s10 = np.cov(np.vstack([v10a, v10b]))
    s01 = np.cov(np.vstack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / v10a.size + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / v01a.size
    se = float(np.sqrt(max(var, 0.0)))
    delta = auc_a - auc_b
    if se < 1e-12:
        return {"auroc_a": auc_a, "auroc_b": auc_b, "delta": delta, "se": 0.0, "z": 0.0, "p": 1.0 if delta == 0 else 0.0}
    z = delta / se
    return {"auroc_a": auc_a, "auroc_b": auc_b, "delta": delta, "se": se, "z": float(z), "p": float(2 * norm.sf(abs(z)))}


def paired_bootstrap(y: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, *, groups: ArrayLike | None = None,
                     n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """Percentile CI of ΔAUROC from resampling the same items (whole ``groups``) for both detectors.

    Returns
    -------
    (lo, hi, sd) : the ``1 - alpha`` CI and the bootstrap standard deviation of Δ.
    """
    y_, a = _check_y_scores(y, scores_a)
    _, b = _check_y_scores(y, scores_b)
    g = None if groups is None else np.asarray(groups).ravel()
    if g is not None and g.shape != y_.shape:
        raise ValueError("groups must have one entry per item")
    rng = np.random.default_rng(seed)
    deltas: list[float] = []
    for idx in _bootstrap_indices(y_, g, n_boot, rng):
        yb = y_[idx]
        if yb.min() != yb.max():
            deltas.append(float(_auroc_rows(yb, a[idx]) - _auroc_rows(yb, b[idx])))
    if not deltas:
        raise ValueError("every bootstrap draw lost a class; too few groups")
    d = np.asarray(deltas)
    lo, hi = np.quantile(d, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi), float(d.std(ddof=1)) if d.size > 1 else 0.0


def min_detectable_difference(se: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest |ΔAUROC| a two-sided test at ``alpha`` detects with ``power``, given the SE of Δ."""
    return float((norm.isf(alpha / 2.0) + norm.isf(1.0 - power)) * se)


def verdict(ci: tuple[float, float] | list[float] | None, margin: float = EQUIVALENCE_MARGIN) -> Verdict:
    """*equivalent* when the paired CI of Δ lies inside ±margin; else *better* / *worse* when it
    excludes 0; else *unresolved*. Reads nothing but the CI."""
    if ci is None:
        return "unresolved"
    lo, hi = float(ci[0]), float(ci[1])
    if -margin <= lo and hi <= margin:
        return "equivalent"
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "unresolved"


def paired_auroc(y: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, *, groups: ArrayLike | None = None,
                 n_boot: int = 2000, seed: int = 0, margin: float = EQUIVALENCE_MARGIN) -> dict[str, Any]:
    """Everything a paired row reports: DeLong's Δ, SE and p, the paired bootstrap CI, the verdict
    (from that CI) and the smallest difference the test could have detected."""
    out: dict[str, Any] = delong(y, scores_a, scores_b)
    lo, hi, sd = paired_bootstrap(y, scores_a, scores_b, groups=groups, n_boot=n_boot, seed=seed)
    out.update(ci=[lo, hi], bootstrap_sd=sd, verdict=verdict((lo, hi), margin), margin=margin,
               min_detectable=min_detectable_difference(max(out["se"], sd)))
    return out


def f1_at(y: ArrayLike, scores: ArrayLike, threshold: float) -> float:
    """Positive-class F1 when flagging ``score > threshold`` (the moderation papers' unsafe-class F1)."""
    y_ = np.asarray(y).astype(int)
    flag = np.asarray(scores, dtype=float) > threshold
    tp = int((flag & (y_ == 1)).sum())
    fp = int((flag & (y_ == 0)).sum())
    fn = int((~flag & (y_ == 1)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
