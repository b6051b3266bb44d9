"""Contract and AUROC floor for IForestDetector."""

from __future__ import annotations

import numpy as np

from kvstate.detect import IForestDetector, get_detector

from .conftest import check_detector_contract


def test_contract_and_auroc_floor(planted):
    check_detector_contract(IForestDetector(), planted)


def test_registered():
    assert isinstance(get_detector("iforest"), IForestDetector)
    assert IForestDetector.supervised is False


def test_seed_changes_scores(planted):
    a = IForestDetector(random_state=0).fit(planted["X_train"]).decision_function(planted["X_test"])
    b = IForestDetector(random_state=1).fit(planted["X_train"]).decision_function(planted["X_test"])
    assert not np.allclose(a, b)
