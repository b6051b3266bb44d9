"""A monitor on disk: ``monitor.json`` (representation, layers, phi, threshold, ...) beside
``detector.safetensors`` (:mod:`kvstate.detect.serialize`); no pickle."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._io import read_json, write_json
from ..detect import load_detector, save_detector
from ..representations import parse_kv_name

__all__ = ["MonitorSpec", "load_monitor", "save_monitor"]


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


def load_monitor(path: str | Path):
    """(MonitorSpec, detector) from a folder written by :func:`save_monitor`."""
    path = Path(path)
    if not (path / "monitor.json").exists():
        raise ValueError(f"{path} is not a monitor folder (no monitor.json); make one with `kvstate train-monitor`")
    doc = read_json(path / "monitor.json", "monitor file")
    try:
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        spec = MonitorSpec(**doc)
        spec.rope  # noqa: B018 - the representation name must parse
    except (TypeError, ValueError, AttributeError, KeyError) as e:
        raise ValueError(f"{path / 'monitor.json'}: not a monitor file ({e}); re-create it with `kvstate train-monitor`") from None
    return spec, load_detector(path / "detector.safetensors")
