"""Difference-of-means direction: the simplest linear probe (often as good as logistic).

w = mean(x | y=1) - mean(x | y=0) on standardised x, normalised; score(x) = w^T (x - m) with
m the midpoint of the two class means, so 0 is the decision boundary.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.preprocessing import StandardScaler

from .base import BaseDetector

__all__ = ["DiffMeanDetector"]


class DiffMeanDetector(BaseDetector):
    """Supervised: projection on the (unit) difference of class means.

    Parameters
    ----------
    contamination : float
        Training positive fraction, sets ``threshold_`` only.

    Fitted attributes
    -----------------
    direction_ : unit vector, positives minus negatives.
    midpoint_ : average of the two class means.
    """

    supervised: ClassVar[bool] = True
    name: ClassVar[str] = "diffmean"
    _components: ClassVar[dict[str, type] | None] = {"scaler_": StandardScaler}

    def __init__(self, *, contamination: float = 0.1) -> None:
        self.contamination = contamination

    def _fit(self, Xs: NDArray[np.float64], y: NDArray[np.int64] | None) -> None:
        mu1, mu0 = Xs[y == 1].mean(axis=0), Xs[y == 0].mean(axis=0)
        diff = mu1 - mu0
        norm = np.linalg.norm(diff)
        self.direction_ = diff / norm if norm > 0 else diff
        self.midpoint_ = (mu1 + mu0) / 2.0

    def _score(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        return (Xs - self.midpoint_) @ self.direction_
