"""Mahalanobis distance to the normal data under a Ledoit-Wolf shrunk covariance.

score(x) = (x - mu)^T Sigma_LW^{-1} (x - mu) on standardised x. Shrinkage keeps the precision
well conditioned when n_samples is not >> n_features (the usual case for KV states); reduce
very wide inputs first (``kvstate.reduce``), the covariance is n_features^2.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.covariance import LedoitWolf
from sklearn.preprocessing import StandardScaler

from .base import BaseDetector

__all__ = ["MahalanobisDetector"]


class MahalanobisDetector(BaseDetector):
    """Unsupervised: squared Mahalanobis distance under ``sklearn.covariance.LedoitWolf``.

    Parameters
    ----------
    contamination : float
        Training outlier fraction, sets ``threshold_`` only.

    Fitted attributes
    -----------------
    covariance_estimator_ : fitted LedoitWolf; ``location_``, ``precision_`` and
    ``shrinkage_`` are re-exposed from it.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(100, 3))
    >>> det = MahalanobisDetector().fit(X)
    >>> bool(det.decision_function([[10.0, 10.0, 10.0]])[0] > det.threshold_)
    True
    """

    name: ClassVar[str] = "mahalanobis"
    _components: ClassVar[dict[str, type] | None] = {
        "scaler_": StandardScaler,
        "covariance_estimator_": LedoitWolf,
    }

    def __init__(self, *, contamination: float = 0.1) -> None:
        self.contamination = contamination

    def _fit(self, Xs: NDArray[np.float64], y: NDArray[np.int64] | None) -> None:
        self.covariance_estimator_ = LedoitWolf().fit(Xs)
        self.location_ = self.covariance_estimator_.location_
        self.precision_ = self.covariance_estimator_.precision_
        self.shrinkage_ = float(self.covariance_estimator_.shrinkage_)

    def _score(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        return self.covariance_estimator_.mahalanobis(Xs)
