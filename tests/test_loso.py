"""Leave-one-source-out folds and the planted shift where it chooses unlike same-source CV."""

from __future__ import annotations

import numpy as np
import pytest

from kvstate.detect import get_detector
from kvstate.evaluate.loso import loso_auroc, same_source_auroc, source_folds


def test_folds_pair_single_class_sources_and_keep_mixed_ones_alone():
    src = np.array(["mix1"] * 4 + ["mix2"] * 4 + ["p1"] * 3 + ["p2"] * 3 + ["p3"] * 3 + ["n1"] * 3)
    y = np.r_[[0, 1, 0, 1], [0, 1, 1, 0], np.ones(9, int), np.zeros(3, int)]
    held = [sorted(set(src[f])) for f in source_folds(src, y)]
    assert held == [["mix1"], ["mix2"], ["n1", "p1"], ["n1", "p2"], ["n1", "p3"]]
    for f in source_folds(src, y):
        assert set(y[f]) == {0, 1}


def test_folds_refuse_too_few_sources_in_one_line():
    with pytest.raises(ValueError, match="at least 2 folds") as e:
        source_folds(np.array(["p"] * 3 + ["n"] * 3), np.r_[np.ones(3, int), np.zeros(3, int)])
    assert "\n" not in str(e.value)


def _planted(seed=0, n=120, d=40):
    """Three sources. Representation "spurious": each source's classes differ along a direction of
    its own (pooled CV sees every direction; a new source has an unseen one). "shared": a weaker
    difference along one direction common to all sources."""
    rng = np.random.default_rng(seed)
    shared_dir = np.eye(d)[0]
    X_sp, X_sh, y, src = [], [], [], []
    for k in range(3):
        own = np.eye(d)[1 + k]
        yk = np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]
        X_sp.append(rng.normal(size=(n, d)) + 4.0 * yk[:, None] * own)
        X_sh.append(rng.normal(size=(n, d)) + 1.2 * yk[:, None] * shared_dir)
        y.append(yk)
        src += [f"s{k}"] * n
    return np.vstack(X_sp), np.vstack(X_sh), np.concatenate(y), np.array(src)


def test_planted_shift_same_source_and_loso_choose_differently():
    X_sp, X_sh, y, src = _planted()
    groups = np.arange(y.size)
    det = get_detector("logistic")
    same = {name: same_source_auroc(X, y, groups, det, n_splits=4) for name, X in (("spurious", X_sp), ("shared", X_sh))}
    loso = {name: loso_auroc(X, y, src, det)["auroc"] for name, X in (("spurious", X_sp), ("shared", X_sh))}
    assert max(same, key=same.get) == "spurious"  # inside the sources, the source-specific directions win
    assert max(loso, key=loso.get) == "shared"  # on a held-out source, only the shared one transfers
    assert same["spurious"] - loso["spurious"] > 0.2  # the inflation shows
