"""Contract and AUROC floor for RepEPCADetector."""

from __future__ import annotations

import numpy as np
import pytest

from kvstate.detect import RepEPCADetector, get_detector

from .conftest import check_detector_contract


def test_contract_and_auroc_floor(planted):
    check_detector_contract(RepEPCADetector(), planted)


def test_registered():
    assert isinstance(get_detector("repe_pca"), RepEPCADetector)
    assert RepEPCADetector.supervised is True


@pytest.mark.parametrize("method", ["diff", "center"])
def test_methods_orient_positive_up(planted, method):
    det = RepEPCADetector(method=method).fit(planted["X_sup"], planted["y_sup"])
    s = det.decision_scores_
    assert s[planted["y_sup"] == 1].mean() > s[planted["y_sup"] == 0].mean()
    assert np.isclose(np.linalg.norm(det.direction_), 1.0)


def test_sign_fixed_even_if_labels_flipped(planted):
    """Flipping labels flips the direction, so positives still score higher."""
    y = 1 - planted["y_sup"]
    det = RepEPCADetector().fit(planted["X_sup"], y)
    assert det.decision_scores_[y == 1].mean() > det.decision_scores_[y == 0].mean()
