"""Seeded synthetic data with planted outliers, shared by the detector tests."""

from __future__ import annotations

import numpy as np
import pytest


def make_planted(seed: int = 0, n_train: int = 200, n_test_normal: int = 100, n_anom: int = 50,
                 d: int = 16, rank: int = 3, shift: float = 2.5) -> dict[str, np.ndarray]:
    """Normals on a noisy low-rank subspace with a non-zero mean (like real activations);
    anomalies are shifted off it, so they differ in location, direction and subspace."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, d))
    mean = rng.normal(size=d) * 2

    def normal(n: int) -> np.ndarray:
        return mean + rng.normal(size=(n, rank)) @ basis + 0.3 * rng.normal(size=(n, d))

    direction = rng.normal(size=d)
    direction -= basis.T @ np.linalg.lstsq(basis.T, direction, rcond=None)[0]  # off the subspace
    offset = direction * (shift / np.linalg.norm(direction))
    anomalies = normal(n_anom) + offset + 0.3 * rng.normal(size=(n_anom, d))
    X_test = np.vstack([normal(n_test_normal), anomalies])
    y_test = np.r_[np.zeros(n_test_normal, int), np.ones(n_anom, int)]
    X_train = normal(n_train)
    # supervised training set: normals plus some anomalies
    X_sup = np.vstack([X_train, normal(n_anom) + offset + 0.3 * rng.normal(size=(n_anom, d))])
    y_sup = np.r_[np.zeros(n_train, int), np.ones(n_anom, int)]
    return {"X_train": X_train, "X_test": X_test, "y_test": y_test, "X_sup": X_sup, "y_sup": y_sup}


@pytest.fixture(scope="session")
def planted() -> dict[str, np.ndarray]:
    """Clearly separated outliers (6 noise-sd off the normal subspace): every detector should
    clear the AUROC floor; at 2.5 sd iforest and cosine-kNN drop to 0.7-0.9."""
    return make_planted(0, shift=6.0)


def check_detector_contract(detector, data: dict[str, np.ndarray], floor: float = 0.9) -> None:
    """The shared contract every detector test runs: fit/score shapes, sign, threshold, clone."""
    from sklearn.base import clone
    from sklearn.metrics import roc_auc_score

    from kvstate.detect import BaseDetector

    assert isinstance(detector, BaseDetector)
    fresh = clone(detector)
    assert fresh.get_params() == detector.get_params()
    assert not [k for k in vars(fresh) if k.endswith("_")], "fitted attributes before fit"
    if detector.supervised:
        fitted = fresh.fit(data["X_sup"], data["y_sup"])
        n_train = len(data["X_sup"])
    else:
        fitted = fresh.fit(data["X_train"])
        n_train = len(data["X_train"])
    assert fitted is fresh
    assert fresh.decision_scores_.shape == (n_train,)
    assert fresh.labels_.shape == (n_train,) and set(np.unique(fresh.labels_)) <= {0, 1}
    assert np.isfinite(fresh.threshold_)
    assert abs(fresh.labels_.mean() - fresh.contamination) <= 0.05
    scores = fresh.decision_function(data["X_test"])
    assert scores.shape == (len(data["X_test"]),) and np.all(np.isfinite(scores))
    np.testing.assert_array_equal(fresh.score_samples(data["X_test"]), -scores)
    np.testing.assert_array_equal(fresh.predict(data["X_test"]), (scores > fresh.threshold_).astype(int))
    auroc = roc_auc_score(data["y_test"], scores)
    assert auroc > floor, f"{type(detector).__name__} AUROC {auroc:.3f} <= {floor}"
    # deterministic: a second clone gives the same scores
    again = clone(detector)
    again.fit(data["X_sup"], data["y_sup"]) if detector.supervised else again.fit(data["X_train"])
    np.testing.assert_allclose(again.decision_function(data["X_test"]), scores)
    # a threshold calibrated on normal data keeps the FPR there
    X_normal = data["X_test"][data["y_test"] == 0]
    fresh.calibrate_threshold(X_normal, fpr=0.05)
    assert fresh.predict(X_normal).mean() <= 0.05
