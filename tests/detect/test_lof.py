"""Contract and AUROC floor for LOFDetector."""

from __future__ import annotations

import numpy as np

from kvstate.detect import LOFDetector, get_detector

from .conftest import check_detector_contract


def test_contract_and_auroc_floor(planted):
    check_detector_contract(LOFDetector(), planted)


def test_registered():
    assert isinstance(get_detector("lof"), LOFDetector)
    assert LOFDetector.supervised is False


def test_cosine_metric(planted):
    check_detector_contract(LOFDetector(metric="cosine"), planted)


def test_training_scores_are_lof(planted):
    det = LOFDetector().fit(planted["X_train"])
    np.testing.assert_array_equal(det.decision_scores_, -det.detector_.negative_outlier_factor_)
