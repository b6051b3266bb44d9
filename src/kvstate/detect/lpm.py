"""Latent prototypes (LPM): class-conditional Gaussians with one shared Ledoit-Wolf covariance.

score(x) = log N(x; mu_1, Sigma) - log N(x; mu_0, Sigma)
         = (mu_1 - mu_0)^T P x - (mu_1^T P mu_1 - mu_0^T P mu_0) / 2,   P = Sigma^{-1},

the Mahalanobis log-likelihood ratio of the two class prototypes (arXiv 2502.16174), on
standardised x, with Sigma the Ledoit-Wolf estimate on class-centred data. It is affine in x, so
the live monitor folds it like a logistic probe (``coef_``, ``intercept_``). Reduce very wide
inputs first (``kvstate.reduce``): the covariance is n_features^2.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from sklearn.covariance import LedoitWolf
from sklearn.preprocessing import StandardScaler

from .base import BaseDetector

__all__ = ["LPMDetector", "lpm_direction"]


def lpm_direction(X: NDArray[np.float64], y: NDArray[np.int64]) -> tuple[NDArray[np.float64], float,
                                                                           NDArray[np.float64], float]:
    """The LPM log-likelihood ratio as an affine map.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,), 0/1 with both classes present

    Returns
    -------
    coef : ndarray of shape (n_features,)
        ``P (mu_1 - mu_0)``.
    intercept : float
        ``-(mu_1^T P mu_1 - mu_0^T P mu_0) / 2``; ``X @ coef + intercept`` is the log-likelihood ratio.
    means : ndarray of shape (2, n_features)
        The class prototypes mu_0, mu_1.
    shrinkage : float
        Ledoit-Wolf shrinkage of the shared covariance.
    """
    means = np.stack([X[y == 0].mean(axis=0), X[y == 1].mean(axis=0)])
    lw = LedoitWolf(assume_centered=True).fit(X - means[y])
    P = lw.precision_
    coef = P @ (means[1] - means[0])
    intercept = -0.5 * float(means[1] @ P @ means[1] - means[0] @ P @ means[0])
    return coef, intercept, means, float(lw.shrinkage_)


class LPMDetector(BaseDetector):
    """Supervised: latent-prototype log-likelihood ratio under a shared Ledoit-Wolf covariance.

    Parameters
    ----------
    contamination : float, default=0.1
        Training positive fraction, sets ``threshold_`` only.

    Fitted attributes
    -----------------
    means_ : ndarray of shape (2, n_features)
        Class prototypes (negatives, positives) on standardised x.
    coef_ : ndarray of shape (n_features,)
        ``score = x_std @ coef_ + intercept_``.
    intercept_ : float
    shrinkage_ : float
        Ledoit-Wolf shrinkage of the shared covariance.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(200, 3)), np.r_[np.zeros(100, int), np.ones(100, int)]
    >>> X[y == 1, 0] += 3.0
    >>> det = LPMDetector().fit(X, y)
    >>> bool(det.decision_function([[3.0, 0.0, 0.0]])[0] > det.decision_function([[0.0, 0.0, 0.0]])[0])
    True
    """

    supervised: ClassVar[bool] = True
    name: ClassVar[str] = "lpm"
    _components: ClassVar[dict[str, type] | None] = {"scaler_": StandardScaler}

    def __init__(self, *, contamination: float = 0.1) -> None:
        self.contamination = contamination

    def _fit(self, Xs: NDArray[np.float64], y: NDArray[np.int64] | None) -> None:
        self.coef_, self.intercept_, self.means_, self.shrinkage_ = lpm_direction(Xs, y)

    def _score(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        return Xs @ self.coef_ + self.intercept_
