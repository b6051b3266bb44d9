"""Shared pieces of the multi-block detectors (``mlpm``, ``stack``): equal-width blocks and
out-of-fold block scores.

X is the horizontal stack of ``n_blocks`` equal-width blocks (one per layer, say). A first stage is
fitted per block; the second stage that combines the blocks is fitted on the blocks' OUT-OF-FOLD
scores, so it never sees a score of an item from a first-stage model trained on that item. Folds are
grouped (``StratifiedGroupKFold``) when groups are given, else ``StratifiedKFold``; both seeded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

__all__ = ["block_slices", "compose_affine", "oof_block_scores", "oof_splits", "refit_blocks", "standardise_scores"]

#: (X_block, y) -> (coef (w,), intercept): one first-stage fit; its score is X_block @ coef + intercept.
BlockFit = Callable[[NDArray[np.float64], NDArray[np.int64]], tuple[NDArray[np.float64], float]]


def block_slices(n_features: int, n_blocks: int) -> list[slice]:
    """``n_blocks`` consecutive equal-width column slices of an ``n_features``-wide X."""
    if n_blocks > n_features or n_features % n_blocks:
        raise ValueError(f"X has {n_features} features, which do not split into n_blocks={n_blocks} equal blocks; "
                         "pass an n_blocks that divides the width (e.g. the number of layers stacked)")
    w = n_features // n_blocks
    return [slice(b * w, (b + 1) * w) for b in range(n_blocks)]


def oof_splits(y: NDArray[np.int64], groups: ArrayLike | None, n_splits: int,
               random_state: int | None) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """Seeded (train, test) index pairs covering every item once as a test item.

    ``n_splits`` is clipped to the smaller class count (and, with groups, to the number of groups);
    every training part holds both classes, or a one-line error says why not.
    """
    y = np.asarray(y)
    k = int(min(n_splits, np.bincount(y, minlength=2).min()))
    if groups is not None:
        groups = np.asarray(groups).ravel()
        if groups.shape[0] != y.shape[0]:
            raise ValueError(f"groups has {groups.shape[0]} entries for {y.shape[0]} samples; pass one group per row")
        k = int(min(k, np.unique(groups).size))
    if k < 2:
        raise ValueError("out-of-fold block scores need >= 2 items of each class (and >= 2 groups when groups are "
                         f"given); got class counts {np.bincount(y, minlength=2).tolist()}")
    if groups is None:
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=random_state)
        splits = list(cv.split(np.zeros(len(y)), y))
    else:
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=random_state)
        splits = list(cv.split(np.zeros(len(y)), y, groups))
    for train, _ in splits:
        if np.unique(y[train]).size < 2:
            raise ValueError("a training fold holds one class only (the groups do not mix the classes); "
                             "pass groups that each hold few items, or no groups")
    return splits


def oof_block_scores(Xs: NDArray[np.float64], y: NDArray[np.int64], slices: list[slice],
                     splits: list[tuple[NDArray[np.int64], NDArray[np.int64]]], fit_block: BlockFit) -> NDArray[np.float64]:
    """(n_samples, n_blocks) scores, each row scored by first-stage models that did not train on it."""
    Z = np.full((Xs.shape[0], len(slices)), np.nan)
    for train, test in splits:
        for b, sl in enumerate(slices):
            coef, intercept = fit_block(Xs[train, sl], y[train])
            Z[test, b] = Xs[test, sl] @ coef + intercept
    if np.isnan(Z).any():
        raise ValueError("the folds left some items without an out-of-fold score")  # a splitter bug, not user input
    return Z


def standardise_scores(Z: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-block mean and sd (1 where a block's scores are constant) of out-of-fold scores ``Z``."""
    sd = Z.std(axis=0)
    return Z.mean(axis=0), np.where(sd > 0, sd, 1.0)


def refit_blocks(Xs: NDArray[np.float64], y: NDArray[np.int64], slices: list[slice],
                 fit_block: BlockFit) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Each block's first-stage model refitted on all items: coefficients side by side, and intercepts."""
    coef, intercept = np.empty(Xs.shape[1]), np.empty(len(slices))
    for b, sl in enumerate(slices):
        coef[sl], intercept[b] = fit_block(Xs[:, sl], y)
    return coef, intercept


def compose_affine(block_coef: NDArray[np.float64], block_intercept: NDArray[np.float64], mean: NDArray[np.float64],
                   scale: NDArray[np.float64], weights: NDArray[np.float64], bias: float,
                   slices: list[slice]) -> tuple[NDArray[np.float64], float]:
    """``sum_b w_b (s_b(x) - m_b) / sd_b + bias`` with affine block scores ``s_b``, as one (coef, intercept)."""
    k = weights / scale  # per-block factor on the raw block score
    coef = block_coef * np.repeat(k, [sl.stop - sl.start for sl in slices])
    return coef, float(bias + k @ (block_intercept - mean))
