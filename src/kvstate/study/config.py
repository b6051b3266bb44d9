"""What a study runs: :class:`StudyConfig`, saved in results.json so the numbers can be traced."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .._options import Projection, check_option
from ..monitor.aggregate import Aggregate

__all__ = ["CORE", "EVALUATION_SETTINGS", "LENGTH_MATCHED_FOR", "SUPERVISED", "UNSUPERVISED", "Engine", "StudyConfig"]

Engine = Literal["local", "ray"]

CORE = ("kv-identity-S/n", "kv-elu-S/n", "kv-elu-S/n-hn", "kv-identity-S/n-pre-content", "kv-elu-S/n-pre-content",
        "act-resid-last", "act-resid-mean", "act-heads-last", "ctl-length", "ctl-bow")
UNSUPERVISED = ("mahalanobis", "pca", "knn", "iforest", "lof")
SUPERVISED = ("logistic", "diffmean", "repe_pca")
LENGTH_MATCHED_FOR = ("mahalanobis", "logistic")  # the length-matched re-run costs a full CV; done for these


@dataclass
class StudyConfig:
    """What a study runs; saved in results.json so the numbers can be traced to their settings."""

    models: list[str] = field(default_factory=lambda: ["smollm2-135m"])
    suites: list[str] = field(default_factory=lambda: ["jailbreak", "hallucination", "deception", "sysprompt"])
    limit: int | None = 200
    seed: int = 0
    layers: str = "upper3"
    phis: list[str] = field(default_factory=lambda: ["identity", "elu", "random", "taylor"])
    detectors: list[str] = field(default_factory=lambda: list(UNSUPERVISED + SUPERVISED))
    all_detectors_for: list[str] = field(default_factory=lambda: list(CORE))
    representations: list[str] | None = None  # evaluate only names starting with one of these (None: all)
    n_splits: int = 5
    n_boot: int = 500
    reduce_above: int = 512  # unsupervised detectors see PCA-64 (fitted per fold) above this dim
    projection: Projection = "gaussian"  # stored vectors above 2048 dims: "gaussian" or "sparse" (a ~60x cheaper live monitor)
    dtype: str = "float32"
    batch_size: int = 8
    chunk: int = 32  # items per store shard (the unit of resumption)
    max_new_tokens: int = 40
    max_tokens: int = 768  # longer items are dropped (and counted) to bound O(T^2) attention work
    monitor_suites: list[str] = field(default_factory=lambda: ["jailbreak", "sysprompt"])
    monitor_representation: str = "kv-elu-S/n-hn@end"
    monitor_items: int = 60  # test-split items generated with the live monitor
    monitor_fpr: float = 0.01
    monitor_every: int = 4  # monitors score every k generated tokens
    monitor_aggregate: Aggregate = "max"  # per-reply aggregate of step scores: last, max, ema, mean
    fidelity_layers: str | None = "upper3"  # layers where linear attention is compared with softmax; None skips
    transfer: dict[str, list[str]] = field(default_factory=dict)  # training suite -> test suites of the same task
    calibration_suite: str | None = "benign-chat"  # benign prompts that set the transfer threshold
    calibration_items: int = 300
    transfer_fpr: float = 0.01
    engine: Engine = "local"  # or "ray": extraction as a Ray Data pipeline into the same store
    ray_address: str | None = None
    ray_workers: int = 2

    def __post_init__(self):  # fail before any model is loaded
        check_option("projection", self.projection, Projection)
        check_option("engine", self.engine, Engine)
        check_option("monitor_aggregate", self.monitor_aggregate, Aggregate)
        if self.monitor_every < 1:
            raise ValueError(f"monitor_every must be >= 1, got {self.monitor_every}")

    @classmethod
    def quick(cls, **overrides) -> "StudyConfig":
        """A small study that runs in minutes on 2 CPU cores with the default model."""
        base = dict(suites=["jailbreak", "truefalse", "sysprompt"], limit=84, n_boot=200, n_splits=4,
                    phis=["identity", "elu", "random"], max_new_tokens=24, max_tokens=384, monitor_items=16)
        return cls(**{**base, **overrides})


#: settings :func:`kvstate.study.evaluate_study` may change: they act on stored vectors only
EVALUATION_SETTINGS = ("representations", "detectors", "all_detectors_for", "n_splits", "n_boot", "reduce_above")
