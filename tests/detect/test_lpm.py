"""LPMDetector: contract, the Bayes log-odds on Gaussians with a known shared covariance, affine form."""

from __future__ import annotations

import numpy as np

from kvstate.detect import DiffMeanDetector, LPMDetector, get_detector
from kvstate.monitor.fold import affine_form

from .conftest import check_detector_contract


def test_contract_and_auroc_floor(planted):
    check_detector_contract(LPMDetector(), planted)


def test_registered():
    assert isinstance(get_detector("lpm"), LPMDetector)
    assert LPMDetector.supervised is True


def _gaussians(seed: int, n0: int, n1: int, d: int = 5):
    """Two Gaussians with one known, strongly anisotropic shared covariance, and their exact Bayes log-odds."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d))
    cov = A @ A.T + 0.1 * np.eye(d)
    mu0, mu1 = rng.normal(size=d), rng.normal(size=d)
    L = np.linalg.cholesky(cov)
    X = np.vstack([mu0 + rng.normal(size=(n0, d)) @ L.T, mu1 + rng.normal(size=(n1, d)) @ L.T])
    y = np.r_[np.zeros(n0, int), np.ones(n1, int)]
    P = np.linalg.inv(cov)
    def log_odds(Z):  # log p(1|x) - log p(0|x) with the class priors of the sample
        return Z @ P @ (mu1 - mu0) - 0.5 * (mu1 @ P @ mu1 - mu0 @ P @ mu0) + np.log(n1 / n0)
    return X, y, log_odds


def test_equals_bayes_log_odds_up_to_a_constant():
    X, y, log_odds = _gaussians(0, 30_000, 10_000)
    Xt, _, _ = _gaussians(0, 500, 500)  # same distributions (same seed draws the same parameters)
    truth = log_odds(Xt)
    got = LPMDetector().fit(X, y).decision_function(Xt)
    diff = got - truth
    # a constant offset, nothing else: slope 1 and a residual far below the spread of the log-odds
    slope = np.polyfit(truth, got, 1)[0]
    assert abs(slope - 1.0) < 0.02, slope
    assert diff.std() < 0.02 * truth.std(), (diff.std(), truth.std())
    # the constant is the prior log-odds the likelihood ratio leaves out
    np.testing.assert_allclose(diff.mean(), np.log(3.0), atol=0.05)  # truth includes log(1/3)
    # the check has teeth: the difference of means ignores the covariance and is off the Bayes direction
    dm = DiffMeanDetector().fit(X, y).decision_function(Xt)
    assert np.corrcoef(dm, truth)[0, 1] < 0.95


def test_affine_form_matches_coef(planted):
    det = LPMDetector().fit(planted["X_sup"], planted["y_sup"])
    X = planted["X_test"]
    np.testing.assert_allclose(det.decision_function(X), det.scaler_.transform(X) @ det.coef_ + det.intercept_)
    w, c = affine_form(det.decision_function, X.shape[1])
    np.testing.assert_allclose(X @ w + c, det.decision_function(X), rtol=1e-4, atol=1e-4)
    assert det.means_.shape == (2, X.shape[1]) and 0.0 <= det.shrinkage_ <= 1.0
