"""Multi-layer latent prototypes (MLPM): per-block LPM scores, combined with sparse non-negative weights.

X is ``n_blocks`` equal-width blocks side by side (one per layer). Each block gets its own LPM
(:func:`kvstate.detect.lpm.lpm_direction`). The block weights are fitted on the training data only,
on OUT-OF-FOLD block scores (:mod:`kvstate.detect._blocks`): a balanced logistic loss plus an L1
penalty, with the weights bounded at zero, minimised by ``scipy.optimize.minimize(method="L-BFGS-B")``;
the bound makes uninformative blocks' weights exactly 0. The final block LPMs are refitted on all
training items, so

score(x) = sum_b a_b * (lpm_b(x_b) - m_b) / s_b + a_0

with (m_b, s_b) the mean and sd of block b's out-of-fold scores: affine in x (``coef_``, ``intercept_``),
so the live monitor folds it.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval

from ._blocks import block_slices, compose_affine, oof_block_scores, oof_splits, refit_blocks, standardise_scores
from .base import BaseDetector
from .lpm import lpm_direction

__all__ = ["MLPMDetector", "nonneg_logistic"]


def _lpm_block(X: NDArray[np.float64], y: NDArray[np.int64]) -> tuple[NDArray[np.float64], float]:
    coef, intercept, _, _ = lpm_direction(X, y)
    return coef, intercept


def nonneg_logistic(Z: NDArray[np.float64], y: NDArray[np.int64], alpha: float) -> tuple[NDArray[np.float64], float]:
    """Weights a >= 0 and intercept a_0 minimising the class-balanced mean logistic loss of
    ``Z @ a + a_0`` plus ``alpha * sum(a)`` (L-BFGS-B with bounds; zeros are exact).

    Parameters
    ----------
    Z : ndarray of shape (n_samples, n_blocks)
        Standardised block scores.
    y : ndarray of shape (n_samples,), 0/1
    alpha : float
        L1 strength (on non-negative weights, the sum).

    Returns
    -------
    a : ndarray of shape (n_blocks,), a0 : float
    """
    counts = np.bincount(y, minlength=2).astype(float)
    sw = (len(y) / (2.0 * counts))[y] / len(y)

    def loss(theta: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
        f = Z @ theta[:-1] + theta[-1]
        val = float(sw @ (np.logaddexp(0.0, f) - y * f)) + alpha * float(theta[:-1].sum())
        r = sw * (0.5 * (1.0 + np.tanh(0.5 * f)) - y)  # sigmoid(f) - y, overflow-free
        return val, np.r_[Z.T @ r + alpha, r.sum()]

    B = Z.shape[1]
    res = minimize(loss, np.r_[np.full(B, 0.1), 0.0], jac=True, method="L-BFGS-B",
                   bounds=[(0.0, None)] * B + [(None, None)], options={"maxiter": 1000})
    return np.asarray(res.x[:-1], dtype=np.float64), float(res.x[-1])


class MLPMDetector(BaseDetector):
    """Supervised: per-block LPM scores, weighted by sparse non-negative weights from out-of-fold scores.

    Parameters
    ----------
    n_blocks : int, default=1
        Equal-width blocks X is made of (e.g. the layers stacked); must divide n_features.
    alpha : float, default=0.01
        L1 strength on the non-negative block weights (larger: fewer blocks).
    n_splits : int, default=5
        Folds for the out-of-fold block scores (clipped to the smaller class count / groups).
    random_state : int, default=0
        Seed of the fold shuffle.
    contamination : float, default=0.1
        Training positive fraction, sets ``threshold_`` only.

    ``fit(X, y, groups=None)``: with ``groups``, the folds keep each group whole.

    Fitted attributes
    -----------------
    block_coef_ : ndarray of shape (n_features,)
        Each block's LPM direction (fitted on all training items), side by side.
    block_intercept_ : ndarray of shape (n_blocks,)
    block_mean_, block_scale_ : ndarray of shape (n_blocks,)
        Mean and sd of the out-of-fold block scores.
    weights_ : ndarray of shape (n_blocks,)
        Non-negative weights on the standardised block scores (0 = block unused).
    coef_ : ndarray of shape (n_features,), intercept_ : float
        The whole score as one affine map of standardised x.
    """

    supervised: ClassVar[bool] = True
    name: ClassVar[str] = "mlpm"
    _components: ClassVar[dict[str, type] | None] = {"scaler_": StandardScaler}
    _fit_params: ClassVar[tuple[str, ...]] = ("groups",)
    _parameter_constraints: ClassVar[dict] = {
        **BaseDetector._parameter_constraints,
        "n_blocks": [Interval(Integral, 1, None, closed="left")],
        "alpha": [Interval(Real, 0.0, None, closed="left")],
        "n_splits": [Interval(Integral, 2, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, *, n_blocks: int = 1, alpha: float = 0.01, n_splits: int = 5, random_state: int | None = 0,
                 contamination: float = 0.1) -> None:
        self.n_blocks = n_blocks
        self.alpha = alpha
        self.n_splits = n_splits
        self.random_state = random_state
        self.contamination = contamination

    def _fit(self, Xs: NDArray[np.float64], y: NDArray[np.int64] | None, groups: ArrayLike | None = None) -> None:
        slices = block_slices(Xs.shape[1], self.n_blocks)
        Z = oof_block_scores(Xs, y, slices, oof_splits(y, groups, self.n_splits, self.random_state), _lpm_block)
        self.block_mean_, self.block_scale_ = standardise_scores(Z)
        self.weights_, a0 = nonneg_logistic((Z - self.block_mean_) / self.block_scale_, y, self.alpha)
        self.block_coef_, self.block_intercept_ = refit_blocks(Xs, y, slices, _lpm_block)
        self.coef_, self.intercept_ = compose_affine(self.block_coef_, self.block_intercept_, self.block_mean_,
                                                     self.block_scale_, self.weights_, a0, slices)

    def _score(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        return Xs @ self.coef_ + self.intercept_
