"""Multi-layer score stacking: per-block logistic probes, combined by a second-stage logistic model.

X is ``n_blocks`` equal-width blocks side by side (one per layer). Stage 1 is an L2 logistic probe
per block. Stage 2 is a logistic regression on the standardised block scores, fitted on the blocks'
OUT-OF-FOLD scores (:mod:`kvstate.detect._blocks`; grouped folds when ``fit`` gets ``groups``): a
first-stage model that has memorised its training items gives them confident scores, and a second
stage fitted on those would trust that block for it. The stage-1 probes are then refitted on all
training items. Both stages are affine, so the score composes into one affine map

score(x) = sum_b a_b * (w_b . x_b + c_b - m_b) / s_b + a_0

(``coef_``, ``intercept_``), which the live monitor folds.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import Interval, StrOptions

from ._blocks import block_slices, compose_affine, oof_block_scores, oof_splits, refit_blocks, standardise_scores
from .base import BaseDetector

__all__ = ["StackDetector"]


def _fit_block(X: NDArray[np.float64], y: NDArray[np.int64], *, C: float, class_weight: str | None,  # noqa: N803
               max_iter: int, random_state: int | None) -> tuple[NDArray[np.float64], float]:
    """One first-stage probe: (coef (w,), intercept) of an L2 ``LogisticRegression``."""
    clf = LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter, random_state=random_state).fit(X, y)
    return clf.coef_[0].astype(np.float64), float(clf.intercept_[0])


class StackDetector(BaseDetector):
    """Supervised: per-block logistic probes stacked by a logistic model fitted on out-of-fold scores.

    Parameters
    ----------
    n_blocks : int, default=1
        Equal-width blocks X is made of (e.g. the layers stacked); must divide n_features.
    C : float, default=0.1
        Inverse L2 strength of each first-stage probe (as :class:`LogisticDetector`).
    final_C : float, default=1.0
        Inverse L2 strength of the second stage (on standardised block scores).
    class_weight : "balanced" or None, default="balanced"
        Both stages.
    n_splits : int, default=5
        Folds for the out-of-fold scores (clipped to the smaller class count / groups).
    max_iter : int, default=1000
        lbfgs iterations, both stages.
    random_state : int, default=0
        Seed of the fold shuffle and the solvers.
    contamination : float, default=0.1
        Training positive fraction, sets ``threshold_`` only.

    ``fit(X, y, groups=None)``: with ``groups``, the folds keep each group whole.

    Fitted attributes
    -----------------
    block_coef_ : ndarray of shape (n_features,)
        The first-stage probes (fitted on all training items), side by side.
    block_intercept_ : ndarray of shape (n_blocks,)
    block_mean_, block_scale_ : ndarray of shape (n_blocks,)
        Mean and sd of the out-of-fold block scores (the second stage's standardisation).
    stack_coef_ : ndarray of shape (n_blocks,), stack_intercept_ : float
        The second stage on standardised block scores.
    coef_ : ndarray of shape (n_features,), intercept_ : float
        The whole score as one affine map of standardised x.
    """

    supervised: ClassVar[bool] = True
    name: ClassVar[str] = "stack"
    _components: ClassVar[dict[str, type] | None] = {"scaler_": StandardScaler}
    _fit_params: ClassVar[tuple[str, ...]] = ("groups",)
    _parameter_constraints: ClassVar[dict] = {
        **BaseDetector._parameter_constraints,
        "n_blocks": [Interval(Integral, 1, None, closed="left")],
        "C": [Interval(Real, 0.0, None, closed="neither")],
        "final_C": [Interval(Real, 0.0, None, closed="neither")],
        "class_weight": [None, StrOptions({"balanced"})],
        "n_splits": [Interval(Integral, 2, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, *, n_blocks: int = 1, C: float = 0.1, final_C: float = 1.0,  # noqa: N803
                 class_weight: str | None = "balanced", n_splits: int = 5, max_iter: int = 1000,
                 random_state: int | None = 0, contamination: float = 0.1) -> None:
        self.n_blocks = n_blocks
        self.C = C
        self.final_C = final_C
        self.class_weight = class_weight
        self.n_splits = n_splits
        self.max_iter = max_iter
        self.random_state = random_state
        self.contamination = contamination

    def _first_stage(self, X: NDArray[np.float64], y: NDArray[np.int64]) -> tuple[NDArray[np.float64], float]:
        return _fit_block(X, y, C=self.C, class_weight=self.class_weight, max_iter=self.max_iter,
                          random_state=self.random_state)

    def _fit(self, Xs: NDArray[np.float64], y: NDArray[np.int64] | None, groups: ArrayLike | None = None) -> None:
        slices = block_slices(Xs.shape[1], self.n_blocks)
        Z = oof_block_scores(Xs, y, slices, oof_splits(y, groups, self.n_splits, self.random_state), self._first_stage)
        self.block_mean_, self.block_scale_ = standardise_scores(Z)
        final = LogisticRegression(C=self.final_C, class_weight=self.class_weight, max_iter=self.max_iter,
                                   random_state=self.random_state).fit((Z - self.block_mean_) / self.block_scale_, y)
        self.stack_coef_ = final.coef_[0].astype(np.float64)
        self.stack_intercept_ = float(final.intercept_[0])
        self.block_coef_, self.block_intercept_ = refit_blocks(Xs, y, slices, self._first_stage)
        self.coef_, self.intercept_ = compose_affine(self.block_coef_, self.block_intercept_, self.block_mean_,
                                                     self.block_scale_, self.stack_coef_, self.stack_intercept_, slices)

    def _score(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        return Xs @ self.coef_ + self.intercept_
