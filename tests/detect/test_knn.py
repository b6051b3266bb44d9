"""Contract and AUROC floor for KNNDetector."""

from __future__ import annotations

import numpy as np
import pytest

from kvstate.detect import KNNDetector, get_detector

from .conftest import check_detector_contract


def test_contract_and_auroc_floor(planted):
    check_detector_contract(KNNDetector(), planted)


def test_registered():
    assert isinstance(get_detector("knn"), KNNDetector)
    assert KNNDetector.supervised is False


@pytest.mark.parametrize("method", ["mean", "largest"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_variants(planted, method, metric):
    check_detector_contract(KNNDetector(method=method, metric=metric), planted)


def test_training_scores_exclude_self(planted):
    det = KNNDetector(n_neighbors=1).fit(planted["X_train"])
    assert np.all(det.decision_scores_ > 0)  # a self-match would give distance 0


def test_k_clipped_to_training_size():
    X = np.random.default_rng(0).normal(size=(4, 3))
    det = KNNDetector(n_neighbors=50).fit(X)
    assert det.n_neighbors_ == 3 and det.decision_function(X).shape == (4,)
