"""Detector (de)serialisation without pickle: JSON params + safetensors arrays.

A file is one ``.safetensors``: the fitted numpy arrays as tensors and a JSON document in the
header metadata under ``"kvstate"`` (format, version, detector name, constructor params,
scalar fitted attributes, and the same for each sub-estimator the class lists in
``_components``). A ``Pipeline`` of one ``kvstate.reduce`` reducer and a detector (what
``detector_pipeline`` builds) is stored the same way, step by step. Loading only instantiates
classes from the detector registry, the reducers and the ``_components`` tables, never a
class named in the file.
"""

from __future__ import annotations

import json
from os import PathLike
from typing import Any

import numpy as np
import scipy.sparse as sp
from safetensors import safe_open
from safetensors.numpy import save_file
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted

from .._io import atomic_write
from .base import BaseDetector
from .reduce import PCAReduce, RandomProjection
from .registry import get_detector

__all__ = ["detector_from_dict", "detector_to_dict", "load_detector", "save_detector"]

FORMAT = "kvstate.detector"
VERSION = 1
_SCALARS = (bool, int, float, str, type(None))


def _component_types(obj: Any) -> dict[str, type] | None:
    """Sub-estimator attribute -> class to rebuild it with (a hook for kind-dependent classes)."""
    hook = getattr(obj, "_component_types", None)
    return hook() if callable(hook) else getattr(type(obj), "_components", None)


