"""RepE reading vector: first principal direction of contrastive representations.

"diff": differences x_pos - x_neg of matched pairs (each positive with its nearest negative,
standing in for RepE's stimulus pairs that differ only in the concept), each with a random sign
(RepE's shuffled pair order), so the top singular vector is the contrast axis. "center": items minus
the midpoint of the class means. Both use an uncentred truncated SVD; the sign is then fixed
so positives score higher on the training data. score(x) = w^T (x - midpoint).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from numpy.typing import NDArray
from sklearn.decomposition import TruncatedSVD
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import StrOptions

from .base import BaseDetector

__all__ = ["RepEPCADetector"]


class RepEPCADetector(BaseDetector):
    """Supervised: RepE-style reading vector (first PC of paired differences or centred data).

    Parameters
    ----------
    method : {"diff", "center"}
        "diff": each positive paired with its nearest negative (euclidean, standardised),
        differenced with a seeded random sign; no explicit pair ids are needed. "center": subtract the class-mean midpoint.
    random_state : int
        Seed for pairing, sign flips and the randomised SVD.
    contamination : float
        Training positive fraction, sets ``threshold_`` only.

    Fitted attributes
    -----------------
    direction_ : unit reading vector, oriented so positives project higher.
    midpoint_ : average of the two class means (the projection origin).
    """

    supervised: ClassVar[bool] = True
    name: ClassVar[str] = "repe_pca"
    _components: ClassVar[dict[str, type] | None] = {"scaler_": StandardScaler}
    _parameter_constraints: ClassVar[dict] = {
        **BaseDetector._parameter_constraints,
        "method": [StrOptions({"diff", "center"})],
        "random_state": ["random_state"],
    }

    def __init__(self, *, method: Literal["diff", "center"] = "diff", random_state: int | None = 0,
                 contamination: float = 0.1) -> None:
        self.method = method
        self.random_state = random_state
        self.contamination = contamination

    def _fit(self, Xs: NDArray[np.float64], y: NDArray[np.int64] | None) -> None:
        rng = check_random_state(self.random_state)
        pos, neg = Xs[y == 1], Xs[y == 0]
        self.midpoint_ = (pos.mean(axis=0) + neg.mean(axis=0)) / 2.0
        if self.method == "diff":
            nearest = NearestNeighbors(n_neighbors=1).fit(neg).kneighbors(pos, return_distance=False)[:, 0]
            train = (pos - neg[nearest]) * rng.choice([-1.0, 1.0], size=(len(pos), 1))
        else:
            train = Xs - self.midpoint_
        w = _first_singular_vector(train, rng)
        proj = (Xs - self.midpoint_) @ w
        if proj[y == 1].mean() < proj[y == 0].mean():
            w = -w
        self.direction_ = w

    def _score(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        return (Xs - self.midpoint_) @ self.direction_


def _first_singular_vector(A: NDArray[np.float64], rng: np.random.RandomState) -> NDArray[np.float64]:
    """Top right singular vector of A (uncentred), unit norm."""
    if A.shape[1] == 1:
        return np.ones(1)
    if min(A.shape) <= 2:  # tiny: exact SVD is cheap and TruncatedSVD needs room
        w = np.linalg.svd(A, full_matrices=False)[2][0]
    else:
        with np.errstate(invalid="ignore", divide="ignore"):  # constant features: variance ratios 0/0, harmless
            w = TruncatedSVD(n_components=1, n_iter=7, random_state=rng).fit(A).components_[0]
    return w / np.linalg.norm(w)
