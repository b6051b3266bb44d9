"""A monitor on disk: ``monitor.json`` (representation, layers, phi, threshold, ...) beside
``detector.safetensors`` (:mod:`kvstate.detect.serialize`); no pickle."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._io import read_json, write_json
from ..deploy import Detector
from ..deploy.bundle import bundle, check_settings_types, resolve
from ..detect import load_detector, save_detector
from ..representations import RepresentationSettings, parse_kv_name
from ..state import get_phi

__all__ = ["MonitorSpec", "load_monitor", "save_monitor", "spec_from_detector", "spec_from_parts"]


@dataclass
class MonitorSpec:
    """How to rebuild the study's representation from a live state, and where to flag."""

    representation: str  # e.g. "kv-elu-S/n-hn@end"
    layers: list[int]
    phi: dict
    settings: dict  # RepresentationSettings.to_dict()
    threshold: float | None = None
    fpr: float | None = None
    model: str = ""
    notes: dict = field(default_factory=dict)

    def __post_init__(self):  # JSON-shaped, so a saved spec compares equal to the loaded one
        self.layers = [int(l) for l in self.layers]
        self.settings = {k: list(v) if isinstance(v, tuple) else v for k, v in dict(self.settings).items()}

    @property
    def rope(self) -> str:
        return "pre" if "-pre" in parse_kv_name(self.representation)[1] else "post"


def save_monitor(path: str | Path, spec: MonitorSpec, detector) -> Path:
    """Folder with monitor.json + detector.safetensors (written atomically, file by file); a learned
    phi is copied into ``phi/`` and named relative to the folder (:mod:`kvstate.deploy.bundle`)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    doc = asdict(spec)
    doc["settings"] = bundle(spec.settings, path)
    if doc["phi"].get("name") == "learned" and doc["phi"].get("path"):
        carried = bundle({"phis": [f"learned:{doc['phi']['path']}"]}, path)["phis"][0]
        doc["phi"] = {**doc["phi"], "path": carried.removeprefix("learned:")}
    save_detector(detector, path / "detector.safetensors")
    write_json(path / "monitor.json", doc)
    return path


def spec_from_parts(representation: str, settings: RepresentationSettings, *, threshold: float | None = None,
                    fpr: float | None = None, model: str = "", notes: dict | None = None) -> MonitorSpec:
    """The spec that rebuilds ``representation`` (a kv read-out) recorded under ``settings``."""
    try:
        phi_key, _ = parse_kv_name(representation)
    except ValueError:
        raise ValueError(f"the live monitor rebuilds kv-state read-outs from its running state; {representation!r} "
                         "is not one: fit the detector on a kv-<phi>-<kind> representation (e.g. kv-elu-S/n-hn@end)") from None
    return MonitorSpec(representation, list(settings.layers), settings.feature_map(phi_key).config(), settings.to_dict(),
                       threshold=threshold, fpr=fpr, model=model, notes=notes or {})


def spec_from_detector(det: Detector) -> MonitorSpec:
    """The monitor spec that rebuilds a detector folder's representation from the running state.

    The live state holds S, z and n of the monitored layers, so kv read-outs (``kv-<phi>-<kind>``)
    can be rebuilt; a detector on activations or controls cannot be run live (one-line error).
    """
    return spec_from_parts(det.representation, RepresentationSettings.from_dict(det.settings), threshold=det.threshold,
                           fpr=det.fpr, model=det.model,
                           notes={"detector": det.training.get("detector", ""), "source": "detector folder",
                                  "calibration": det.calibration, "dtype": det.dtype})


def load_monitor(path: str | Path):
    """(MonitorSpec, detector) from a monitor folder (:func:`save_monitor`) or a detector folder
    (``kvstate fit``, :class:`kvstate.deploy.Detector`)."""
    path = Path(path)
    if (path / "detector.json").exists() and not (path / "monitor.json").exists():
        det = Detector.load(path)
        return spec_from_detector(det), det.estimator
    if not (path / "monitor.json").exists():
        raise ValueError(f"{path} is not a monitor or detector folder (no monitor.json or detector.json); "
                         "make one with `kvstate fit` or `kvstate train-monitor`")
    doc = read_json(path / "monitor.json", "monitor file")
    where = path / "monitor.json"
    try:
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        spec = MonitorSpec(**_checked(doc, path))
        spec.rope  # noqa: B018 - the representation name must parse
        get_phi(spec.phi)  # a known feature map, a learned one readable
    except (TypeError, ValueError, AttributeError, KeyError, OSError) as e:
        raise ValueError(f"{where}: not a monitor file ({str(e).splitlines()[0]}); re-create it with "
                         "`kvstate train-monitor`") from None
    return spec, load_detector(path / "detector.safetensors")


def _checked(doc: dict, path: Path) -> dict:
    """monitor.json's fields, each of its type (a ``ValueError`` naming the field), files resolved in the folder."""
    where = path / "monitor.json"
    for key, kind in (("representation", str), ("layers", list), ("phi", dict), ("settings", dict)):
        if not isinstance(doc.get(key), kind):
            raise ValueError(f"{key} must be {'a string' if kind is str else 'a list' if kind is list else 'an object'}; "
                             f"got {doc.get(key)!r}")
    if not doc["layers"] or not all(isinstance(v, int) and not isinstance(v, bool) for v in doc["layers"]):
        raise ValueError(f"layers must be a non-empty list of layer indices; got {doc['layers']!r}")
    for key in ("threshold", "fpr"):
        value = doc.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                                  or (key == "fpr" and not 0 < value < 1)):
            raise ValueError(f"{key} must be a finite number{' in (0, 1)' if key == 'fpr' else ''} or null; got {value!r}")
    check_settings_types(doc["settings"], "settings")
    phi = dict(doc["phi"])
    if phi.get("name") == "learned" and isinstance(phi.get("path"), str):
        phi["path"] = resolve({"phis": [f"learned:{phi['path']}"]}, path, where)["phis"][0].removeprefix("learned:")
    return {**doc, "phi": phi, "settings": resolve(doc["settings"], path, where)}
