"""Isolation Forest: anomalies are isolated by fewer random axis-aligned splits.

score(x) = -IsolationForest.score_samples(x) (sklearn's "bigger = more normal" flipped).
"""

from __future__ import annotations

from numbers import Integral
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.ensemble import IsolationForest
from sklearn.utils._param_validation import Interval

from .base import BaseDetector

__all__ = ["IForestDetector"]


class IForestDetector(BaseDetector):
    """Unsupervised adapter over ``sklearn.ensemble.IsolationForest`` (seeded).

    Parameters
    ----------
    n_estimators : int
        Number of trees.
    random_state : int
        Seed; the forest is random, so it is always seeded.
    contamination : float
        Training outlier fraction, sets ``threshold_`` only.

    Fitted attributes
    -----------------
    detector_ : fitted IsolationForest.
    """

    name: ClassVar[str] = "iforest"
    _parameter_constraints: ClassVar[dict] = {
        **BaseDetector._parameter_constraints,
        "n_estimators": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, *, n_estimators: int = 200, random_state: int | None = 0,
                 contamination: float = 0.1) -> None:
        self.n_estimators = n_estimators
        self.random_state = random_state
        self.contamination = contamination

    def _fit(self, Xs: NDArray[np.float64], y: NDArray[np.int64] | None) -> None:
        self.detector_ = IsolationForest(n_estimators=self.n_estimators,
                                         random_state=self.random_state).fit(Xs)

    def _score(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        return -self.detector_.score_samples(Xs)
