"""Logistic-regression probe: the standard supervised upper bound for a representation.

score(x) = w^T x_std + b (the logit), higher = more positive.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval, StrOptions

from .base import BaseDetector

__all__ = ["LogisticDetector"]


class LogisticDetector(BaseDetector):
    """Supervised: L2 ``LogisticRegression`` on standardised features (seeded).

    Parameters
    ----------
    C : float
        Inverse L2 strength; small by default because n_features often exceeds n_samples.
    class_weight : "balanced" or None
        "balanced" keeps the probe from collapsing on imbalanced labels.
    max_iter : int
        lbfgs iterations.
    random_state : int
        Seed (only matters for solvers that shuffle; kept for reproducibility).
    contamination : float
        Training positive fraction, sets ``threshold_`` only.

    Fitted attributes
    -----------------
    clf_ : fitted LogisticRegression; ``coef_``/``intercept_`` re-exposed.
    """

    supervised: ClassVar[bool] = True
    name: ClassVar[str] = "logistic"
    _components: ClassVar[dict[str, type] | None] = {"scaler_": StandardScaler, "clf_": LogisticRegression}
    _parameter_constraints: ClassVar[dict] = {
        **BaseDetector._parameter_constraints,
        "C": [Interval(Real, 0.0, None, closed="neither")],
        "class_weight": [None, StrOptions({"balanced"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, *, C: float = 0.1, class_weight: str | None = "balanced",  # noqa: N803
                 max_iter: int = 1000, random_state: int | None = 0,
                 contamination: float = 0.1) -> None:
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state
        self.contamination = contamination

    def _fit(self, Xs: NDArray[np.float64], y: NDArray[np.int64] | None) -> None:
        self.clf_ = LogisticRegression(C=self.C, class_weight=self.class_weight, max_iter=self.max_iter,
                                       random_state=self.random_state).fit(Xs, y)
        self.coef_ = self.clf_.coef_
        self.intercept_ = self.clf_.intercept_

    def _score(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        return self.clf_.decision_function(Xs)
