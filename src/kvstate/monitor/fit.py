"""Fit a monitor's detector on a study's stored normal states, with an out-of-fold threshold."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from ..detect import get_detector, is_supervised, reduce_if_wide, threshold_for_fpr
from ..evaluate import evaluate_detector
from ..representations import RepresentationSettings, parse_kv_name
from .spec import MonitorSpec

__all__ = ["fit_monitor"]


def fit_monitor(X, y, groups, representation: str, settings: dict, *, detector: str = "mahalanobis",
                fpr: float = 0.01, seed: int = 0, model: str = "", reduce_above: int = 512):
    """Fit a detector on normal items and calibrate its threshold on out-of-fold normal scores.

    In-sample scores of the training items would be optimistic (too low), so the threshold is the
    (1 - fpr) quantile of cross-validated scores of normal items; the final detector is then fitted
    on all normal items. Returns (MonitorSpec, detector).
    """
    phi_key, _ = parse_kv_name(representation)
    phi = RepresentationSettings.from_dict(settings).feature_map(phi_key)  # the map the stored states used
    det = get_detector(detector)
    if is_supervised(det):
        raise ValueError(f"{detector} is supervised; a monitor is fitted on normal data only (use mahalanobis, pca, knn)")
    det = reduce_if_wide(det, X.shape[1], reduce_above, random_state=seed)
    y = np.asarray(y)
    k = min(5, len(np.unique(np.asarray(groups)[y == 0])))
    if k < 2:
        raise ValueError("too few groups of normal items to calibrate a threshold; use a larger suite")
    oof = evaluate_detector(X, y, groups, det, n_splits=k, seed=seed, n_boot=1, ci_metrics=())
    threshold = threshold_for_fpr(oof.scores[y == 0], fpr)
    final = clone(det).fit(X[y == 0])
    spec = MonitorSpec(representation, list(settings["layers"]), phi.config(), settings,
                       threshold=threshold, fpr=fpr, model=model,
                       notes={"detector": detector, "n_normal": int((y == 0).sum()), "oof_auroc": oof.metrics["auroc"]})
    return spec, final
