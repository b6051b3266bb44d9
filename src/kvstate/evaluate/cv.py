"""Grouped cross-validation of detectors, with controls (length matching, shuffled labels,
held-out choice, cross-suite transfer) and tables.

Every score is "higher = more anomalous/positive" (``kvstate.detect`` contract), so
AUROC = P(score(positive) > score(negative)). Evaluation never lets a test statistic into
training: each fold clones the detector (or reduction pipeline) and fits it on that fold's
training items only (unsupervised detectors: only its normal items), and groups (e.g. the
paired benign/jailbreak versions of one prompt) never straddle folds.

Examples
--------
>>> import numpy as np
>>> from kvstate.detect import get_detector
>>> rng = np.random.default_rng(0)
>>> X = np.vstack([rng.normal(size=(80, 5)), rng.normal(size=(20, 5)) + 3])
>>> y = np.r_[np.zeros(80, int), np.ones(20, int)]
>>> res = evaluate_detector(X, y, None, get_detector("mahalanobis"), n_boot=100)
>>> res.metrics["auroc"] > 0.95
True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from sklearn.base import clone
from sklearn.model_selection import StratifiedGroupKFold

from .._io import to_jsonable
from ..detect import get_detector, is_supervised
from .metrics import _auroc, _auroc_rows, bootstrap_ci, metrics

__all__ = [
    "EvalResult",
    "comparison_table",
    "confound_warnings",
    "evaluate_detector",
    "evaluate_length_matched",
    "fit_clone",
    "length_matched_indices",
    "selection_corrected",
    "shuffled_label_control",
    "transfer_matrix",
]

# --------------------------------------------------------------------------- cross-validation
@dataclass
class EvalResult:
    """Out-of-fold evaluation of one detector on one representation.

    ``scores[i]`` is item i's score from the fold model that never saw it (nor its group).
    ``metrics`` pool all out-of-fold scores; ``fold_auroc`` are per-fold values.
    """

    representation: str
    detector: str
    scores: NDArray[np.float64]
    y: NDArray[np.int64]
    folds: NDArray[np.int64]
    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]
    fold_auroc: list[float]
    dim: int
    n_splits: int
    seed: int
    supervised: bool
    params: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, include_scores: bool = False) -> dict[str, Any]:
        """JSON-serialisable summary (optionally with per-item scores, labels and folds)."""
        out: dict[str, Any] = {
            "representation": self.representation,
            "detector": self.detector,
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "ci": {k: [float(lo), float(hi)] for k, (lo, hi) in self.ci.items()},
            "fold_auroc": [float(a) for a in self.fold_auroc],
            "dim": int(self.dim),
            "n": int(self.y.size),
            "n_pos": int(self.y.sum()),
            "n_splits": int(self.n_splits),
            "seed": int(self.seed),
            "supervised": bool(self.supervised),
            "params": to_jsonable(self.params),
            "extras": to_jsonable(self.extras),
        }
        if include_scores:
            out.update(scores=self.scores.tolist(), y=self.y.tolist(), folds=self.folds.tolist())
        return out


def _describe(estimator: Any) -> tuple[str, dict[str, Any]]:
    """Short name ("mahalanobis", "pca64+mahalanobis") and flat params of a detector/pipeline."""
    steps = getattr(estimator, "steps", None)
    if steps is None:
        return getattr(estimator, "name", "") or type(estimator).__name__, estimator.get_params(deep=False)
    parts, params = [], {}
    for step_name, step in steps:
        label = getattr(step, "name", "") or type(step).__name__
        if hasattr(step, "n_components"):
            label = {"PCAReduce": "pca", "RandomProjection": "rp"}.get(label, label) + str(step.n_components)
        parts.append(label)
        params.update({f"{step_name}__{k}": v for k, v in step.get_params(deep=False).items()})
    return "+".join(parts), params


def _as_arrays(X: ArrayLike, y: ArrayLike, groups: ArrayLike | None) -> tuple[NDArray[Any], NDArray[np.int64], NDArray[Any]]:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n_items, n_features), got shape {X.shape}")
    y_ = np.asarray(y).ravel()
    if y_.shape[0] != X.shape[0] or not np.all(np.isin(y_, (0, 1))):
        raise ValueError("y must be 0/1 with one label per row of X")
    g = np.arange(X.shape[0]) if groups is None else np.asarray(groups).ravel()
    if g.shape[0] != X.shape[0]:
        raise ValueError("groups must have one entry per row of X")
    return X, y_.astype(np.int64), g


def fit_clone(detector: Any, X: ArrayLike, y: ArrayLike, unsupervised_train: Literal["normal", "all"] = "normal") -> Any:
    """A clone of ``detector`` fitted on (X, y): probes on every item, unsupervised detectors on the
    normal items (``unsupervised_train="normal"``) or on all of them."""
    X, y = np.asarray(X), np.asarray(y).astype(np.int64)
    return _fit_fold(detector, X, y, np.arange(y.size), unsupervised_train)


def _fit_fold(detector: Any, X: NDArray[Any], y: NDArray[np.int64], train: NDArray[np.int64],
              unsupervised_train: Literal["normal", "all"]) -> Any:
    est = clone(detector)
    if is_supervised(est):
        return est.fit(X[train], y[train])
    if unsupervised_train == "normal":
        train = train[y[train] == 0]
    elif unsupervised_train != "all":
        raise ValueError(f"unsupervised_train must be 'normal' or 'all', got {unsupervised_train!r}")
    return est.fit(X[train])


def evaluate_detector(X: ArrayLike, y: ArrayLike, groups: ArrayLike | None, detector: Any, *,
                      n_splits: int = 5, seed: int = 0,
                      unsupervised_train: Literal["normal", "all"] = "normal",
                      n_boot: int = 1000, alpha: float = 0.05,
                      ci_metrics: Iterable[str] = ("auroc", "tpr_at_1fpr"),
                      representation: str = "") -> EvalResult:
    """Grouped, stratified K-fold out-of-fold scores, pooled metrics and bootstrap CIs.

    Per fold a ``clone`` of ``detector`` (a detector, a ``detector_pipeline`` or a registry
    name) is fitted on the training part only: supervised ones on all its items, unsupervised
    ones on its label-0 items (``unsupervised_train="normal"``) or all of them ("all",
    the contaminated setting). ``groups=None`` treats every item as its own group.
    """
    X_, y_, g = _as_arrays(X, y, groups)
    if isinstance(detector, str):
        detector = get_detector(detector)
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    scores = np.full(y_.size, np.nan)
    folds = np.full(y_.size, -1, dtype=np.int64)
    fold_auroc: list[float] = []
    for k, (train, test) in enumerate(cv.split(X_, y_, g)):
        shared = np.intersect1d(g[train], g[test])
        assert shared.size == 0, f"fold {k}: groups {shared[:5]} in both train and test"
        est = _fit_fold(detector, X_, y_, train, unsupervised_train)
        scores[test] = est.decision_function(X_[test])
        folds[test] = k
        if np.unique(y_[test]).size == 2:
            fold_auroc.append(_auroc(y_[test], scores[test]))
    assert np.all(folds >= 0), "some items were never scored"
    m = metrics(y_, scores)
    boot_groups = None if groups is None else g
    ci = {name: bootstrap_ci(y_, scores, name, n_boot=n_boot, seed=seed, alpha=alpha, groups=boot_groups)
          for name in ci_metrics}
    name, params = _describe(detector)
    return EvalResult(representation=representation, detector=name, scores=scores, y=y_, folds=folds,
                      metrics=m, ci=ci, fold_auroc=fold_auroc, dim=int(X_.shape[1]), n_splits=n_splits,
                      seed=seed, supervised=is_supervised(detector), params=params)


# --------------------------------------------------------------------------- controls
def length_matched_indices(lengths: ArrayLike, y: ArrayLike, seed: int = 0, n_bins: int = 10) -> NDArray[np.int64]:
    """Indices of a subset whose two classes have matched length distributions.

    Lengths are cut into ``n_bins`` quantile bins; in each bin the larger class is subsampled
    (seeded, without replacement) to the smaller one's count, and bins holding one class are
    dropped. On this subset a detector cannot win by reading length alone.
    """
    lengths_ = np.asarray(lengths, dtype=np.float64).ravel()
    y_ = np.asarray(y).ravel()
    if lengths_.shape != y_.shape:
        raise ValueError("lengths and y must have the same length")
    edges = np.unique(np.quantile(lengths_, np.linspace(0.0, 1.0, n_bins + 1)))
    bins = np.searchsorted(edges[1:-1], lengths_, side="right")
    rng = np.random.default_rng(seed)
    keep: list[NDArray[np.int64]] = []
    for b in np.unique(bins):
        pos = np.flatnonzero((bins == b) & (y_ == 1))
        neg = np.flatnonzero((bins == b) & (y_ == 0))
        m = min(pos.size, neg.size)
        if m:
            keep += [rng.choice(pos, m, replace=False), rng.choice(neg, m, replace=False)]
    if not keep:
        raise ValueError("no length bin holds both classes: lengths alone separate the labels")
    return np.sort(np.concatenate(keep))


def evaluate_length_matched(X: ArrayLike, y: ArrayLike, groups: ArrayLike | None, lengths: ArrayLike,
                            detector: Any, *, n_bins: int = 10, seed: int = 0, **kwargs: Any) -> EvalResult:
    """:func:`evaluate_detector` on the :func:`length_matched_indices` subset.

    ``extras`` records the subset size and the length-only AUROC on it (should be ~0.5).
    """
    X_, y_, g = _as_arrays(X, y, groups)
    idx = length_matched_indices(lengths, y_, seed=seed, n_bins=n_bins)
    res = evaluate_detector(X_[idx], y_[idx], None if groups is None else g[idx], detector, seed=seed, **kwargs)
    length_auroc = _auroc(y_[idx], np.asarray(lengths, dtype=np.float64)[idx])
    res.extras.update(length_matched=True, n_matched=int(idx.size), n_total=int(y_.size),
                      length_auroc=length_auroc, indices=idx)
    return res


def shuffled_label_control(X: ArrayLike, y: ArrayLike, groups: ArrayLike | None, detector: Any, *,
                           n_permutations: int = 5, seed: int = 0, **kwargs: Any) -> dict[str, Any]:
    """Out-of-fold AUROC with randomly permuted labels: should be ~0.5 for a sound pipeline.

    A value far from 0.5 means the evaluation itself leaks (or groups are mis-specified).
    """
    X_, y_, g = _as_arrays(X, y, groups)
    rng = np.random.default_rng(seed)
    aurocs = []
    for i in range(n_permutations):
        y_perm = rng.permutation(y_)
        res = evaluate_detector(X_, y_perm, groups if groups is None else g, detector, seed=seed + i,
                                n_boot=1, ci_metrics=(), **kwargs)
        aurocs.append(res.metrics["auroc"])
    return {"auroc_mean": float(np.mean(aurocs)), "auroc_std": float(np.std(aurocs)), "aurocs": aurocs}


def selection_corrected(scores: Mapping[str, ArrayLike], families: Mapping[str, str], y: ArrayLike,
                        groups: ArrayLike | None, *, n_repeats: int = 20, seed: int = 0) -> dict[str, Any]:
    """Best-of-many AUROC without the selection bias: choose on half the groups, score the other half.

    "The best of 60 representations x 5 detectors" is optimistic, and more so for a family with
    more candidates. Here each repeat splits the groups into two stratified halves; in each family
    the candidate with the highest AUROC on one half is picked and its AUROC on the *other* half is
    recorded (both ways round). ``scores`` are out-of-fold scores per candidate (e.g. from
    :func:`evaluate_detector`), so no refitting is needed and no test label guides the choice.

    Returns ``{"families": {family: {"auroc", "lo", "hi", "picks"}}, "n_repeats", "wins"}`` where
    lo/hi are the 2.5/97.5 percentiles over the 2 x n_repeats held-out halves, ``picks`` counts
    how often each candidate was chosen, and ``wins[a][b]`` is the fraction of halves where family
    a's pick beat family b's.
    """
    y_ = np.asarray(y).astype(np.int64)
    g = np.arange(y_.size) if groups is None else np.asarray(groups)
    names = [n for n, s in scores.items() if np.isfinite(np.asarray(s, dtype=np.float64)).all()]
    M = np.stack([np.asarray(scores[n], dtype=np.float64) for n in names])  # (candidates, items)
    fams = sorted({families[n] for n in names})
    members = {f: np.array([i for i, n in enumerate(names) if families[n] == f]) for f in fams}
    held: dict[str, list[float]] = {f: [] for f in fams}
    picks: dict[str, dict[str, int]] = {f: {} for f in fams}
    for r in range(n_repeats):
        halves = [test for _, test in StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed + r).split(y_, y_, g)]
        for pick_on, score_on in (halves, halves[::-1]):
            if len(np.unique(y_[pick_on])) < 2 or len(np.unique(y_[score_on])) < 2:
                continue
            on_pick = _auroc_rows(np.broadcast_to(y_[pick_on], (len(names), pick_on.size)), M[:, pick_on])
            on_score = _auroc_rows(np.broadcast_to(y_[score_on], (len(names), score_on.size)), M[:, score_on])
            for f, idx in members.items():
                best = idx[int(np.argmax(on_pick[idx]))]  # ties: first listed
                held[f].append(float(on_score[best]))
                picks[f][names[best]] = picks[f].get(names[best], 0) + 1
    out = {f: {"auroc": float(np.mean(v)), "lo": float(np.percentile(v, 2.5)), "hi": float(np.percentile(v, 97.5)),
               "picks": dict(sorted(picks[f].items(), key=lambda kv: -kv[1]))} for f, v in held.items() if v}
    wins = {a: {b: float(np.mean(np.asarray(held[a]) > np.asarray(held[b]))) for b in out if b != a} for a in out}
    return {"families": out, "n_repeats": n_repeats, "wins": wins}


def confound_warnings(lengths: ArrayLike | None, y: ArrayLike, *, threshold: float = 0.7,
                      controls: Mapping[str, ArrayLike] | None = None) -> list[str]:
    """Warnings for controls (length, and any in ``controls``) that alone predict the label.

    A control with separability max(AUROC, 1 - AUROC) > ``threshold`` means a detector can score
    well without reading the concept; report length-matched results alongside.
    """
    y_ = np.asarray(y).ravel()
    named: dict[str, ArrayLike] = {} if lengths is None else {"length": lengths}
    named.update(controls or {})
    out = []
    for name, values in named.items():
        a = _auroc(y_, np.asarray(values, dtype=np.float64).ravel())
        sep = max(a, 1.0 - a)
        if sep > threshold:
            out.append(f"confound: {name} alone separates the labels (AUROC {a:.3f}, max(a,1-a)={sep:.3f} > "
                       f"{threshold}); compare against a {name}-matched evaluation")
    return out


def transfer_matrix(datasets: Mapping[str, tuple[ArrayLike, ArrayLike, ArrayLike | None]], detector: Any, *,
                    unsupervised_train: Literal["normal", "all"] = "normal",
                    diagonal: Literal["cv", "nan"] = "cv", n_splits: int = 5, seed: int = 0) -> pd.DataFrame:
    """AUROC of a detector fitted on one dataset (rows) and scored on another (columns).

    Off-diagonal cells fit on the whole training dataset (its normal items, if unsupervised)
    and score every item of the test dataset. The diagonal would be in-sample, so it is the
    grouped cross-validated AUROC (``diagonal="cv"``) or NaN.
    """
    if isinstance(detector, str):
        detector = get_detector(detector)
    names = list(datasets)
    data = {n: _as_arrays(*datasets[n]) for n in names}
    table = pd.DataFrame(np.nan, index=pd.Index(names, name="train"), columns=pd.Index(names, name="test"))
    for src in names:
        Xs, ys, _ = data[src]
        est = _fit_fold(detector, Xs, ys, np.arange(ys.size), unsupervised_train)
        for dst in names:
            if dst == src:
                if diagonal == "cv":
                    table.loc[src, dst] = evaluate_detector(
                        *datasets[src], detector, n_splits=n_splits, seed=seed,
                        unsupervised_train=unsupervised_train, n_boot=1, ci_metrics=()).metrics["auroc"]
                continue
            Xd, yd, _ = data[dst]
            table.loc[src, dst] = _auroc(yd, est.decision_function(Xd))
    return table


# --------------------------------------------------------------------------- reporting
def comparison_table(results: Iterable[EvalResult] | Mapping[Any, EvalResult]) -> pd.DataFrame:
    """One row per (representation, detector): AUROC with CI, AUPRC, TPR@1%FPR, FPR@95%TPR, dim, n.

    ``df.to_dict(orient="records")`` is JSON-serialisable; use ``EvalResult.to_dict`` for more.
    """
    items = list(results.values()) if isinstance(results, Mapping) else list(results)
    rows = []
    for r in items:
        row: dict[str, Any] = {"representation": r.representation, "detector": r.detector}
        row.update({k: float(v) for k, v in r.metrics.items()})
        for k, (lo, hi) in r.ci.items():
            row[f"{k}_lo"], row[f"{k}_hi"] = float(lo), float(hi)
        row.update(dim=int(r.dim), n=int(r.y.size), n_pos=int(r.y.sum()), n_splits=int(r.n_splits),
                   supervised=bool(r.supervised))
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    first = ["representation", "detector", "auroc", "auroc_lo", "auroc_hi", "auprc", "tpr_at_1fpr",
             "tpr_at_1fpr_lo", "tpr_at_1fpr_hi", "fpr_at_95tpr", "dim", "n", "n_pos", "n_splits", "supervised"]
    cols = [c for c in first if c in df.columns] + [c for c in df.columns if c not in first]
    return df[cols].sort_values(["representation", "detector"], kind="stable").reset_index(drop=True)
