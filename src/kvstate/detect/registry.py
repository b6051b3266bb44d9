"""The detector registry: name -> class, and what a fitted estimator needs to be scored."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from .base import BaseDetector
from .diffmean import DiffMeanDetector
from .iforest import IForestDetector
from .knn import KNNDetector
from .lof import LOFDetector
from .logistic import LogisticDetector
from .lpm import LPMDetector
from .mahalanobis import MahalanobisDetector
from .mlpm import MLPMDetector
from .pca import PCADetector
from .repe_pca import RepEPCADetector
from .softauc import SoftAUCDetector
from .stack import StackDetector

__all__ = ["DETECTORS", "detector_name", "get_detector", "is_supervised"]

_CLASSES: tuple[type[BaseDetector], ...] = (
    MahalanobisDetector,
    PCADetector,
    KNNDetector,
    IForestDetector,
    LOFDetector,
    LogisticDetector,
    DiffMeanDetector,
    RepEPCADetector,
    LPMDetector,
    MLPMDetector,
    SoftAUCDetector,
    StackDetector,
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


def detector_name(descriptor: str) -> str:
    """The registry name inside an evaluation row's detector descriptor.

    >>> detector_name("pca64+mahalanobis"), detector_name("pca64+pca0.9"), detector_name("logistic")
    ('mahalanobis', 'pca', 'logistic')
    """
    last = str(descriptor).rsplit("+", 1)[-1]
    for name in (last, re.sub(r"[0-9.]+$", "", last)):  # a pipeline step carries its n_components
        if name in DETECTORS:
            return name
    raise KeyError(f"no registered detector in {descriptor!r}. Available: {', '.join(sorted(DETECTORS))}")
