"""Reductions are seeded sklearn transformers fitted on training data only."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from kvstate.detect import KNNDetector, LogisticDetector, MahalanobisDetector, is_supervised
from kvstate.detect.reduce import PCAReduce, RandomProjection, detector_pipeline, make_reducer

RNG = np.random.default_rng(0)
X_WIDE = RNG.normal(size=(60, 500))


@parametrize_with_checks([RandomProjection(n_components=3), RandomProjection(n_components=3, kind="gaussian"),
                          PCAReduce(n_components=2), PCAReduce(n_components=0.9)])
def test_sklearn_compatible(estimator, check):
    check(estimator)


@pytest.mark.parametrize("kind", ["gaussian", "sparse"])
def test_random_projection_seeded(kind):
    a = RandomProjection(n_components=32, kind=kind, random_state=1).fit(X_WIDE)
    b = RandomProjection(n_components=32, kind=kind, random_state=1).fit(X_WIDE[:10])  # data-independent
    c = RandomProjection(n_components=32, kind=kind, random_state=2).fit(X_WIDE)
    assert a.n_components_ == 32 and a.transform(X_WIDE).shape == (60, 32)
    np.testing.assert_array_equal(a.transform(X_WIDE), b.transform(X_WIDE))
    assert not np.allclose(a.transform(X_WIDE), c.transform(X_WIDE))


def test_random_projection_roughly_preserves_distances():
    Z = RandomProjection(n_components=256, kind="gaussian").fit_transform(X_WIDE)
    d_in = np.linalg.norm(X_WIDE[:20, None] - X_WIDE[None, :20], axis=-1)
    d_out = np.linalg.norm(Z[:20, None] - Z[None, :20], axis=-1)
    off = ~np.eye(20, dtype=bool)
    ratio = d_out[off] / d_in[off]
    assert 0.7 < ratio.min() and ratio.max() < 1.3


def test_random_projection_never_projects_up():
    assert RandomProjection(n_components=1000).fit(X_WIDE[:, :10]).n_components_ == 10


@pytest.mark.parametrize(("n_components", "expected"), [(5, 5), (10_000, 30), (0.5, None)])
def test_pca_reduce_components(n_components, expected):
    red = PCAReduce(n_components=n_components).fit(X_WIDE)
    assert red.transform(X_WIDE).shape == (60, red.n_components_)
    if expected is not None:
        assert red.n_components_ == expected
    else:
        assert np.cumsum(red.pca_.explained_variance_ratio_)[-1] >= 0.5


def test_pca_reduce_uses_training_statistics_only():
    train, test = X_WIDE[:30], X_WIDE[30:] + 5.0
    red = PCAReduce(n_components=4).fit(train)
    np.testing.assert_allclose(red.pca_.mean_, train.mean(axis=0))
    before = red.transform(test)
    red.transform(np.vstack([test, test * 100]))  # transforming other data changes nothing
    np.testing.assert_array_equal(red.transform(test), before)


def test_detector_pipeline_variants():
    det = MahalanobisDetector()
    assert detector_pipeline(det) is det
    for reduce in ("pca", "rp"):
        pipe = detector_pipeline(det, reduce=reduce, n_components=8)
        assert isinstance(pipe, Pipeline)
        fitted = clone(pipe).fit(X_WIDE)
        assert fitted.named_steps["reduce"].n_components_ == 8
        assert fitted.decision_function(X_WIDE).shape == (60,)
        np.testing.assert_array_equal(fitted.score_samples(X_WIDE), -fitted.decision_function(X_WIDE))
        assert set(np.unique(fitted.predict(X_WIDE))) <= {0, 1}
    assert isinstance(detector_pipeline("knn", reduce="pca").steps[-1][1], KNNDetector)
    assert is_supervised(detector_pipeline(LogisticDetector(), reduce="rp"))


def test_make_reducer_errors():
    with pytest.raises(ValueError, match="Available: pca, rp"):
        make_reducer("umap")
    with pytest.raises(ValueError, match="int n_components"):
        make_reducer("rp", n_components=0.9)


@pytest.mark.parametrize("reducer", [RandomProjection(n_components=8), PCAReduce(n_components=8)])
def test_float32_input_accepted(reducer):
    X32 = X_WIDE.astype(np.float32)
    Z = clone(reducer).fit(X32).transform(X32)
    assert Z.dtype == np.float64 and Z.shape == (60, 8)
    np.testing.assert_allclose(Z, clone(reducer).fit(X_WIDE).transform(X_WIDE), rtol=1e-3, atol=1e-3)


def test_pca_mahalanobis_is_stable_under_tiny_input_noise():
    # few normal items in many dims (a study fold): the fitted pipeline's ranking of test items must
    # not hinge on float-level noise, which it did when PCA kept as many components as items
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    basis = rng.normal(size=(8, 2048))
    def sample(n):
        return rng.normal(size=(n, 8)) @ basis + 0.1 * rng.normal(size=(n, 2048))
    train, test = sample(48), sample(40)
    noisy = train * (1 + 1e-5 * rng.standard_normal(train.shape))
    a, b = (detector_pipeline("mahalanobis", "pca", 64).fit(t).decision_function(test) for t in (train, noisy))
    assert spearmanr(a, b).statistic > 0.99
