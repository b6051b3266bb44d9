"""Soft-AUC direction: a linear score trained on a smooth surrogate of the AUROC.

On standardised x, w minimises

    L(w) = mean_{i in pos, j in neg} sigmoid(-(w . (x_i - x_j))) + alpha / 2 * |w|^2,

one minus the sigmoid-smoothed AUROC plus an L2 penalty. The pairwise loss is bounded, so a few
far-away or mislabelled items cannot pull the direction the way they pull a logistic probe's
(whose loss grows without bound). Minimised by ``scipy.optimize.minimize(method="L-BFGS-B")`` with
the analytic gradient, from the difference-of-means and the logistic directions (the lower minimum
is kept); deterministic given ``random_state`` (which only picks the items when a class is larger
than ``max_per_class``). The score
``w . x_std + b``, with b putting 0 midway between the class means' scores, is affine, so the live
monitor folds it.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval

from .base import BaseDetector

__all__ = ["SoftAUCDetector", "soft_auc_direction"]


def _sigmoid(t: NDArray[np.float64]) -> NDArray[np.float64]:
    return 0.5 * (1.0 + np.tanh(0.5 * t))


def soft_auc_direction(X_pos: NDArray[np.float64], X_neg: NDArray[np.float64], alpha: float, *,
                       w0: NDArray[np.float64] | None = None, max_iter: int = 500) -> NDArray[np.float64]:
    """The w minimising the sigmoid pairwise loss plus ``alpha / 2 * |w|^2``.

    Parameters
    ----------
    X_pos : ndarray of shape (n_pos, n_features)
    X_neg : ndarray of shape (n_neg, n_features)
    alpha : float
        L2 strength (> 0 keeps |w| finite: the pairwise loss alone is scale-free once separable).
    w0 : ndarray of shape (n_features,), optional
        Start; default: two starts, the difference of the class means and an L2 logistic probe's
        direction, keeping the lower minimum (the loss is not convex).
    max_iter : int, default=500
        L-BFGS-B iterations.

    Returns
    -------
    w : ndarray of shape (n_features,)
    """
    n_pairs = X_pos.shape[0] * X_neg.shape[0]

    def loss(w: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        D = (X_pos @ w)[:, None] - (X_neg @ w)[None, :]  # (n_pos, n_neg) pairwise margins
        s = _sigmoid(-D)
        G = s * (1.0 - s) / n_pairs  # -d loss / d D
        grad = -(G.sum(axis=1) @ X_pos - G.sum(axis=0) @ X_neg) + alpha * w
        return float(s.sum() / n_pairs + 0.5 * alpha * w @ w), grad

    if w0 is None:  # the loss is not convex: start from both linear baselines, keep the lower minimum
        X = np.vstack([X_pos, X_neg])
        y = np.r_[np.ones(len(X_pos), int), np.zeros(len(X_neg), int)]
        starts = [X_pos.mean(axis=0) - X_neg.mean(axis=0),
                  LogisticRegression(C=1.0 / (alpha * len(X)), max_iter=max_iter).fit(X, y).coef_[0]]
    else:
        starts = [w0]
    fits = [minimize(loss, np.asarray(w, dtype=np.float64), jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
            for w in starts]
    return np.asarray(min(fits, key=lambda r: r.fun).x, dtype=np.float64)


class SoftAUCDetector(BaseDetector):
    """Supervised: a direction trained on the sigmoid-smoothed pairwise AUROC with an L2 penalty.

    Parameters
    ----------
    alpha : float, default=0.01
        L2 strength on w (standardised features).
    max_per_class : int, default=1000
        Items per class in the pairwise loss (a seeded subsample above it; the loss costs
        n_pos * n_neg per step).
    max_iter : int, default=500
        L-BFGS-B iterations.
    random_state : int, default=0
        Seed of the subsample.
    contamination : float, default=0.1
        Training positive fraction, sets ``threshold_`` only.

    Fitted attributes
    -----------------
    coef_ : ndarray of shape (n_features,)
        w on standardised x; ``score = x_std @ coef_ + intercept_``.
    intercept_ : float
        Puts 0 midway between the two class means' scores.
    """

    supervised: ClassVar[bool] = True
    name: ClassVar[str] = "softauc"
    _components: ClassVar[dict[str, type] | None] = {"scaler_": StandardScaler}
    _parameter_constraints: ClassVar[dict] = {
        **BaseDetector._parameter_constraints,
        "alpha": [Interval(Real, 0.0, None, closed="neither")],
        "max_per_class": [Interval(Integral, 2, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, *, alpha: float = 0.01, max_per_class: int = 1000, max_iter: int = 500,
                 random_state: int | None = 0, contamination: float = 0.1) -> None:
        self.alpha = alpha
        self.max_per_class = max_per_class
        self.max_iter = max_iter
        self.random_state = random_state
        self.contamination = contamination

    def _fit(self, Xs: NDArray[np.float64], y: NDArray[np.int64] | None) -> None:
        rng = check_random_state(self.random_state)
        parts = []
        for c in (1, 0):
            idx = np.flatnonzero(y == c)
            if idx.size > self.max_per_class:
                idx = np.sort(rng.choice(idx, self.max_per_class, replace=False))
            parts.append(Xs[idx])
        self.coef_ = soft_auc_direction(parts[0], parts[1], self.alpha, max_iter=self.max_iter)
        mid = 0.5 * (Xs[y == 1].mean(axis=0) + Xs[y == 0].mean(axis=0))
        self.intercept_ = -float(mid @ self.coef_)

    def _score(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        return Xs @ self.coef_ + self.intercept_
