"""PCA reconstruction error: distance from the normal data's principal subspace.

score(x) = || x - W^T W (x - mu) - mu ||^2 on standardised x, W = top principal axes of the
normal training data. Anomalies with energy outside the normal subspace score high.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval

from .base import BaseDetector, _clip_components

__all__ = ["PCADetector"]


class PCADetector(BaseDetector):
    """Unsupervised: squared reconstruction error under ``sklearn.decomposition.PCA``.

    Parameters
    ----------
    n_components : float in (0, 1) or int
        Fraction of variance to keep, or a number of components (clipped to
        ``min(n_samples, n_features) - 1`` so the residual is never identically zero).
    random_state : int
        Seed for the randomised SVD solver.
    contamination : float
        Training outlier fraction, sets ``threshold_`` only.

    Fitted attributes
    -----------------
    pca_ : fitted PCA; ``n_components_`` re-exposed.
    """

    name: ClassVar[str] = "pca"
    _components: ClassVar[dict[str, type] | None] = {"scaler_": StandardScaler, "pca_": PCA}
    _parameter_constraints: ClassVar[dict] = {
        **BaseDetector._parameter_constraints,
        "n_components": [Interval(Real, 0.0, 1.0, closed="neither"), Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, *, n_components: int | float = 0.9, random_state: int | None = 0,
                 contamination: float = 0.1) -> None:
        self.n_components = n_components
        self.random_state = random_state
        self.contamination = contamination

    def _fit(self, Xs: NDArray[np.float64], y: NDArray[np.int64] | None) -> None:
        n, d = Xs.shape
        k = _clip_components(self.n_components, n - 1, d - 1)
        k = k if isinstance(k, float) else max(k, 1)
        with np.errstate(invalid="ignore", divide="ignore"):  # constant features: variance ratios 0/0, harmless
            self.pca_ = PCA(n_components=k, random_state=self.random_state).fit(Xs)
        self.n_components_ = int(self.pca_.n_components_)

    def _score(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        recon = self.pca_.inverse_transform(self.pca_.transform(Xs))
        return np.sum((Xs - recon) ** 2, axis=1)
