"""Local Outlier Factor (novelty mode): density relative to the neighbours' density.

score(x) = -LocalOutlierFactor.score_samples(x) = LOF(x); training scores use
``-negative_outlier_factor_`` because sklearn forbids scoring the training set in novelty mode.
"""

from __future__ import annotations

from numbers import Integral
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.neighbors import LocalOutlierFactor
from sklearn.utils._param_validation import Interval, StrOptions

from .base import BaseDetector

__all__ = ["LOFDetector"]


class LOFDetector(BaseDetector):
    """Unsupervised adapter over ``sklearn.neighbors.LocalOutlierFactor(novelty=True)``.

    Parameters
    ----------
    n_neighbors : int
        Neighbourhood size; clipped to ``n_train - 1``.
    metric : str
        Any sklearn neighbours metric ("cosine" matches :class:`KNNDetector`).
    contamination : float
        Training outlier fraction, sets ``threshold_`` only.

    Fitted attributes
    -----------------
    detector_ : fitted LocalOutlierFactor.
    """

    name: ClassVar[str] = "lof"
    _parameter_constraints: ClassVar[dict] = {
        **BaseDetector._parameter_constraints,
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "metric": [StrOptions({"cosine", "euclidean", "manhattan", "minkowski"})],
    }

    def __init__(self, *, n_neighbors: int = 20, metric: str = "euclidean",
                 contamination: float = 0.1) -> None:
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.contamination = contamination

    def _fit(self, Xs: NDArray[np.float64], y: NDArray[np.int64] | None) -> None:
        k = int(min(self.n_neighbors, Xs.shape[0] - 1))
        self.detector_ = LocalOutlierFactor(n_neighbors=k, metric=self.metric, novelty=True).fit(Xs)

    def _score(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        return -self.detector_.score_samples(Xs)

    def _training_scores(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        return -self.detector_.negative_outlier_factor_
