"""Contract and AUROC floor for PCADetector."""

from __future__ import annotations

import numpy as np
import pytest

from kvstate.detect import PCADetector, get_detector

from .conftest import check_detector_contract


def test_contract_and_auroc_floor(planted):
    check_detector_contract(PCADetector(), planted)


def test_registered():
    assert isinstance(get_detector("pca"), PCADetector)
    assert PCADetector.supervised is False


@pytest.mark.parametrize("n_components", [0.5, 0.9, 2, 10_000])
def test_n_components_fraction_or_int(planted, n_components):
    det = PCADetector(n_components=n_components).fit(planted["X_train"])
    n, d = planted["X_train"].shape
    assert 1 <= det.n_components_ <= min(n, d) - 1
    assert np.all(det.decision_function(planted["X_test"]) >= 0)


def test_zero_error_inside_subspace(planted):
    det = PCADetector(n_components=3).fit(planted["X_train"])
    inside = det.pca_.inverse_transform(det.pca_.transform(det.scaler_.transform(planted["X_test"])))
    np.testing.assert_allclose(det.decision_function(det.scaler_.inverse_transform(inside)), 0.0, atol=1e-9)
