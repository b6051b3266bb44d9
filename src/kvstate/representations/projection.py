"""Seeded, data-independent reductions of wide vectors: per-head sketches of wide feature maps and
random projections of whole vectors (Johnson-Lindenstrauss). Nothing here sees data, so applying
them before any train/test split leaks nothing."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np
import torch

from .._options import Projection, check_option

__all__ = ["PROJECTIONS", "Reducer", "sketch"]

PROJECTIONS = get_args(Projection)  #: Reducer kinds


@functools.lru_cache(maxsize=32)
def sketch(dim_in: int, dim_out: int, seed: int) -> torch.Tensor:
    """A fixed Gaussian (dim_out, dim_in) matrix scaled by 1/sqrt(dim_out), from the seed and the input size."""
    g = torch.Generator().manual_seed(seed * 7919 + dim_in)
    return torch.randn(dim_out, dim_in, generator=g) / math.sqrt(dim_out)


@dataclass(frozen=True)
class Reducer:
    """Seeded, data-independent random projection of too-long vectors (Johnson-Lindenstrauss).

    The matrix depends only on (input size, max_dim, seed, kind), never on data, so applying it
    before any train/test split leaks nothing; distances are preserved up to a small distortion.
    ``"gaussian"`` is a dense matrix (368,640 x 2048 floats = 2.8 GiB for all layers of smollm2);
    ``"sparse"`` is Li et al.'s very sparse projection (density 1/sqrt(D), same guarantee), which
    costs ~sqrt(D) times less to build, hold and apply.

    Parameters
    ----------
    max_dim : int
        Vectors wider than this are projected to ``max_dim`` dimensions; narrower ones pass unchanged.
    seed : int
        Seed of the projection matrix.
    kind : {"gaussian", "sparse"}, default="gaussian"
    """

    max_dim: int
    seed: int
    kind: Projection = "gaussian"

    def __post_init__(self):
        check_option("projection", self.kind, Projection)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N, D) float32 -> (N, min(D, max_dim))."""
        if x.shape[1] <= self.max_dim:
            return x
        if self.kind == "sparse":
            return np.asarray(_sparse_projection(x.shape[1], self.max_dim, self.seed).transform(x), dtype=np.float32)
        return (torch.from_numpy(x) @ _projection(x.shape[1], self.max_dim, self.seed)).numpy()

    def many(self, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``[self(x) for x in xs]`` with one product per input width, so that each matrix is read
        once for all of them (a product with few rows is bound by reading the matrix).

        Parameters
        ----------
        xs : sequence of ndarray, each of shape (N_i, D_i), float32

        Returns
        -------
        list of ndarray, each of shape (N_i, min(D_i, max_dim))
        """
        out: list[np.ndarray | None] = [None] * len(xs)
        by_width: dict[int, list[int]] = {}
        for i, x in enumerate(xs):
            by_width.setdefault(x.shape[1], []).append(i)
        for idx in by_width.values():
            y = self(np.concatenate([xs[i] for i in idx]))
            for i, part in zip(idx, np.split(y, np.cumsum([len(xs[i]) for i in idx])[:-1])):
                out[i] = part
        return out

    def adjoint(self, w: np.ndarray, dim_in: int) -> np.ndarray:
        """The transposed projection of ``w``: u such that ``self(x) @ w == x @ u`` for every (N, dim_in) x.

        Folds a linear read-out of the projected vector back onto the unprojected one (the live
        monitor scores an affine detector as one dot product, :mod:`kvstate.monitor.fold`), with the
        same matrix ``__call__`` applies, in float64.

        Parameters
        ----------
        w : ndarray of shape (min(dim_in, max_dim),)
        dim_in : int
            Width of the vectors the projection is applied to.

        Returns
        -------
        ndarray of shape (dim_in,), float64
        """
        w = np.asarray(w, dtype=np.float64)
        dim_out = min(dim_in, self.max_dim)
        if w.shape != (dim_out,):
            raise ValueError(f"w must have shape ({dim_out},) for dim_in={dim_in}, max_dim={self.max_dim}; got {w.shape}")
        if dim_in <= self.max_dim:
            return w.copy()
        if self.kind == "sparse":
            return np.asarray(_sparse_projection(dim_in, self.max_dim, self.seed).components_.T @ w, dtype=np.float64).ravel()
        # the (dim_out, dim_in) matrix __call__ multiplies by (transposed), drawn again rather than cached: the dense
        # path's cache holds it only if the dense path runs; float64 in column blocks keeps the peak at the float32 matrix
        G = sketch.__wrapped__(dim_in, self.max_dim, self.seed)
        wt = torch.from_numpy(w)
        u = np.empty(dim_in)
        for i in range(0, dim_in, 16384):
            u[i:i + 16384] = (wt @ G[:, i:i + 16384].double()).numpy()
        return u


@functools.lru_cache(maxsize=8)
def _projection(dim_in: int, dim_out: int, seed: int) -> torch.Tensor:
    return sketch.__wrapped__(dim_in, dim_out, seed).T.contiguous()  # (dim_in, dim_out), not cached twice


@functools.lru_cache(maxsize=8)
def _sparse_projection(dim_in: int, dim_out: int, seed: int):
    from sklearn.random_projection import SparseRandomProjection

    # fit() reads only the number of columns; the matrix is drawn from the seed
    return SparseRandomProjection(dim_out, dense_output=True, random_state=seed).fit(np.zeros((1, dim_in), np.float32))
