"""Registry, scikit-learn estimator checks and save/load for every detector."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from sklearn.utils.estimator_checks import parametrize_with_checks

import kvstate.detect as kd
from kvstate.detect import (
    DETECTORS,
    detector_from_dict,
    detector_to_dict,
    get_detector,
    is_supervised,
    load_detector,
    save_detector,
    threshold_for_fpr,
)

SERIALISABLE = ["mahalanobis", "pca", "knn", "logistic", "diffmean", "repe_pca", "lpm", "mlpm", "softauc", "stack"]


@parametrize_with_checks([cls() for cls in DETECTORS.values()])
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_all_exports_exist():
    for name in kd.__all__:
        assert hasattr(kd, name), name


def test_registry_names_and_supervision():
    assert set(DETECTORS) == {"mahalanobis", "pca", "knn", "iforest", "lof", "logistic", "diffmean", "repe_pca",
                              "lpm", "mlpm", "softauc", "stack"}
    assert {n for n, c in DETECTORS.items() if c.supervised} == {"logistic", "diffmean", "repe_pca", "lpm", "mlpm",
                                                                 "softauc", "stack"}
    for name, cls in DETECTORS.items():
        assert cls.name == name


def test_unknown_detector_lists_available():
    with pytest.raises(KeyError, match="Available: diffmean, iforest, knn"):
        get_detector("mahalanobiss")


def test_get_detector_passes_params():
    det = get_detector("knn", n_neighbors=3, contamination=0.2)
    assert det.get_params()["n_neighbors"] == 3 and det.contamination == 0.2


def test_is_supervised_sees_through_pipelines():
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    assert is_supervised(make_pipeline(StandardScaler(), get_detector("logistic")))
    assert not is_supervised(make_pipeline(StandardScaler(), get_detector("knn")))


def test_predict_before_fit_raises():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        get_detector("mahalanobis").decision_function(np.zeros((2, 3)))


def test_threshold_for_fpr_bounds_empirical_fpr():
    s = np.random.default_rng(0).normal(size=1000)
    for fpr in (0.0, 0.01, 0.05, 0.5):
        assert np.mean(s > threshold_for_fpr(s, fpr)) <= fpr


def _fit(name, data):
    det = get_detector(name)
    return det.fit(data["X_sup"], data["y_sup"]) if det.supervised else det.fit(data["X_train"])


@pytest.mark.parametrize("name", SERIALISABLE)
def test_save_load_round_trip_identical(planted, name, tmp_path):
    det = _fit(name, planted)
    path = tmp_path / f"{name}.safetensors"
    save_detector(det, path)
    loaded = load_detector(path)
    assert type(loaded) is type(det) and loaded.get_params() == det.get_params()
    X = planted["X_test"]
    np.testing.assert_array_equal(loaded.decision_function(X), det.decision_function(X))
    np.testing.assert_array_equal(loaded.predict(X), det.predict(X))
    np.testing.assert_array_equal(loaded.decision_scores_, det.decision_scores_)
    assert loaded.threshold_ == det.threshold_
    # the file is plain safetensors + JSON, readable without kvstate
    with safe_open(str(path), framework="np") as f:
        meta = json.loads(f.metadata()["kvstate"])
    assert meta["name"] == name and meta["params"] == det.get_params()


@pytest.mark.parametrize("name", ["iforest", "lof"])
def test_unsupported_serialisation_is_explicit(planted, name, tmp_path):
    with pytest.raises(NotImplementedError, match="does not support save/load"):
        save_detector(_fit(name, planted), tmp_path / "x.safetensors")


def test_dict_round_trip_and_version_check(planted):
    data = detector_to_dict(_fit("mahalanobis", planted))
    json.dumps(data["meta"])  # JSON-able
    assert all(isinstance(v, np.ndarray) for v in data["arrays"].values())
    detector_from_dict(data)
    data["meta"]["version"] = 99
    with pytest.raises(ValueError, match="v1"):
        detector_from_dict(data)


def test_unfitted_cannot_be_saved(tmp_path):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        save_detector(get_detector("pca"), tmp_path / "x.safetensors")


@pytest.mark.parametrize(("reduce", "kind"), [("pca", None), ("rp", "gaussian"), ("rp", "sparse")])
@pytest.mark.parametrize("name", ["mahalanobis", "knn", "logistic"])
def test_pipeline_round_trip_identical(planted, reduce, kind, name, tmp_path):
    from sklearn.pipeline import Pipeline

    from kvstate.detect.reduce import detector_pipeline

    pipe = detector_pipeline(name, reduce=reduce, n_components=6)
    if kind:
        pipe.set_params(reduce__kind=kind)
    X_fit, y_fit = (planted["X_sup"], planted["y_sup"]) if is_supervised(pipe) else (planted["X_train"], None)
    pipe.fit(X_fit, y_fit)
    save_detector(pipe, tmp_path / "pipe.safetensors")
    loaded = load_detector(tmp_path / "pipe.safetensors")
    assert isinstance(loaded, Pipeline) and [s for s, _ in loaded.steps] == ["reduce", "detector"]
    assert loaded.get_params(deep=True).keys() == pipe.get_params(deep=True).keys()
    np.testing.assert_array_equal(loaded.decision_function(planted["X_test"]), pipe.decision_function(planted["X_test"]))


def test_other_pipelines_are_refused(planted, tmp_path):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), get_detector("pca")).fit(planted["X_train"])
    with pytest.raises(NotImplementedError, match="reducer"):
        save_detector(pipe, tmp_path / "x.safetensors")