def _split_state(obj: Any, skip: set[str], where: str, prefix: str,
                 arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """Public fitted attributes (``name_``) of obj: scalars returned, arrays added to ``arrays``."""
    scalars: dict[str, Any] = {}
    sparse: dict[str, list[int]] = {}
    for key, value in vars(obj).items():
        if not key.endswith("_") or key.startswith("_") or key in skip:
            continue
        if sp.issparse(value):
            csr = sp.csr_matrix(value)
            sparse[key] = list(csr.shape)
            for part in ("data", "indices", "indptr"):
                arrays[f"{prefix}{key}.{part}"] = np.ascontiguousarray(getattr(csr, part))
        elif isinstance(value, np.ndarray):
            if value.dtype == object:
                raise TypeError(f"{where}.{key}: object arrays cannot be stored in safetensors")
            arrays[prefix + key] = value
        elif isinstance(value, np.generic):
            scalars[key] = value.item()
        elif isinstance(value, _SCALARS):
            scalars[key] = value
        else:
            raise TypeError(f"{where}.{key}: cannot serialise a {type(value).__name__}")
    return {"attrs": scalars, "sparse": sparse} if sparse else {"attrs": scalars}


def _json_params(obj: Any, where: str) -> dict[str, Any]:
    params = obj.get_params(deep=False)
    for key, value in params.items():
        if not isinstance(value, _SCALARS):
            raise TypeError(f"{where} param {key}={value!r} is not JSON-serialisable (use an int seed)")
    return params


def _dump(obj: Any, label: str, prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """JSON document of one fitted estimator; its arrays go into ``arrays`` under ``prefix``."""
    components = _component_types(obj)
    if components is None:
        raise NotImplementedError(
            f"{type(obj).__name__} ({label!r}) does not support save/load; serialisable detectors: "
            "mahalanobis, pca, knn, logistic, diffmean, repe_pca, lpm, mlpm, softauc, stack (optionally after a pca/rp reducer)"
        )
    check_is_fitted(obj)
    skip = set(components) | set(getattr(obj, "_rebuilt_on_load", ()))
    doc: dict[str, Any] = {"params": _json_params(obj, label), **_split_state(obj, skip, label, prefix, arrays),
                           "components": {}}
    for attr, cls in components.items():
        sub = getattr(obj, attr)
        if type(sub) is not cls:
            raise TypeError(f"{label}.{attr} is a {type(sub).__name__}, expected {cls.__name__}")
        doc["components"][attr] = {"params": _json_params(sub, attr),
                                   **_split_state(sub, set(), f"{label}.{attr}", f"{prefix}{attr}.", arrays)}
    return doc


def _restore_attrs(target: Any, doc: dict[str, Any], prefix: str, arrays: dict[str, np.ndarray],
                   fortran: set[str]) -> None:
    for key, value in doc["attrs"].items():
        setattr(target, key, value)
    for key, shape in doc.get("sparse", {}).items():
        parts = [arrays[f"{prefix}{key}.{p}"] for p in ("data", "indices", "indptr")]
        setattr(target, key, sp.csr_matrix(tuple(parts), shape=tuple(shape)))
    sparse_keys = {f"{prefix}{k}.{p}" for k in doc.get("sparse", {}) for p in ("data", "indices", "indptr")}
    for key, value in arrays.items():
        if key.startswith(prefix) and "." not in key[len(prefix):] and key not in sparse_keys:
            setattr(target, key[len(prefix):], np.asfortranarray(value) if key in fortran else value)


def _load(obj: Any, doc: dict[str, Any], prefix: str, arrays: dict[str, np.ndarray], fortran: set[str]) -> Any:
    """Fill a freshly constructed estimator from its document (inverse of :func:`_dump`)."""
    components = _component_types(obj) or {}
    _restore_attrs(obj, doc, prefix, arrays, fortran)
    for attr, sub_doc in doc["components"].items():
        if attr not in components:
            raise ValueError(f"{type(obj).__name__} has no component {attr!r}")
        sub = components[attr](**sub_doc["params"])
        _restore_attrs(sub, sub_doc, f"{prefix}{attr}.", arrays, fortran)
        setattr(obj, attr, sub)
    if hasattr(obj, "_after_load"):
        obj._after_load()
    return obj


def _reducers() -> dict[str, type]:
    return {"PCAReduce": PCAReduce, "RandomProjection": RandomProjection}


def detector_to_dict(detector: BaseDetector | Pipeline) -> dict[str, Any]:
    """Fitted detector (or reducer + detector Pipeline) -> ``{"meta": JSON dict, "arrays": {...}}``."""
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    if isinstance(detector, Pipeline):
        steps = detector.steps
        if len(steps) != 2 or type(steps[0][1]).__name__ not in _reducers() or not isinstance(steps[1][1], BaseDetector):
            raise NotImplementedError("only Pipelines of one kvstate.reduce reducer and one detector can be saved")
        (r_name, reducer), (d_name, det) = steps
        meta["steps"] = [r_name, d_name]
        meta["reducer"] = {"type": type(reducer).__name__, **_dump(reducer, r_name, "reducer.", arrays)}
        detector = det
    meta.update(name=detector.name, **_dump(detector, detector.name, "", arrays))
    # memory layout changes BLAS summation order; keep it so loaded scores are bit-identical
    meta["fortran_arrays"] = sorted(k for k, v in arrays.items()
                                    if v.ndim > 1 and v.flags.f_contiguous and not v.flags.c_contiguous)
    # every tensor the estimator needs, with its dtype and shape: load refuses a file that lacks one
    meta["tensors"] = {k: [v.dtype.str, list(v.shape)] for k, v in sorted(arrays.items())}
    return {"meta": meta, "arrays": {k: np.ascontiguousarray(v) for k, v in arrays.items()}}


def check_tensors(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """One-line ``ValueError`` when a tensor the document lists is missing, has another dtype or
    shape, or when any floating-point tensor holds NaN or infinity (it would score NaN, never flag)."""
    wanted = meta.get("tensors")
    if wanted is not None:
        if not isinstance(wanted, dict):
            raise ValueError("its tensor list is not an object")
        missing, extra = sorted(set(wanted) - set(arrays)), sorted(set(arrays) - set(wanted))
        if missing or extra:
            raise ValueError(f"tensors {'missing: ' + ', '.join(missing) if missing else 'not listed: ' + ', '.join(extra)}")
        for key, spec in wanted.items():
            got = [arrays[key].dtype.str, list(arrays[key].shape)]
            if not (isinstance(spec, list) and len(spec) == 2) or [spec[0], list(spec[1])] != got:
                raise ValueError(f"tensor {key} is {got[0]} {tuple(got[1])}, expected {spec}")
    for key, value in sorted(arrays.items()):
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise ValueError(f"tensor {key} holds NaN or infinite weights")


def _smoke(estimator: Any) -> None:
    """Score one zero row: a file missing a fitted array (written before tensor lists) fails here, not later."""
    width = getattr(estimator, "n_features_in_", None)
    if not isinstance(width, int) or width < 1:
        raise ValueError("no input width (n_features_in_) in its fitted state")
    try:
        with np.errstate(all="ignore"):
            scores = np.asarray(estimator.decision_function(np.zeros((1, width))))
    except Exception as e:  # noqa: BLE001 - any failure here is a malformed fitted state
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"its fitted state is incomplete ({type(e).__name__}: {why})") from None
    if scores.shape != (1,):
        raise ValueError(f"it scores one row as shape {scores.shape}, expected (1,)")


def detector_from_dict(data: dict[str, Any]) -> BaseDetector | Pipeline:
    """Inverse of :func:`detector_to_dict`; refuses missing, mis-shaped or non-finite tensors."""
    meta, arrays = data["meta"], data["arrays"]
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"not a {FORMAT} v{VERSION} document: {meta.get('format')} v{meta.get('version')}")
    check_tensors(meta, arrays)
    fortran = set(meta.get("fortran_arrays", []))
    det_arrays = {k: v for k, v in arrays.items() if not k.startswith("reducer.")}
    detector = _load(get_detector(meta["name"], **meta["params"]), meta, "", det_arrays, fortran)
    if "reducer" not in meta:
        return detector
    r_doc = meta["reducer"]
    reducers = _reducers()
    if r_doc["type"] not in reducers:
        raise ValueError(f"unknown reducer {r_doc['type']!r}. Available: {', '.join(reducers)}")
    reducer = _load(reducers[r_doc["type"]](**r_doc["params"]), r_doc, "reducer.", arrays, fortran)
    r_name, d_name = meta["steps"]
    return Pipeline([(r_name, reducer), (d_name, detector)])


def save_detector(detector: BaseDetector | Pipeline, path: str | PathLike[str]) -> None:
    """Write a fitted detector (or reducer + detector Pipeline) to one ``.safetensors`` file."""
    data = detector_to_dict(detector)
    atomic_write(path, lambda tmp: save_file(data["arrays"], str(tmp), metadata={"kvstate": json.dumps(data["meta"])}))


def load_detector(path: str | PathLike[str]) -> BaseDetector | Pipeline:
    """Read what :func:`save_detector` wrote; scores are bit-identical."""
    try:
        with safe_open(str(path), framework="np") as f:
            header = f.metadata() or {}
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type and OSError
        raise ValueError(f"{path}: not a readable detector file ({str(e).splitlines()[0]}); it may be truncated, "
                         "re-create it with `kvstate train-monitor`") from None
    if "kvstate" not in header:
        raise ValueError(f"{path}: no kvstate metadata; not written by save_detector")
    try:
        estimator = detector_from_dict({"meta": json.loads(header["kvstate"]), "arrays": arrays})
        _smoke(estimator)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a kvstate detector ({type(e).__name__}: {e}); "
                         "re-create it with `kvstate train-monitor`") from None
    except ValueError as e:
        raise ValueError(f"{path}: {str(e).splitlines()[0]}; re-create it with `kvstate fit` or `kvstate train-monitor`") from None
    return estimator
