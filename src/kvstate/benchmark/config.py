"""What a benchmark run does: :class:`BenchmarkConfig` (a ``[benchmark]`` TOML table), saved
with its results so every number can be traced to its settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..detect import DETECTORS
from ..representations import RepresentationSettings

__all__ = ["DEFAULT_REPRESENTATIONS", "BenchmarkConfig"]

#: the candidates leave-one-source-out chooses among: KV states, activations, controls
DEFAULT_REPRESENTATIONS = (
    "kv-identity-S/n", "kv-elu-S/n", "kv-elu-S/n-hn", "kv-identity-S/n-pre", "kv-elu-S/n-pre",
    "kv-identity-S/n-pre-content", "kv-elu-S/n-pre-content", "kv-elu-z/n", "kv-elu-attn",
    "act-resid-last", "act-resid-mean", "act-heads-last",
    "ctl-bow", "ctl-length",
)


@dataclass
class BenchmarkConfig:
    """Settings of a benchmark run.

    Parameters
    ----------
    task : str, default="harmful-request"
        A built-in task (:data:`kvstate.benchmark.TASKS`); a TOML config may instead give a whole
        ``[benchmark.task]`` table.
    models : list of str
        Named models or local HF folders, run one after the other into the same output folder.
    layers : str, default="upper3"
        Layers whose states and activations are read (:func:`kvstate.capture.select_layers`).
    representations, detectors : list of str
        The candidates; each (representation, detector) gets a leave-one-source-out AUROC.
    sweep : bool, default=False
        Also record every layer (``sweep-kv/<L>``: the identity state S/n per head-normalised, and
        ``sweep-resid/<L>``), each stored through a fixed seeded Gaussian projection above
        ``max_dim`` = 2048 values (data-independent, so chosen on nothing). Candidates then include
        each layer with ``sweep_detectors`` and all layers side by side (``sweep-kv/all``,
        ``sweep-resid/all``) with ``multilayer_detectors`` (per-layer blocks).
    max_per_source : int or None
        Caps every source (after its own ``limit``): for quick runs and tests.
    fpr : float, default=0.01
        The calibration set's false-positive rate that sets each threshold.
    """

    task: str = "harmful-request"
    models: list[str] = field(default_factory=lambda: ["smollm2-135m"])
    seed: int = 0
    layers: str = "upper3"
    phis: list[str] = field(default_factory=lambda: ["identity", "elu"])
    representations: list[str] = field(default_factory=lambda: list(DEFAULT_REPRESENTATIONS))
    detectors: list[str] = field(default_factory=lambda: ["logistic", "diffmean", "lpm"])
    sweep: bool = False
    sweep_detectors: list[str] = field(default_factory=lambda: ["lpm"])
    multilayer_detectors: list[str] = field(default_factory=lambda: ["mlpm", "stack"])
    max_per_source: int | None = None
    duplicate_threshold: float = 0.8
    fpr: float = 0.01
    n_splits: int = 3
    n_boot: int = 1000
    reduce_above: int = 512
    dtype: str = "bfloat16"
    batch_size: int = 16
    chunk: int = 64
    max_tokens: int = 256

    def __post_init__(self):  # every check before any model is loaded
        unknown = sorted(set(self.detectors + self.sweep_detectors + self.multilayer_detectors) - set(DETECTORS))
        if unknown:
            raise ValueError(f"unknown detectors {unknown}; available: {', '.join(sorted(DETECTORS))}")
        for name in ("models", "representations", "detectors", "phis"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty; name at least one (or leave it out for the default)")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16; got {self.dtype!r}")
        if not 0 < self.fpr < 1:
            raise ValueError(f"fpr must be between 0 and 1; got {self.fpr}")
        if not 0 < self.duplicate_threshold <= 1:
            raise ValueError(f"duplicate_threshold must be in (0, 1]; got {self.duplicate_threshold}")
        for name, low in (("n_splits", 2), ("n_boot", 1), ("batch_size", 1), ("chunk", 1), ("max_tokens", 8)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}; got {getattr(self, name)}")
        if self.max_per_source is not None and self.max_per_source < 2:
            raise ValueError(f"max_per_source must be >= 2 or left out; got {self.max_per_source}")

    def settings(self, layers: tuple[int, ...]) -> RepresentationSettings:
        """What is recorded: the config's feature maps at ``layers`` (and every layer with ``sweep``)."""
        return RepresentationSettings(layers=layers, phis=tuple(self.phis), ablation_phis=tuple(self.phis[:2]),
                                      sweep=self.sweep, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
