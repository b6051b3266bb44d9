"""Folded scoring: an affine detector of a projected read-out is one dot product with the unprojected one.

With f the read-out of the running state (:func:`kvstate.representations.kv_readout`, width D), R the
study's seeded projection to d <= 2048 dims (:class:`~kvstate.representations.Reducer`, linear) and a
detector that is affine in its input (a logistic probe behind its StandardScaler, diffmean, a RepE
reading vector, any affine sklearn Pipeline):

    score(f) = w . R(f) + c = (R^T w) . f + c = u . f + c

w and c are read off the detector itself (c = score(0), w_i = score(e_i) - c on the identity basis of
the projected space, d <= 2048 rows), affinity is checked on seeded random points over eight orders of
magnitude, and u = R^T w is computed once with the projection's own matrix. Per scored step the
monitor then does O(D) work instead of the O(D d) dense projection.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["affine_form"]


def affine_form(decision: Callable[[np.ndarray], np.ndarray], dim: int, *, rtol: float = 1e-5, n_check: int = 8,
                seed: int = 0, block: int = 512) -> tuple[np.ndarray, float] | None:
    """w and c with ``decision(X) == X @ w + c`` for (N, dim) X, or None when ``decision`` is not affine.

    Parameters
    ----------
    decision : callable
        (N, dim) float32 -> (N,) scores, e.g. a fitted detector's ``decision_function``.
    dim : int
        Input width.
    rtol : float, default=1e-5
        Largest accepted error at the check points, relative to ``|X| @ |w| + |c|`` (the size of the
        terms summed, so the test is scale-free). Float32 rounding inside the detector (sklearn keeps
        float32 input in float32) stays well below it; curvature does not.
    n_check : int, default=8
        Seeded Gaussian check points per scale; the scales run from 1e-4 to 1e4, so a quadratic
        (mahalanobis), a distance (kNN) or a piecewise-constant score (IForest) fails at one of them.
    seed : int, default=0
        Seed of the check points.
    block : int, default=512
        Rows of the identity basis scored at once (bounds the memory at ``block * dim``).

    Returns
    -------
    (w, c) : ndarray of shape (dim,) float64 and float, or None
    """
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")

    def score(X: np.ndarray) -> np.ndarray:
        return np.asarray(decision(X.astype(np.float32)), dtype=np.float64).reshape(len(X))

    c = float(score(np.zeros((1, dim)))[0])
    if not np.isfinite(c):
        return None
    w = np.empty(dim)
    for i in range(0, dim, block):
        eye = np.zeros((min(block, dim - i), dim))
        eye[np.arange(len(eye)), i + np.arange(len(eye))] = 1.0
        w[i:i + len(eye)] = score(eye) - c
    if not np.isfinite(w).all():
        return None
    rng = np.random.default_rng(seed)
    for scale in (1e-4, 1e-2, 1.0, 1e2, 1e4):
        X = (rng.standard_normal((n_check, dim)) * scale).astype(np.float32).astype(np.float64)
        got, pred = score(X), X @ w + c
        size = np.abs(X) @ np.abs(w) + abs(c)
        if not (np.abs(got - pred) <= rtol * size + 1e-12).all():
            return None
    return w, c
