"""Contract and AUROC floor for MahalanobisDetector."""

from __future__ import annotations

import numpy as np

from kvstate.detect import MahalanobisDetector, get_detector

from .conftest import check_detector_contract


def test_contract_and_auroc_floor(planted):
    check_detector_contract(MahalanobisDetector(), planted)


def test_registered():
    assert isinstance(get_detector("mahalanobis"), MahalanobisDetector)
    assert MahalanobisDetector.supervised is False


def test_reexposes_ledoit_wolf(planted):
    det = MahalanobisDetector().fit(planted["X_train"])
    assert 0.0 <= det.shrinkage_ <= 1.0
    d = planted["X_train"].shape[1]
    assert det.precision_.shape == (d, d) and det.location_.shape == (d,)
    # the training mean, after standardisation, is the origin
    np.testing.assert_allclose(det.location_, 0.0, atol=1e-12)


def test_wide_data_is_finite():
    """n_features > n_samples: shrinkage keeps the precision invertible."""
    X = np.random.default_rng(1).normal(size=(30, 80))
    det = MahalanobisDetector().fit(X)
    assert np.all(np.isfinite(det.decision_function(X)))
