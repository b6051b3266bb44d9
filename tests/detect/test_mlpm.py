"""MLPMDetector: contract, sparse non-negative block weights on the informative blocks only, groups."""

from __future__ import annotations

import numpy as np
import pytest

from kvstate.detect import MLPMDetector, get_detector

from ._multiblock import make_blocks
from .conftest import check_detector_contract


def test_contract_and_auroc_floor(planted):
    check_detector_contract(MLPMDetector(n_blocks=2), planted)


def test_registered():
    assert isinstance(get_detector("mlpm", n_blocks=3), MLPMDetector)
    assert MLPMDetector.supervised is True


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_weight_on_informative_blocks_zero_on_noise(seed):
    X, y = make_blocks(seed, informative=(0, 2), n_blocks=4)
    det = MLPMDetector(n_blocks=4).fit(X, y)
    assert (det.weights_ >= 0).all()
    assert det.weights_[1] == 0.0 and det.weights_[3] == 0.0, det.weights_
    assert det.weights_[0] > 0.1 and det.weights_[2] > 0.1, det.weights_
    # a zero-weight block does not enter the score at all
    w = X.shape[1] // 4
    np.testing.assert_array_equal(det.coef_[w:2 * w], 0.0)
    Xs = det.scaler_.transform(X)
    np.testing.assert_allclose(det.decision_function(X), Xs @ det.coef_ + det.intercept_)


def test_groups_are_used_and_checked():
    X, y = make_blocks(0, n=60)
    groups = np.arange(len(y)) // 4  # groups of 4 items, one class each
    det = MLPMDetector(n_blocks=4).fit(X, y, groups=groups)
    assert np.isfinite(det.coef_).all()
    with pytest.raises(ValueError, match="one group per row"):
        MLPMDetector(n_blocks=4).fit(X, y, groups=groups[:-1])
    with pytest.raises(TypeError, match="takes groups"):
        MLPMDetector(n_blocks=4).fit(X, y, sample_weight=np.ones(len(y)))


def test_width_must_split_into_blocks():
    X, y = make_blocks(0, n=20, width=5, n_blocks=3)
    with pytest.raises(ValueError, match="n_blocks=4 equal blocks"):
        MLPMDetector(n_blocks=4).fit(X, y)
