"""k-nearest-neighbour (cosine) distance to the normal training items.

score(x) = mean (or k-th) cosine distance from standardised x to its k nearest training items.
No distribution assumption; works when normal data is multi-modal (several prompt templates).
"""

from __future__ import annotations

from numbers import Integral
from typing import ClassVar, Literal

import numpy as np
from numpy.typing import NDArray
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval, StrOptions

from .base import BaseDetector

__all__ = ["KNNDetector"]


class KNNDetector(BaseDetector):
    """Unsupervised: cosine distance to the k nearest normal training items.

    Parameters
    ----------
    n_neighbors : int
        k; clipped to ``n_train - 1``.
    metric : {"cosine", "euclidean"}
        Distance; cosine (default) ignores the overall norm, which in KV states mostly tracks length.
    method : {"mean", "largest"}
        Mean distance over the k neighbours, or the distance to the k-th (PyOD's "largest").
    contamination : float
        Training outlier fraction, sets ``threshold_`` only.

    Fitted attributes
    -----------------
    train_ : standardised training data (the neighbour index is rebuilt from it on load).
    neighbors_ : fitted ``NearestNeighbors(metric=self.metric, algorithm="brute")``.
    n_neighbors_ : effective k.
    """

    name: ClassVar[str] = "knn"
    _components: ClassVar[dict[str, type] | None] = {"scaler_": StandardScaler}
    _rebuilt_on_load: ClassVar[tuple[str, ...]] = ("neighbors_",)
    _parameter_constraints: ClassVar[dict] = {
        **BaseDetector._parameter_constraints,
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "metric": [StrOptions({"cosine", "euclidean"})],
        "method": [StrOptions({"mean", "largest"})],
    }

    def __init__(self, *, n_neighbors: int = 5, metric: Literal["cosine", "euclidean"] = "cosine",
                 method: Literal["mean", "largest"] = "mean", contamination: float = 0.1) -> None:
        self.n_neighbors = n_neighbors
        self.metric = metric
        self.method = method
        self.contamination = contamination

    def _fit(self, Xs: NDArray[np.float64], y: NDArray[np.int64] | None) -> None:
        self.train_ = Xs
        self.n_neighbors_ = int(min(self.n_neighbors, Xs.shape[0] - 1))
        self._after_load()

    def _after_load(self) -> None:
        self.neighbors_ = NearestNeighbors(metric=self.metric, algorithm="brute").fit(self.train_)

    def _aggregate(self, dist: NDArray[np.float64]) -> NDArray[np.float64]:
        return dist.mean(axis=1) if self.method == "mean" else dist[:, -1]

    def _score(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        dist, _ = self.neighbors_.kneighbors(Xs, n_neighbors=self.n_neighbors_)
        return self._aggregate(dist)

    def _training_scores(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        # each training item is its own nearest neighbour: ask for k+1 and drop it
        dist, _ = self.neighbors_.kneighbors(Xs, n_neighbors=self.n_neighbors_ + 1)
        return self._aggregate(dist[:, 1:])
