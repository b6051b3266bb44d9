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
KeyError: "unknown detector 'nope'. Available: diffmean, iforest, knn, lof, logistic, mahalanobis, pca, repe_pca"
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .base import BaseDetector, threshold_for_fpr
from .diffmean import DiffMeanDetector
from .iforest import IForestDetector
from .knn import KNNDetector
from .lof import LOFDetector
from .logistic import LogisticDetector
from .mahalanobis import MahalanobisDetector
from .pca import PCADetector
from .repe_pca import RepEPCADetector
from .serialize import detector_from_dict, detector_to_dict, load_detector, save_detector

__all__ = [
    "BaseDetector",
    "DETECTORS",
    "DiffMeanDetector",
    "IForestDetector",
    "KNNDetector",
    "LOFDetector",
    "LogisticDetector",
    "MahalanobisDetector",
    "PCADetector",
    "RepEPCADetector",
    "detector_from_dict",
    "detector_to_dict",
    "get_detector",
    "is_supervised",
    "load_detector",
    "save_detector",
    "threshold_for_fpr",
]

_CLASSES: tuple[type[BaseDetector], ...] = (
    MahalanobisDetector,
    PCADetector,
    KNNDetector,
    IForestDetector,
    LOFDetector,
    LogisticDetector,
    DiffMeanDetector,
    RepEPCADetector,
)

#: name -> detector class (read-only).
DETECTORS: Mapping[str, type[BaseDetector]] = MappingProxyType({c.name: c for c in _CLASSES})


def get_detector(name: str, **params: Any) -> BaseDetector:
    """Instantiate a registered detector; unknown names raise ``KeyError`` listing the choices."""
    try:
        cls = DETECTORS[name]
    except KeyError:
        raise KeyError(f"unknown detector {name!r}. Available: {', '.join(sorted(DETECTORS))}") from None
    return cls(**params)


def is_supervised(estimator: Any) -> bool:
    """True if the estimator (or a Pipeline's final step) needs labels to fit."""
    final = getattr(estimator, "_final_estimator", estimator)
    return bool(getattr(final, "supervised", False))
