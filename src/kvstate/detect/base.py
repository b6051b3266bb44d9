"""Shared detector contract: scikit-learn estimator + PyOD scoring conventions.

score(x) = decision_function(x), HIGHER = MORE ANOMALOUS (or "more positive" for supervised
probes), everywhere in kvstate, so an AUROC never silently flips. ``score_samples`` is its
negation (scikit-learn's "bigger = more normal").

Subclasses implement ``_fit(X, y)`` and ``_score(X)`` on validated arrays; the public
``fit``/``decision_function``/``predict`` are written once here (template methods), and
``_process_decision_scores`` alone derives ``threshold_`` and ``labels_``.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.base import BaseEstimator
from sklearn.preprocessing import StandardScaler
from sklearn.utils import ClassifierTags
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

__all__ = ["BaseDetector", "check_binary_y", "threshold_for_fpr"]


def threshold_for_fpr(normal_scores: ArrayLike, fpr: float) -> float:
    """Smallest observed threshold t with mean(normal_scores > t) <= fpr.

    Uses the "higher" quantile so the empirical false-positive rate never exceeds ``fpr``.
    """
    s = np.asarray(normal_scores, dtype=float).ravel()
    if s.size == 0:
        raise ValueError("threshold_for_fpr needs at least one normal score")
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    return float(np.quantile(s, 1.0 - fpr, method="higher"))


def check_binary_y(y: ArrayLike | None, n_samples: int) -> NDArray[np.int64]:
    """Validate binary labels for a supervised detector and map them to 0/1.

    As in scikit-learn's binary classifiers, the larger label (``classes_[1]``) is positive.
    """
    if y is None:
        raise ValueError(
            "this supervised detector requires y to be passed, but the target y is None "
            "(fit(X, y) with 0 = normal, 1 = positive)"
        )
    y = np.asarray(y).ravel()
    if y.shape[0] != n_samples:
        raise ValueError(f"y has {y.shape[0]} labels for {n_samples} samples")
    if type_of_target(y, raise_unknown=True) != "binary" or np.unique(y).size != 2:
        raise ValueError(f"y must be binary with both classes present, got classes {np.unique(y)[:5]}")
    return (y == np.unique(y)[1]).astype(np.int64)


class BaseDetector(BaseEstimator):
    """Base class: sklearn estimator contract plus PyOD's ``decision_scores_``/``threshold_``.

    Parameters
    ----------
    contamination : float in (0, 0.5]
        Expected outlier fraction in the *training* data; only sets ``threshold_`` (the
        ``1 - contamination`` percentile of ``decision_scores_``) used by ``predict``.
        Recalibrate on held-out normal data with ``calibrate_threshold``.

    Fitted attributes
    -----------------
    scaler_ : StandardScaler fitted on the training data only (no test statistics leak).
    decision_scores_ : scores of the training items.
    threshold_, labels_ : from ``_process_decision_scores``.
    n_features_in_ : input dimension.
    """

    #: True for probes that need labels (upper bounds); evaluation trains them on all labels.
    supervised: ClassVar[bool] = False
    #: registry name, set by each subclass.
    name: ClassVar[str] = ""
    #: sub-estimator attributes rebuilt by ``load_detector``; None = not serialisable.
    _components: ClassVar[dict[str, type] | None] = None
    #: fitted helpers not stored by ``save_detector``; ``_after_load`` rebuilds them.
    _rebuilt_on_load: ClassVar[tuple[str, ...]] = ()
    #: keyword arguments ``fit`` passes on to ``_fit`` (e.g. ``groups`` for out-of-fold stages).
    _fit_params: ClassVar[tuple[str, ...]] = ()

    _parameter_constraints: ClassVar[dict] = {
        "contamination": [Interval(Real, 0.0, 0.5, closed="right")],
    }

    def __init__(self, *, contamination: float = 0.1) -> None:
        self.contamination = contamination

    # ---------------------------------------------------------------- subclass hooks
    def _fit(self, Xs: NDArray[np.float64], y: NDArray[np.int64] | None) -> None:
        """Fit on standardised training data ``Xs``; y is validated 0/1 or None."""
        raise NotImplementedError

    def _score(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        """Anomaly score of standardised data, higher = more anomalous."""
        raise NotImplementedError

    def _training_scores(self, Xs: NDArray[np.float64]) -> NDArray[np.float64]:
        """Scores of the training items; override when self-matches bias them (kNN, LOF)."""
        return self._score(Xs)

    def _after_load(self) -> None:
        """Rebuild non-serialised helpers after ``load_detector`` (e.g. a neighbour index)."""

    # ---------------------------------------------------------------- public API
    def fit(self, X: ArrayLike, y: ArrayLike | None = None, **fit_params: Any) -> BaseDetector:
        """Standardise on X, fit the detector, score the training items. Returns self.

        ``fit_params`` (e.g. ``groups``) are accepted only by detectors that list them in ``_fit_params``.
        """
        unknown = sorted(set(fit_params) - set(self._fit_params))
        if unknown:
            takes = ", ".join(self._fit_params) or "nothing beyond X and y"
            raise TypeError(f"{type(self).__name__}.fit() got {', '.join(unknown)}; it takes {takes}")
        self._validate_params()
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        y_checked = check_binary_y(y, X.shape[0]) if self.supervised else None
        self.scaler_ = StandardScaler().fit(X)
        Xs = self.scaler_.transform(X)
        self._fit(Xs, y_checked, **fit_params)
        self.decision_scores_ = np.asarray(self._training_scores(Xs), dtype=np.float64)
        self._process_decision_scores()
        return self

    def _process_decision_scores(self) -> BaseDetector:
        """Derive ``threshold_`` and ``labels_`` from ``decision_scores_`` (PyOD semantics)."""
        self.threshold_ = float(np.percentile(self.decision_scores_, 100.0 * (1.0 - self.contamination)))
        self.labels_ = (self.decision_scores_ > self.threshold_).astype(np.int64)
        return self

    def _transform(self, X: ArrayLike) -> NDArray[np.float64]:
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return self.scaler_.transform(X)

    def decision_function(self, X: ArrayLike) -> NDArray[np.float64]:
        """Anomaly score per row; HIGHER = MORE ANOMALOUS (supervised: more positive)."""
        return np.asarray(self._score(self._transform(X)), dtype=np.float64)

    def score_samples(self, X: ArrayLike) -> NDArray[np.float64]:
        """scikit-learn convention: ``-decision_function(X)``, bigger = more normal."""
        return -self.decision_function(X)

    def predict(self, X: ArrayLike) -> NDArray[np.int64]:
        """1 = anomalous (score > ``threshold_``), 0 = normal."""
        scores = self.decision_function(X)
        return (scores > self.threshold_).astype(np.int64)

    def threshold_at_fpr(self, X_normal: ArrayLike, fpr: float = 0.01) -> float:
        """Threshold whose false-positive rate on ``X_normal`` (held-out normal items) is <= fpr."""
        return threshold_for_fpr(self.decision_function(X_normal), fpr)

    def calibrate_threshold(self, X_normal: ArrayLike, fpr: float = 0.01) -> BaseDetector:
        """Set ``threshold_`` from held-out normal data so ``predict`` has FPR <= fpr there."""
        self.threshold_ = self.threshold_at_fpr(X_normal, fpr)
        return self

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.required = self.supervised
        if self.supervised:  # binary labels only; sklearn's checks then pass binary y
            tags.classifier_tags = ClassifierTags(multi_class=False)
        tags.non_deterministic = False
        return tags


def _clip_components(n_components: int | float, n_samples: int, n_features: int) -> int | float:
    """Integer component counts above min(n_samples, n_features) are clipped, fractions pass."""
    if isinstance(n_components, (int, np.integer)) and not isinstance(n_components, bool):
        return int(min(n_components, n_samples, n_features))
    return n_components
