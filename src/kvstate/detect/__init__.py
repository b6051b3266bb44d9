"""Detectors over representations: scikit-learn estimators with PyOD's scoring contract.

``decision_function(X)`` is an anomaly score, HIGHER = MORE ANOMALOUS, for every detector
(supervised probes: higher = more positive). Unsupervised detectors fit on normal items only.

Examples
--------
>>> from kvstate.detect import get_detector, DETECTORS
>>> det = get_detector("mahalanobis", contamination=0.05)
>>> sorted(DETECTORS)[:3]
['diffmean', 'iforest', 'knn']
>>> get_detector("nope")
Traceback (most recent call last):
...
KeyError: "unknown detector 'nope'. Available: diffmean, iforest, knn, lof, logistic, lpm, mahalanobis, mlpm, pca, repe_pca, softauc, stack"
"""

from __future__ import annotations

from .base import BaseDetector, threshold_for_fpr
from .diffmean import DiffMeanDetector
from .iforest import IForestDetector
from .knn import KNNDetector
from .lof import LOFDetector
from .logistic import LogisticDetector
from .lpm import LPMDetector
from .mahalanobis import MahalanobisDetector
from .mlpm import MLPMDetector
from .pca import PCADetector
from .query_probe import QueryProbe, pack_states, probe_scores
from .reduce import PCAReduce, RandomProjection, detector_pipeline, make_detector, make_reducer, reduce_if_wide
from .registry import DETECTORS, detector_name, get_detector, is_supervised
from .repe_pca import RepEPCADetector
from .serialize import detector_from_dict, detector_to_dict, load_detector, save_detector
from .softauc import SoftAUCDetector
from .stack import StackDetector

__all__ = [
    "BaseDetector",
    "DETECTORS",
    "DiffMeanDetector",
    "IForestDetector",
    "KNNDetector",
    "LOFDetector",
    "LogisticDetector",
    "LPMDetector",
    "MLPMDetector",
    "MahalanobisDetector",
    "PCAReduce",
    "RandomProjection",
    "PCADetector",
    "QueryProbe",
    "RepEPCADetector",
    "SoftAUCDetector",
    "StackDetector",
    "detector_from_dict",
    "detector_name",
    "detector_pipeline",
    "detector_to_dict",
    "get_detector",
    "is_supervised",
    "load_detector",
    "make_detector",
    "make_reducer",
    "pack_states",
    "probe_scores",
    "reduce_if_wide",
    "save_detector",
    "threshold_for_fpr",
]
