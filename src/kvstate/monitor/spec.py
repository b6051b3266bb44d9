"""A monitor on disk: ``monitor.json`` (representation, layers, phi, threshold, ...) beside
``detector.safetensors`` (:mod:`kvstate.detect.serialize`); no pickle."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._io import read_json, write_json
from ..deploy import Detector
from ..detect import load_detector, save_detector
from ..representations import RepresentationSettings, parse_kv_name

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
    """Folder with monitor.json + detector.safetensors (written atomically, file by file)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_detector(detector, path / "detector.safetensors")
    write_json(path / "monitor.json", asdict(spec))
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
    try:
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        spec = MonitorSpec(**doc)
        spec.rope  # noqa: B018 - the representation name must parse
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise ValueError(f"{path / 'monitor.json'}: not a monitor file ({e}); re-create it with `kvstate train-monitor`") from None
    return spec, load_detector(path / "detector.safetensors")
