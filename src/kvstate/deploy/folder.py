"""A detector folder: a fitted detector for one model and one stored representation, with the
threshold set on benign chat and where everything came from.

    DIR/detector.json          format, model, dtype, representation, capture settings, threshold,
                               fpr, calibration provenance, training provenance
    DIR/estimator.safetensors  the fitted estimator (:mod:`kvstate.detect.serialize`; no pickle)
    DIR/phi/                   files the capture settings name (a learned phi), so the folder travels
                               (:mod:`kvstate.deploy.bundle`)

It scores prompts by capturing the representation it was fitted on, in the same chunks and batches
as a study (:func:`kvstate.store.chunks.capture_chunk`), so its features equal the stored ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError

from .._io import atomic_dir, read_json, write_json
from .._version import __version__
from ..detect import is_supervised, load_detector, make_detector, save_detector, threshold_for_fpr
from ..evaluate import fit_clone
from ..models import DTYPES, LoadedModel
from ..representations import RepName, RepresentationSettings
from ..store import capture_chunk
from .bundle import bundle, check_settings_types, resolve

__all__ = ["FORMAT", "Detector", "fit_detector"]

FORMAT = "kvstate-detector/1"
READS = ("prompt_end", "end")  # what a study captures; the stored names carry these read suffixes


def _records(prompts: Sequence[Any], start: int = 0) -> list[dict]:
    """Plain records for :func:`capture_chunk` from prompts, chat lists, dicts or suite items."""
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            p = {"messages": [{"role": "user", "content": p}]}
        elif isinstance(p, list):
            p = {"messages": p}
        elif not isinstance(p, dict):
            p = {"messages": p.messages, "response": p.response, "id": p.id, "label": p.label, "group": p.group}
        out.append({"item_key": str(start + i), "id": str(p.get("id", start + i)), "label": int(p.get("label", -1)),
                    "group": str(p.get("group", start + i)), "split": "score", "messages": p["messages"],
                    "response": p.get("response")})
    return out


@dataclass
class Detector:
    """A fitted detector bound to the model and capture settings its features need.

    Parameters
    ----------
    estimator : fitted kvstate detector or reducer + detector Pipeline
    representation : str
        The stored representation it reads, e.g. ``"kv-elu-S/n-hn@end"``.
    model, dtype : str
        The model (as :func:`kvstate.models.model_name` names it) and dtype of its features.
    settings : dict
        ``RepresentationSettings.to_dict()`` of the capture.
    threshold, fpr : float or None
        Flag ``score > threshold``; set by :meth:`calibrate` at ``fpr`` on benign prompts.
    calibration, training : dict
        Provenance: which prompts set the threshold, which data fitted the estimator.
    """

    estimator: Any
    representation: str
    model: str
    dtype: str
    settings: dict
    threshold: float | None = None
    fpr: float | None = None
    calibration: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    @property
    def supervised(self) -> bool:
        return is_supervised(self.estimator)

    # -- binding ----------------------------------------------------------------------------
    def check_model(self, lm: LoadedModel) -> None:
        """One-line error when ``lm`` is not the model (or dtype) the detector was fitted on."""
        if (lm.name, lm.dtype) != (self.model, self.dtype):
            raise ValueError(f"this detector was fitted on {self.model} ({self.dtype}) features, but the model given is "
                             f"{lm.name} ({lm.dtype}); load {self.model} with dtype={self.dtype} or fit a detector for {lm.name}")

    def check_settings(self, settings: dict) -> None:
        """One-line error when capture settings differ from the detector's."""
        mine = RepresentationSettings.from_dict(self.settings).to_dict()
        other = RepresentationSettings.from_dict(dict(settings)).to_dict()
        diff = sorted(k for k in set(mine) | set(other) if mine.get(k) != other.get(k))
        if diff:
            raise ValueError("capture settings differ from the detector's: " + "; ".join(
                f"{k}: detector {mine.get(k)!r}, given {other.get(k)!r}" for k in diff) + "; refit the detector")

    # -- scoring ----------------------------------------------------------------------------
    def features(self, lm: LoadedModel, prompts: Sequence[Any], *, batch_size: int = 8, chunk: int = 32,
                 start: int = 0) -> np.ndarray:
        """(n, D) features of ``prompts``: the stored representation, captured as a study does."""
        self.check_model(lm)
        settings = RepresentationSettings.from_dict(self.settings)
        parts = []
        for s in range(0, len(prompts), chunk):
            _, arrays = capture_chunk(lm, _records(prompts[s : s + chunk], start + s), settings, batch_size=batch_size,
                                      reads=READS)
            parts.append(arrays[self.representation])
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    def decision_function(self, X: Any) -> np.ndarray:
        """Scores of stored features (higher = more anomalous / positive)."""
        return np.asarray(self.estimator.decision_function(X), dtype=float)

    def score(self, lm: LoadedModel, prompts: Sequence[Any], **kwargs) -> np.ndarray:
        """Scores of ``prompts`` (strings, chats, {"messages", "response"} dicts or suite items)."""
        return self.decision_function(self.features(lm, prompts, **kwargs))

    def flag(self, scores: Iterable[float]) -> np.ndarray:
        """``scores > threshold``; needs a calibrated threshold."""
        if self.threshold is None:
            raise ValueError("this detector has no threshold; calibrate it on benign prompts first (kvstate fit --fpr)")
        return np.asarray(list(scores), dtype=float) > self.threshold

    def calibrate(self, scores: Sequence[float], *, fpr: float = 0.01, source: str = "", provenance: Any = None) -> float:
        """Set the threshold at ``fpr`` of benign ``scores`` (:func:`kvstate.detect.threshold_for_fpr`)."""
        scores = np.asarray(scores, dtype=float)
        if scores.size < 2:
            raise ValueError(f"calibration needs at least 2 benign scores (got {scores.size}); use ~1/fpr of them")
        self.threshold, self.fpr = threshold_for_fpr(scores, fpr), float(fpr)
        self.calibration = {"source": source, "n": int(scores.size), "fpr": float(fpr),
                            "realised_fpr": float(np.mean(scores > self.threshold)), "provenance": provenance}
        return self.threshold

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the folder whole: into a new folder beside ``path``, then swapped in for the old one.

        A failed write (a full disk) leaves the old folder as it was and no half-written one; files
        in an old detector folder that the new one does not write (a README) are carried over. An
        existing folder that is not a detector folder (no ``detector.json``) and not empty is refused.
        """
        path = self.check_target(path)
        try:
            atomic_dir(path, self._write)
        except (OSError, SafetensorError) as e:  # safetensors reports a full disk as its own error
            raise ValueError(f"cannot write the detector folder {path} ({e.strerror or e}); "
                             f"{'the old folder is unchanged; ' if path.exists() else ''}free space or choose another -o") from None
        return path

    @staticmethod
    def check_target(path: str | Path) -> Path:
        """One-line error, before any fitting, when ``path`` is a file or a non-empty folder that is not
        a detector folder (:meth:`save` replaces a detector folder whole, so nothing else may sit there)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"{path} is a file; give a folder for the detector")
        if path.is_dir() and any(path.iterdir()) and not (path / "detector.json").is_file():
            raise ValueError(f"{path} exists and is not a detector folder (no detector.json); choose another -o")
        return path

    def _write(self, folder: Path) -> None:
        """The folder's files (estimator, then detector.json), each written atomically."""
        settings = bundle(self.settings, folder)  # a learned phi travels inside the folder
        save_detector(self.estimator, folder / "estimator.safetensors")
        doc = {"format": FORMAT, "kvstate_version": __version__, **{k: v for k, v in asdict(self).items() if k != "estimator"},
               "settings": settings, "estimator": type(getattr(self.estimator, "_final_estimator", self.estimator)).__name__}
        write_json(folder / "detector.json", doc)

    @classmethod
    def load(cls, path: str | Path) -> "Detector":
        """Read a folder written by :meth:`save`; one-line errors name the file."""
        path = Path(path)
        if not (path / "detector.json").is_file():
            raise ValueError(f"{path} is not a detector folder (no detector.json); make one with `kvstate fit`")
        doc = read_json(path / "detector.json", "detector file")
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"{path / 'detector.json'}: not a {FORMAT} file; re-create it with `kvstate fit`")
        doc = _checked(doc, path)
        try:
            estimator = load_detector(path / "estimator.safetensors")
        except Exception as e:  # noqa: BLE001 - any failure to read the estimator is one message
            raise ValueError(f"{path / 'estimator.safetensors'}: cannot read the fitted estimator "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); re-create it with `kvstate fit`") from None
        keep = {k: doc[k] for k in ("representation", "model", "dtype", "settings", "threshold", "fpr", "calibration",
                                    "training") if k in doc}
        return cls(estimator, **keep)


