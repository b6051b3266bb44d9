"""Contract and AUROC floor for LogisticDetector."""

from __future__ import annotations

import numpy as np
import pytest

from kvstate.detect import LogisticDetector, get_detector

from .conftest import check_detector_contract


def test_contract_and_auroc_floor(planted):
    check_detector_contract(LogisticDetector(), planted)


def test_registered():
    assert isinstance(get_detector("logistic"), LogisticDetector)
    assert LogisticDetector.supervised is True


def test_needs_y(planted):
    with pytest.raises(ValueError, match="requires y"):
        LogisticDetector().fit(planted["X_sup"])


def test_larger_label_is_positive(planted):
    y_str = np.where(planted["y_sup"] == 1, "jailbreak", "benign")  # "jailbreak" > "benign"
    a = LogisticDetector().fit(planted["X_sup"], y_str).decision_function(planted["X_test"])
    b = LogisticDetector().fit(planted["X_sup"], planted["y_sup"]).decision_function(planted["X_test"])
    np.testing.assert_allclose(a, b)
