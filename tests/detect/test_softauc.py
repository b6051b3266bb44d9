"""SoftAUCDetector: contract, robustness to planted outliers (vs the logistic probe), determinism."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kvstate.detect import LogisticDetector, SoftAUCDetector, get_detector

from .conftest import check_detector_contract


def test_contract_and_auroc_floor(planted):
    check_detector_contract(SoftAUCDetector(), planted)


def test_registered():
    assert isinstance(get_detector("softauc"), SoftAUCDetector)
    assert SoftAUCDetector.supervised is True


def _with_outliers(seed: int, n: int = 200, d: int = 10, n_out: int = 10):
    """Two classes apart along feature 0, plus positives mislabelled deep on the negative side that a
    tilt towards feature 1 (pure noise for everyone else) would "fix"; a clean test set."""
    rng = np.random.default_rng(seed)

    def draw(m: int, c: int) -> np.ndarray:
        X = rng.normal(size=(m, d))
        X[:, 0] += 1.5 * c
        return X

    out = rng.normal(size=(n_out, d))
    out[:, 0] -= 8.0
    out[:, 1] += 8.0
    X = np.vstack([draw(n, 0), draw(n, 1), out])
    y = np.r_[np.zeros(n, int), np.ones(n + n_out, int)]
    Xt = np.vstack([draw(1000, 0), draw(1000, 1)])
    yt = np.r_[np.zeros(1000, int), np.ones(1000, int)]
    return X, y, Xt, yt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beats_logistic_with_planted_outliers(seed):
    X, y, Xt, yt = _with_outliers(seed)
    soft = roc_auc_score(yt, SoftAUCDetector().fit(X, y).decision_function(Xt))
    logit = roc_auc_score(yt, LogisticDetector().fit(X, y).decision_function(Xt))
    assert soft >= logit + 0.03, (soft, logit)  # measured: 0.84-0.85 vs 0.74-0.78


def test_seeded_subsample_is_deterministic(planted):
    a = SoftAUCDetector(max_per_class=30, random_state=3).fit(planted["X_sup"], planted["y_sup"])
    b = SoftAUCDetector(max_per_class=30, random_state=3).fit(planted["X_sup"], planted["y_sup"])
    np.testing.assert_array_equal(a.coef_, b.coef_)
    X = planted["X_test"]
    np.testing.assert_allclose(a.decision_function(X), a.scaler_.transform(X) @ a.coef_ + a.intercept_)
