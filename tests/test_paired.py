"""Paired ΔAUROC: DeLong against an O(n^2) reference and the paired bootstrap; verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from kvstate.evaluate.paired import delong, f1_at, min_detectable_difference, paired_auroc, paired_bootstrap, verdict


def _data(n=400, seed=0, rho=0.6):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.45).astype(int)
    shared = rng.normal(size=n)
    a = 1.0 * y + shared + rng.normal(scale=0.8, size=n)
    b = 0.7 * y + rho * shared + rng.normal(scale=0.9, size=n)
    return y, a, b


def _delong_quadratic(y, a, b):
    """DeLong's variance from the definition: psi(x, y) = 1 if x > y, 1/2 if equal, per pair."""
    def comps(s):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(1), psi.mean(0)
    (xa, ya), (xb, yb) = comps(a), comps(b)
    m, n = xa.size, ya.size
    var = (np.var(xa, ddof=1) + np.var(xb, ddof=1) - 2 * np.cov(xa, xb)[0, 1]) / m \
        + (np.var(ya, ddof=1) + np.var(yb, ddof=1) - 2 * np.cov(ya, yb)[0, 1]) / n
    return xa.mean() - xb.mean(), np.sqrt(var)


def test_delong_matches_the_quadratic_definition_with_ties():
    y, a, b = _data(300, seed=1)
    a = np.round(a, 1)  # ties inside and across classes
    d = delong(y, a, b)
    ref_delta, ref_se = _delong_quadratic(y, a, b)
    assert d["auroc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert d["delta"] == pytest.approx(ref_delta, abs=1e-12)
    assert d["se"] == pytest.approx(ref_se, rel=1e-9)


def test_delong_se_agrees_with_the_paired_bootstrap():
    y, a, b = _data(600, seed=2)
    d = delong(y, a, b)
    lo, hi, sd = paired_bootstrap(y, a, b, n_boot=2000, seed=0)
    assert sd == pytest.approx(d["se"], rel=0.12)  # two estimates of one standard error
    assert lo < d["delta"] < hi
    assert hi - lo == pytest.approx(2 * 1.96 * d["se"], rel=0.15)


def test_identical_scores_give_zero_and_equivalent():
    y, a, _ = _data(200, seed=3)
    out = paired_auroc(y, a, a.copy(), n_boot=200)
    assert out["delta"] == 0.0 and out["se"] == 0.0 and out["p"] == 1.0
    assert out["ci"] == [0.0, 0.0]
    assert out["verdict"] == "equivalent"


def test_verdict_reads_only_the_ci():
    assert verdict((0.03, 0.10)) == "better"
    assert verdict((-0.10, -0.03)) == "worse"
    assert verdict((-0.015, 0.018)) == "equivalent"
    assert verdict((0.001, 0.015)) == "equivalent"  # inside the margin beats "excludes 0"
    assert verdict((-0.05, 0.04)) == "unresolved"
    assert verdict(None) == "unresolved"


def test_a_real_difference_resolves_and_a_small_sample_does_not():
    y, a, b = _data(2000, seed=4)
    assert paired_auroc(y, a, b, n_boot=300)["verdict"] == "better"
    small = paired_auroc(y[:40], a[:40], b[:40], n_boot=300)
    assert small["verdict"] == "unresolved"
    assert small["min_detectable"] > abs(small["delta"])


def test_grouped_bootstrap_is_wider_for_duplicated_items():
    y, a, b = _data(150, seed=5)
    y2, a2, b2 = np.repeat(y, 4), np.repeat(a, 4), np.repeat(b, 4)
    groups = np.repeat(np.arange(150), 4)
    lo_g, hi_g, _ = paired_bootstrap(y2, a2, b2, groups=groups, n_boot=500)
    lo_i, hi_i, _ = paired_bootstrap(y2, a2, b2, n_boot=500)
    assert hi_g - lo_g > 1.5 * (hi_i - lo_i)  # copies are not independent evidence


def test_min_detectable_difference_and_f1():
    assert min_detectable_difference(0.01) == pytest.approx(0.028, abs=1e-3)
    y = np.array([1, 1, 0, 0, 1])
    s = np.array([0.9, 0.2, 0.8, 0.1, 0.7])
    assert f1_at(y, s, 0.5) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
