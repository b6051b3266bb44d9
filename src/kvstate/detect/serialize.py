"""Detector (de)serialisation without pickle: JSON params + safetensors arrays.

A file is one ``.safetensors``: the fitted numpy arrays as tensors and a JSON document in the
header metadata under ``"kvstate"`` (format, version, detector name, constructor params,
scalar fitted attributes, and the same for each sub-estimator listed in the class's
``_components``). Loading only instantiates classes from the detector registry and the
``_components`` table, never a class named in the file.
"""

from __future__ import annotations

import json
from os import PathLike
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from sklearn.utils.validation import check_is_fitted

from .base import BaseDetector

__all__ = ["detector_from_dict", "detector_to_dict", "load_detector", "save_detector"]

FORMAT = "kvstate.detector"
VERSION = 1
_SCALARS = (bool, int, float, str, type(None))


def _split_state(obj: Any, skip: set[str], where: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Public fitted attributes (``name_``) of obj as (JSON scalars, numpy arrays)."""
    scalars: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for key, value in vars(obj).items():
        if not key.endswith("_") or key.startswith("_") or key in skip:
            continue
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"{where}.{key}: object arrays cannot be stored in safetensors")
            arrays[key] = value
        elif isinstance(value, np.generic):
            scalars[key] = value.item()
        elif isinstance(value, _SCALARS):
            scalars[key] = value
        else:
            raise TypeError(f"{where}.{key}: cannot serialise a {type(value).__name__}")
    return scalars, arrays


def _json_params(obj: Any, where: str) -> dict[str, Any]:
    params = obj.get_params(deep=False)
    for key, value in params.items():
        if not isinstance(value, _SCALARS):
            raise TypeError(f"{where} param {key}={value!r} is not JSON-serialisable (use an int seed)")
    return params


def detector_to_dict(detector: BaseDetector) -> dict[str, Any]:
    """Fitted detector -> ``{"meta": JSON-able dict, "arrays": {key: ndarray}}``."""
    components = type(detector)._components
    if components is None:
        raise NotImplementedError(
            f"{type(detector).__name__} ({detector.name!r}) does not support save/load; "
            "serialisable detectors: mahalanobis, pca, knn, logistic, diffmean, repe_pca"
        )
    check_is_fitted(detector)
    skip = set(components) | set(detector._rebuilt_on_load)
    attrs, arrays = _split_state(detector, skip, detector.name)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "name": detector.name,
        "params": _json_params(detector, detector.name),
        "attrs": attrs,
        "components": {},
    }
    for attr, cls in components.items():
        sub = getattr(detector, attr)
        if type(sub) is not cls:
            raise TypeError(f"{detector.name}.{attr} is a {type(sub).__name__}, expected {cls.__name__}")
        sub_attrs, sub_arrays = _split_state(sub, set(), f"{detector.name}.{attr}")
        meta["components"][attr] = {"params": _json_params(sub, attr), "attrs": sub_attrs}
        arrays.update({f"{attr}.{k}": v for k, v in sub_arrays.items()})
    # memory layout changes BLAS summation order; keep it so loaded scores are bit-identical
    meta["fortran_arrays"] = sorted(k for k, v in arrays.items() if v.ndim > 1 and v.flags.f_contiguous
                                    and not v.flags.c_contiguous)
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    return {"meta": meta, "arrays": arrays}


def detector_from_dict(data: dict[str, Any]) -> BaseDetector:
    """Inverse of :func:`detector_to_dict`."""
    from . import get_detector  # registry lives in the package __init__

    meta, arrays = data["meta"], data["arrays"]
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"not a {FORMAT} v{VERSION} document: {meta.get('format')} v{meta.get('version')}")
    detector = get_detector(meta["name"], **meta["params"])
    components = type(detector)._components or {}
    for key, value in meta["attrs"].items():
        setattr(detector, key, value)
    for attr, sub_meta in meta["components"].items():
        if attr not in components:
            raise ValueError(f"{meta['name']} has no component {attr!r}")
        sub = components[attr](**sub_meta["params"])
        for key, value in sub_meta["attrs"].items():
            setattr(sub, key, value)
        setattr(detector, attr, sub)
    fortran = set(meta.get("fortran_arrays", []))
    for key, value in arrays.items():
        value = np.asfortranarray(value) if key in fortran else value
        owner, _, name = key.rpartition(".")
        setattr(getattr(detector, owner) if owner else detector, name, value)
    detector._after_load()
    return detector


def save_detector(detector: BaseDetector, path: str | PathLike[str]) -> None:
    """Write a fitted detector to one ``.safetensors`` file (JSON metadata in the header)."""
    data = detector_to_dict(detector)
    save_file(data["arrays"], str(path), metadata={"kvstate": json.dumps(data["meta"])})


def load_detector(path: str | PathLike[str]) -> BaseDetector:
    """Read a detector written by :func:`save_detector`; scores are bit-identical."""
    with safe_open(str(path), framework="np") as f:
        header = f.metadata() or {}
        if "kvstate" not in header:
            raise ValueError(f"{path}: no kvstate metadata; not written by save_detector")
        arrays = {k: f.get_tensor(k) for k in f.keys()}
    return detector_from_dict({"meta": json.loads(header["kvstate"]), "arrays": arrays})
