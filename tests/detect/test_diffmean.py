"""Contract and AUROC floor for DiffMeanDetector."""

from __future__ import annotations

import numpy as np

from kvstate.detect import DiffMeanDetector, get_detector

from .conftest import check_detector_contract


def test_contract_and_auroc_floor(planted):
    check_detector_contract(DiffMeanDetector(), planted)


def test_registered():
    assert isinstance(get_detector("diffmean"), DiffMeanDetector)
    assert DiffMeanDetector.supervised is True


def test_direction_is_unit_and_boundary_at_midpoint(planted):
    det = DiffMeanDetector().fit(planted["X_sup"], planted["y_sup"])
    assert np.isclose(np.linalg.norm(det.direction_), 1.0)
    mid = det.scaler_.inverse_transform(det.midpoint_[None])
    np.testing.assert_allclose(det.decision_function(mid), 0.0, atol=1e-9)
