"""Reference-centred states: subtract the mean state of benign reference prompts, per head.

A state mixes what every prompt shares (template, attention sink, the model's standing bias) with
what this prompt adds. Centring by the mean state of benign reference prompts read at the same
read point leaves the second part; ``scale="head"`` also divides each head by the reference
states' spread around their mean, so every head counts equally (a per-head whitening by one scalar,
which keeps each head's matrix structure, unlike per-entry standardisation).

Fit it on the reference states of one read point and transform states of that read point; as a
scikit-learn transformer it sits in a detector pipeline (fitted inside each fold, on the fold's
training items only).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

__all__ = ["StateCentering"]


class StateCentering(TransformerMixin, BaseEstimator):
    """Centre (and optionally scale) states per head by benign reference states.

    Parameters
    ----------
    n_heads : int or None, default=None
        Number of (layer, head) blocks in a flat row: a row of width D is ``n_heads`` contiguous
        blocks of D / n_heads numbers (e.g. L * H for states flattened from (L, H, f, e), which is
        how :meth:`kvstate.state.KVState.features` and the recorder flatten them). None: X must be
        (n, L, H, ...) and the blocks are its (L, H) heads.
    scale : {"none", "head"}, default="none"
        ``"head"`` divides each centred head by the reference RMS distance of its states from their
        mean (one scalar per head).
    eps : float, default=1e-12
        Floor of the per-head scale.

    Fitted attributes
    -----------------
    mean_ : (n_heads, block) mean reference state per head.
    scale_ : (n_heads,) per-head scale (ones for ``scale="none"``).
    n_features_in_ : flat width D.

    Examples
    --------
    >>> import numpy as np
    >>> ref = np.random.default_rng(0).normal(size=(50, 2, 3, 4, 4))  # (n, L, H, f, e)
    >>> c = StateCentering(scale="head").fit(ref)
    >>> c.transform(ref).shape
    (50, 2, 3, 4, 4)
    >>> bool(np.allclose(c.transform(ref).mean(0), 0))
    True
    """

    _parameter_constraints: dict = {
        "n_heads": [Interval(Integral, 1, None, closed="left"), None],
        "scale": [StrOptions({"none", "head"})],
        "eps": [Interval(Real, 0.0, None, closed="left")],
    }

    def __init__(self, n_heads: int | None = None, scale: str = "none", eps: float = 1e-12) -> None:
        self.n_heads = n_heads
        self.scale = scale
        self.eps = eps

    def _blocks(self, X: ArrayLike) -> tuple[NDArray[np.float64], tuple[int, ...], int]:
        X = np.asarray(X, dtype=np.float64)
        if self.n_heads is None:
            if X.ndim < 4:
                raise ValueError(f"X of shape {X.shape} has no (L, H) head axes; pass n_heads for flat rows")
            heads = X.shape[1] * X.shape[2]
        else:
            if X.ndim != 2:
                raise ValueError(f"with n_heads set X must be flat (n, D); got shape {X.shape}")
            heads = self.n_heads
        flat = X.reshape(X.shape[0], -1)
        if flat.shape[1] % heads:
            raise ValueError(f"a row of {flat.shape[1]} numbers does not split into n_heads={heads} equal blocks; "
                             "pass the number of (layer, head) blocks")
        return flat.reshape(X.shape[0], heads, -1), X.shape, heads

    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> "StateCentering":
        """Fit on benign reference states X: (n, L, H, ...) or flat (n, D) with ``n_heads``. Returns self."""
        self._validate_params()
        B, shape, heads = self._blocks(X)
        if B.shape[0] < 1:
            raise ValueError("StateCentering needs at least one reference state")
        self.n_features_in_ = B.shape[1] * B.shape[2]
        self.mean_ = B.mean(0)
        if self.scale == "head":
            self.scale_ = np.sqrt(((B - self.mean_) ** 2).sum(-1).mean(0)).clip(self.eps)
        else:
            self.scale_ = np.ones(heads)
        return self

    def transform(self, X: ArrayLike) -> NDArray[np.float32]:
        """(X - mean_) / scale_ per head, float32, in the shape X came in."""
        check_is_fitted(self)
        B, shape, heads = self._blocks(X)
        if B.shape[1:] != self.mean_.shape:
            raise ValueError(f"X has {heads} heads of {B.shape[2]} numbers but the reference had "
                             f"{self.mean_.shape[0]} of {self.mean_.shape[1]}; transform states of the same shape")
        return ((B - self.mean_) / self.scale_[:, None]).reshape(shape).astype(np.float32)