def _checked(doc: dict, path: Path) -> dict:
    """detector.json's fields, each of its type and range (one-line ``ValueError`` naming the field),
    with the files its settings name resolved inside the folder."""
    where = path / "detector.json"
    for key in ("representation", "model", "dtype", "settings"):
        if key not in doc:
            raise ValueError(f"{where}: no {key!r} field; re-create the folder with `kvstate fit`")
    for key in ("representation", "model", "dtype"):
        if not isinstance(doc[key], str) or not doc[key]:
            raise ValueError(f"{where}: {key} must be a non-empty string; got {doc[key]!r}")
    try:
        RepName.parse(doc["representation"])
    except ValueError as e:
        raise ValueError(f"{where}: representation {doc['representation']!r} is not a representation name "
                         f"({str(e).splitlines()[0]})") from None
    if doc["dtype"] not in DTYPES:
        raise ValueError(f"{where}: dtype must be one of {', '.join(DTYPES)}; got {doc['dtype']!r}")
    for key, low, high in (("threshold", -math.inf, math.inf), ("fpr", 0.0, 1.0)):
        value = doc.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low < value < high:
            want = "a finite number" if key == "threshold" else "a number between 0 and 1"
            raise ValueError(f"{where}: {key} must be {want} or null; got {value!r}; re-calibrate with `kvstate fit --fpr`")
    for key in ("calibration", "training"):
        if not isinstance(doc.get(key, {}), dict):
            raise ValueError(f"{where}: {key} must be an object; got {doc[key]!r}")
    check_settings_types(doc["settings"], where)
    settings = resolve(doc["settings"], path, where)
    try:
        RepresentationSettings.from_dict(settings).feature_maps()  # every phi known, a learned map readable
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise ValueError(f"{where}: settings are not valid capture settings ({str(e).splitlines()[0]})") from None
    return {**doc, "settings": settings}


def fit_detector(X: np.ndarray, y: np.ndarray, representation: str, detector: str, *, model: str, dtype: str,
                 settings: dict, seed: int = 0, reduce_above: int = 512, training: dict | None = None) -> Detector:
    """Fit ``detector`` (a registry name, behind PCA when wide and unsupervised, as in the study) on
    stored features: probes on every item, unsupervised detectors on the normal ones."""
    RepName.parse(representation)
    X, y = np.asarray(X), np.asarray(y).astype(int)
    est = fit_clone(make_detector(detector, X.shape[1], reduce_above=reduce_above, seed=seed), X, y)
    info = {"n": int(y.size), "label_counts": {str(c): int((y == c).sum()) for c in (0, 1)}, "detector": detector,
            **(training or {})}
    return Detector(est, representation, model, dtype, dict(settings), training=info)
