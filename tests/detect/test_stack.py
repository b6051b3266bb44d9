"""StackDetector: contract, and the second stage never sees in-fold first-stage scores (leakage tests)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

import kvstate.detect.stack as stack_mod
from kvstate.detect import StackDetector, get_detector

from .conftest import check_detector_contract


def test_contract_and_auroc_floor(planted):
    check_detector_contract(StackDetector(n_blocks=2), planted)


def test_registered():
    assert isinstance(get_detector("stack", n_blocks=2), StackDetector)
    assert StackDetector.supervised is True


def _memorisable(seed: int, n: int = 60, width: int = 150):
    """Block A: a weak shift on every column (generalises); block B: pure noise. Both are wider
    than the number of items, so a weakly regularised first-stage probe separates its training
    items perfectly in either block."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    A = rng.normal(size=(2 * n, width)) + 0.25 * y[:, None]
    B = rng.normal(size=(2 * n, width))
    return np.hstack([A, B]), y


def _noise_weight_ratio(X, y) -> float:
    det = StackDetector(n_blocks=2, C=100.0).fit(X, y)
    return det.stack_coef_[1] / det.stack_coef_[0]


@pytest.mark.parametrize("seed", [0, 2])
def test_second_stage_ignores_a_memorising_block(seed, monkeypatch):
    X, y = _memorisable(seed)
    # out of fold, the memorising noise block scores at chance: the second stage leans on block A
    assert _noise_weight_ratio(X, y) < 0.25  # measured 0.02-0.14
    # the same fit on IN-fold scores (every fold trains on every item) trusts both blocks alike, so
    # this test fails for a stacker that leaks in-fold scores into its second stage
    monkeypatch.setattr(stack_mod, "oof_splits", lambda y, groups, k, seed: [(np.arange(len(y)), np.arange(len(y)))])
    assert _noise_weight_ratio(X, y) > 0.7  # measured 0.93-1.0


def test_no_scored_item_was_in_its_first_stage_training_set(monkeypatch):
    """Instrument the first stage: every out-of-fold fit leaves out a test part, the parts cover
    every item exactly once, and only the final refit (one per block) sees all items."""
    X, y = _memorisable(1, n=30, width=10)
    Xs = StandardScaler().fit_transform(X)  # what the first stage sees
    index = {Xs[i, :10].round(9).tobytes(): i for i in range(len(y))}  # block 0's rows -> item
    seen: list[np.ndarray] = []
    real = stack_mod._fit_block

    def spy(Xb, yb, **kw):
        keys = [r.round(9).tobytes() for r in Xb]
        if all(k in index for k in keys):  # a block-0 fit
            seen.append(np.sort([index[k] for k in keys]))
        return real(Xb, yb, **kw)

    monkeypatch.setattr(stack_mod, "_fit_block", spy)
    StackDetector(n_blocks=2, n_splits=3).fit(X, y)
    assert len(seen) == 3 + 1  # block 0: three out-of-fold fits, then the refit on all items
    *oof, final = seen
    n = len(y)
    np.testing.assert_array_equal(final, np.arange(n))
    left_out = np.concatenate([np.setdiff1d(np.arange(n), tr) for tr in oof])
    np.testing.assert_array_equal(np.sort(left_out), np.arange(n))


def test_grouped_folds_keep_groups_whole(monkeypatch):
    X, y = _memorisable(3, n=40, width=6)
    groups = np.arange(len(y)) // 4
    splits_seen = []
    real = stack_mod.oof_splits

    def spy(yy, g, k, seed):
        out = real(yy, g, k, seed)
        splits_seen.extend(out)
        return out

    monkeypatch.setattr(stack_mod, "oof_splits", spy)
    StackDetector(n_blocks=2).fit(X, y, groups=groups)
    for train, test in splits_seen:
        assert not set(groups[train]) & set(groups[test])
