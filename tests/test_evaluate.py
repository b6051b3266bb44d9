"""Metrics match sklearn, CIs cover the estimate, folds never leak, controls catch confounds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve
from sklearn.preprocessing import StandardScaler

from kvstate.detect import KNNDetector, LogisticDetector, MahalanobisDetector, get_detector
from kvstate.detect.reduce import detector_pipeline
from kvstate.evaluate import (
    EvalResult,
    bootstrap_ci,
    comparison_table,
    confound_warnings,
    evaluate_detector,
    evaluate_length_matched,
    length_matched_indices,
    metrics,
    selection_corrected,
    shuffled_label_control,
    transfer_matrix,
)


def _scores(seed: int = 0, n: int = 400, ties: bool = True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = rng.normal(size=n) + 1.2 * y
    return y, (np.round(s, 1) if ties else s)


def _separable(seed: int = 0, n: int = 300, d: int = 8, shift: float = 2.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    X = rng.normal(size=(n, d))
    X[y == 1, :2] += shift
    groups = np.arange(n) // 3
    return X, y, groups


# --------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [True, False])
def test_metrics_equal_sklearn(seed, ties):
    y, s = _scores(seed, ties=ties)
    m = metrics(y, s)
    assert m["auroc"] == roc_auc_score(y, s)
    assert m["auprc"] == average_precision_score(y, s)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert m["tpr_at_1fpr"] == max(t for f, t in zip(fpr, tpr) if f <= 0.01)
    assert m["fpr_at_95tpr"] == min(f for f, t in zip(fpr, tpr) if t >= 0.95)


def test_metrics_known_values():
    y = np.r_[np.ones(10), np.zeros(100)].astype(int)
    s = np.r_[np.arange(10) + 100.0, np.arange(100.0)]  # 9 positives above every negative
    s[0] = 98.5  # one positive beaten by one negative (99)
    m = metrics(y, s)
    assert m["tpr_at_1fpr"] == 1.0  # FPR 1/100 reaches all positives
    assert m["fpr_at_95tpr"] == 0.01
    assert m["auroc"] == pytest.approx(1 - 1 / 1000)
    perfect = metrics(y, y.astype(float))
    assert perfect == {"auroc": 1.0, "auprc": 1.0, "fpr_at_95tpr": 0.0, "tpr_at_1fpr": 1.0}


def test_metrics_reject_one_class():
    with pytest.raises(ValueError, match="both classes"):
        metrics(np.zeros(5, int), np.arange(5.0))


# --------------------------------------------------------------------------- bootstrap
@pytest.mark.parametrize("metric", ["auroc", "auprc", "tpr_at_1fpr", "fpr_at_95tpr"])
@pytest.mark.parametrize("grouped", [False, True])
def test_bootstrap_ci_contains_point_estimate(metric, grouped):
    y, s = _scores(1)
    groups = np.arange(y.size) // 4 if grouped else None
    lo, hi = bootstrap_ci(y, s, metric, n_boot=300, seed=0, groups=groups)
    assert lo <= metrics(y, s)[metric] <= hi
    assert (lo, hi) == bootstrap_ci(y, s, metric, n_boot=300, seed=0, groups=groups)  # seeded


def test_bootstrap_ci_accepts_callable_and_shrinks_with_n():
    y_small, s_small = _scores(2, n=100, ties=False)
    y_big, s_big = _scores(2, n=2000, ties=False)
    lo_s, hi_s = bootstrap_ci(y_small, s_small, roc_auc_score, n_boot=200)
    lo_b, hi_b = bootstrap_ci(y_big, s_big, "auroc", n_boot=200)
    assert hi_b - lo_b < hi_s - lo_s


def test_grouped_bootstrap_is_wider_for_duplicated_items():
    """Each item duplicated 5x: item-level resampling pretends 5x the evidence."""
    y, s = _scores(3, n=200, ties=False)
    y5, s5, g5 = np.repeat(y, 5), np.repeat(s, 5), np.repeat(np.arange(200), 5)
    naive = bootstrap_ci(y5, s5, "auroc", n_boot=300)
    grouped = bootstrap_ci(y5, s5, "auroc", n_boot=300, groups=g5)
    assert (grouped[1] - grouped[0]) > 1.5 * (naive[1] - naive[0])


# --------------------------------------------------------------------------- cross-validation
_LOG: list[tuple[str, np.ndarray, object]] = []


class SpyDetector(BaseEstimator):
    """Records which item ids (column 0) it was fitted on and asked to score."""

    supervised = False

    def fit(self, X, y=None):
        _LOG.append(("fit", X[:, 0].astype(int).copy(), None if y is None else np.asarray(y).copy()))
        self.fitted_ = True
        return self

    def decision_function(self, X):
        _LOG.append(("score", X[:, 0].astype(int).copy(), None))
        return X[:, 1]


class SupervisedSpy(SpyDetector):
    supervised = True


@pytest.mark.parametrize("spy", [SpyDetector, SupervisedSpy])
def test_folds_respect_groups_and_training_labels(spy):
    X, y, groups = _separable(0)
    X = np.c_[np.arange(len(y)), X]
    _LOG.clear()
    res = evaluate_detector(X, y, groups, spy(), n_splits=4, n_boot=10)
    fits = [e for e in _LOG if e[0] == "fit"]
    scored = [e for e in _LOG if e[0] == "score"]
    assert len(fits) == len(scored) == 4
    all_scored = np.concatenate([ids for _, ids, _ in scored])
    np.testing.assert_array_equal(np.sort(all_scored), np.arange(len(y)))  # each item once
    for (_, train_ids, y_fit), (_, test_ids, _) in zip(fits, scored):
        assert not set(groups[train_ids]) & set(groups[test_ids])
        if spy.supervised:
            np.testing.assert_array_equal(y_fit, y[train_ids])
        else:
            assert y_fit is None and np.all(y[train_ids] == 0)  # normals only
    np.testing.assert_array_equal(res.scores, X[:, 1])
    assert res.folds.min() == 0 and res.folds.max() == 3


def test_unsupervised_train_all_includes_positives():
    X, y, groups = _separable(0)
    X = np.c_[np.arange(len(y)), X]
    _LOG.clear()
    evaluate_detector(X, y, groups, SpyDetector(), n_boot=10, unsupervised_train="all")
    fitted = np.concatenate([ids for kind, ids, _ in _LOG if kind == "fit"])
    assert y[fitted].sum() > 0


@pytest.mark.parametrize("detector", ["mahalanobis", "knn", "logistic", "diffmean"])
def test_evaluate_detector_separable(detector):
    X, y, groups = _separable(1)
    # a pure mean shift of centred data leaves directions isotropic: kNN needs euclidean here
    params = {"metric": "euclidean"} if detector == "knn" else {}
    res = evaluate_detector(X, y, groups, get_detector(detector, **params), n_boot=200)
    assert isinstance(res, EvalResult)
    assert res.metrics["auroc"] > 0.8 and len(res.fold_auroc) == 5
    lo, hi = res.ci["auroc"]
    assert lo <= res.metrics["auroc"] <= hi
    assert res.dim == 8 and res.detector == detector
    json.dumps(res.to_dict(include_scores=True))


def test_evaluate_is_seeded():
    X, y, groups = _separable(2)
    det = get_detector("iforest", n_estimators=50)
    a = evaluate_detector(X, y, groups, det, n_boot=50, seed=3)
    b = evaluate_detector(X, y, groups, det, n_boot=50, seed=3)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.ci == b.ci


# --------------------------------------------------------------------------- no leakage
def _leak_data(seed: int = 0):
    """Normals: variance 100 along e1, 1 elsewhere. Positives: same, but at e2 = +-30.

    Fit on normal training items, PC1 is e1, along which positives look normal, so an honest
    pca1+mahalanobis scores ~0.5. Fit on *all* items (test folds included), the positives'
    spread makes e2 the first PC and the same detector scores ~1.0 purely through leakage.
    """
    rng = np.random.default_rng(seed)
    n_norm, n_pos = 300, 150
    X = rng.normal(size=(n_norm + n_pos, 5))
    X[:, 0] *= 10.0
    X[n_norm:, 1] += rng.choice([-30.0, 30.0], size=n_pos)
    y = np.r_[np.zeros(n_norm, int), np.ones(n_pos, int)]
    return X, y, np.arange(y.size)


def _assert_not_leaky(auroc: float) -> None:
    assert auroc < 0.7, f"AUROC {auroc:.3f}: the reduction saw test-fold (or positive) items"


def _leaky_evaluate(X, y, groups):
    """Deliberately wrong: fit the reduction on all data, then cross-validate the detector."""
    Z = PCA(n_components=1).fit_transform(X)
    return evaluate_detector(Z, y, groups, MahalanobisDetector(), n_boot=10).metrics["auroc"]


@pytest.mark.parametrize("seed", [0, 1])
def test_no_leakage_reduction_fit_inside_folds(seed):
    X, y, groups = _leak_data(seed)
    honest = evaluate_detector(X, y, groups, detector_pipeline(MahalanobisDetector(), "pca", n_components=1),
                               n_boot=10)
    _assert_not_leaky(honest.metrics["auroc"])
    # the test has power: the leaky variant fails the same assertion
    leaky = _leaky_evaluate(X, y, groups)
    assert leaky > 0.95
    with pytest.raises(AssertionError, match="saw test-fold"):
        _assert_not_leaky(leaky)


class LeakyScalerKNN(KNNDetector):
    """Deliberately wrong: standardises with statistics of *all* items (set in ``X_all``)."""

    X_all: np.ndarray | None = None

    def fit(self, X, y=None):
        super().fit(X, y)
        self.scaler_ = StandardScaler().fit(type(self).X_all)
        Xs = self.scaler_.transform(X)
        self._fit(Xs, None)
        self.decision_scores_ = self._training_scores(Xs)
        self._process_decision_scores()
        return self


@pytest.mark.parametrize("seed", [0, 1])
def test_no_leakage_detector_scaler_fit_on_training_normals(seed):
    """Cosine kNN depends on the centring origin. Positives sit at e1 = +10 (half the data).

    Centred on the normal training items (honest), positives point in directions that
    normals also take: no better than chance. Centred on all items, the origin moves to
    e1 = +5, normals point to -e1 and positives to +e1, and AUROC -> 1 through leakage alone.
    """
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(600, 2))
    X[300:, 0] += 10.0
    y = np.r_[np.zeros(300, int), np.ones(300, int)]
    honest = evaluate_detector(X, y, None, KNNDetector(metric="cosine"), n_boot=10).metrics["auroc"]
    _assert_not_leaky(honest)
    LeakyScalerKNN.X_all = X
    leaky = evaluate_detector(X, y, None, LeakyScalerKNN(metric="cosine"), n_boot=10).metrics["auroc"]
    assert leaky > 0.95
    with pytest.raises(AssertionError, match="saw test-fold"):
        _assert_not_leaky(leaky)


# --------------------------------------------------------------------------- controls
@pytest.mark.parametrize("detector", ["logistic", "mahalanobis"])
def test_shuffled_labels_give_chance(detector):
    X, y, groups = _separable(4, shift=3.0)
    assert evaluate_detector(X, y, groups, detector, n_boot=10).metrics["auroc"] > 0.9
    ctrl = shuffled_label_control(X, y, groups, detector, n_permutations=4, seed=0)
    assert abs(ctrl["auroc_mean"] - 0.5) < 0.07
    assert all(abs(a - 0.5) < 0.15 for a in ctrl["aurocs"])


def test_confound_warnings_flag_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 500, size=300)
    y_from_length = (lengths > 250).astype(int)  # the label *is* its length
    warns = confound_warnings(lengths, y_from_length)
    assert len(warns) == 1 and "length" in warns[0]
    assert confound_warnings(-lengths, y_from_length)  # max(a, 1-a): either direction
    assert confound_warnings(lengths, rng.integers(0, 2, size=300)) == []
    extra = confound_warnings(None, y_from_length, controls={"n_tokens_system": lengths * 2})
    assert len(extra) == 1 and "n_tokens_system" in extra[0]


def test_length_matched_indices_remove_length_signal():
    rng = np.random.default_rng(0)
    y = (rng.random(1000) < 0.4).astype(int)
    lengths = rng.normal(100, 20, size=1000) + 25 * y  # positives are longer
    assert roc_auc_score(y, lengths) > 0.75
    idx = length_matched_indices(lengths, y, seed=0, n_bins=20)
    assert y[idx].sum() * 2 == idx.size  # balanced
    assert abs(roc_auc_score(y[idx], lengths[idx]) - 0.5) < 0.1
    np.testing.assert_array_equal(idx, length_matched_indices(lengths, y, seed=0, n_bins=20))
    with pytest.raises(ValueError, match="no length bin"):
        length_matched_indices(np.r_[np.ones(10), 2 * np.ones(10)], np.r_[np.zeros(10), np.ones(10)], n_bins=2)


def test_length_only_signal_vanishes_when_matched():
    """A representation that only encodes length: strong on the raw set, ~chance when matched."""
    rng = np.random.default_rng(1)
    y = (rng.random(600) < 0.5).astype(int)
    lengths = rng.normal(100, 20, size=600) + 30 * y
    X = np.c_[lengths, rng.normal(size=(600, 3))]
    raw = evaluate_detector(X, y, None, LogisticDetector(), n_boot=10)
    matched = evaluate_length_matched(X, y, None, lengths, LogisticDetector(), n_bins=20, n_boot=10)
    assert raw.metrics["auroc"] > 0.8
    assert matched.metrics["auroc"] < 0.65 and abs(matched.extras["length_auroc"] - 0.5) < 0.1
    json.dumps(matched.to_dict())


def test_transfer_matrix():
    A = _separable(5)
    B = _separable(6)
    rng = np.random.default_rng(7)  # C: positives differ along other features than A/B
    yc = (rng.random(300) < 0.3).astype(int)
    Xc = rng.normal(size=(300, 8))
    Xc[yc == 1, 5:] += 2.0
    table = transfer_matrix({"A": A, "B": B, "C": (Xc, yc, None)}, LogisticDetector(), n_splits=3)
    assert isinstance(table, pd.DataFrame) and table.shape == (3, 3)
    assert table.index.name == "train" and table.columns.name == "test"
    assert table.loc["A", "B"] > 0.85 and table.loc["B", "A"] > 0.85
    assert table.loc["A", "C"] < 0.7 and table.loc["C", "C"] > 0.85
    assert np.isnan(transfer_matrix({"A": A, "B": B}, "mahalanobis", diagonal="nan").loc["A", "A"])


def test_comparison_table():
    X, y, groups = _separable(8)
    results = [
        evaluate_detector(X, y, groups, det, n_boot=50, representation=rep)
        for rep in ("kv_state", "resid")
        for det in ("mahalanobis", detector_pipeline("knn", "pca", n_components=4))
    ]
    df = comparison_table(results)
    assert list(df.columns[:6]) == ["representation", "detector", "auroc", "auroc_lo", "auroc_hi", "auprc"]
    assert len(df) == 4 and set(df["detector"]) == {"mahalanobis", "pca4+knn"}
    assert (df["auroc_lo"] <= df["auroc"]).all() and (df["auroc"] <= df["auroc_hi"]).all()
    assert (df["dim"] == 8).all()
    json.dumps(df.to_dict(orient="records"))
    assert comparison_table({}).empty


def test_selection_corrected_removes_best_of_many_bias():
    # family "noise": 60 candidates with no signal; family "real": one candidate with a modest signal
    rng = np.random.default_rng(0)
    n = 120
    y = np.r_[np.zeros(n // 2, int), np.ones(n // 2, int)]
    groups = np.arange(n) // 2
    scores = {f"noise{i}": rng.normal(size=n) for i in range(60)}
    scores["real"] = rng.normal(size=n) + 0.8 * y
    fams = {k: ("real" if k == "real" else "noise") for k in scores}
    naive = max(roc_auc_score(y, s) for k, s in scores.items() if fams[k] == "noise")
    assert naive > 0.6  # the max over 60 chance-level candidates looks like a signal
    out = selection_corrected(scores, fams, y, groups, n_repeats=10, seed=0)
    noise, real = out["families"]["noise"], out["families"]["real"]
    assert abs(noise["auroc"] - 0.5) < 0.05 and noise["lo"] < 0.5 < noise["hi"]
    assert abs(real["auroc"] - roc_auc_score(y, scores["real"])) < 0.05 and real["picks"] == {"real": 20}
    assert out["wins"]["real"]["noise"] >= 0.75
    assert selection_corrected(scores, fams, y, groups, n_repeats=10, seed=0) == out  # seeded
    # non-finite scores drop a candidate instead of poisoning the ranks
    bad = {**scores, "noise0": np.full(n, np.nan)}
    assert "noise0" not in selection_corrected(bad, fams, y, groups, n_repeats=2)["families"]["noise"]["picks"]


@pytest.mark.parametrize("normal_groups, ok", [(3, False), (4, True)])
def test_check_groups_needs_normal_items_in_every_training_part(normal_groups, ok):
    """A task with 2 or 3 normal groups once passed the check and then crashed in an unsupervised fit
    on one normal item (gemma3-270m answered 2 of 80 questions right)."""
    from kvstate.study.evaluate import TooFewGroups, check_groups

    y = np.r_[np.zeros(normal_groups, int), np.ones(20, int)]
    groups = np.arange(len(y))
    if ok:
        assert check_groups(y, groups, 5) == 4
    else:
        with pytest.raises(TooFewGroups, match=">= 4 of label 0"):
            check_groups(y, groups, 5)
