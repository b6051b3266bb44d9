"""What a study runs: :class:`StudyConfig`, saved in results.json so the numbers can be traced."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal, Union, get_args, get_origin, get_type_hints

from .._options import Projection, check_option
from ..detect import DETECTORS
from ..monitor.aggregate import Aggregate
from ..representations import RepName, RepresentationSettings, parse_kv_name

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
    limits: dict[str, int] = field(default_factory=dict)  # items per suite by name, overriding limit (whole groups)
    seed: int = 0
    layers: str = "upper3"
    phis: list[str] = field(default_factory=lambda: ["identity", "elu", "random", "taylor"])
    learned_phi: bool = True  # also train each model's Hedgehog map (calibration prompts) and record its states
    detectors: list[str] = field(default_factory=lambda: list(UNSUPERVISED + SUPERVISED))
    all_detectors_for: list[str] = field(default_factory=lambda: list(CORE))
    representations: list[str] | None = None  # evaluate only names starting with one of these (None: all)
    n_splits: int = 5
    n_boot: int = 500
    reduce_above: int = 512  # unsupervised detectors see PCA-64 (fitted per fold) above this dim
    projection: Projection = "gaussian"  # stored vectors above 2048 dims: "gaussian" or "sparse" (a ~60x cheaper live monitor)
    decays: list[float] = field(default_factory=list)  # also record decayed states S_gamma for these gammas
    compress: list[int] = field(default_factory=list)  # [a, b]: also record the compressed state A S B^T
    deltas: bool = False  # also record the reply's own state dS/n (needs replies)
    query_states: bool = False  # also record the whole S/n and z/n (elu, end) for the virtual-query probe
    reference_queries: bool = False  # also read the states with benign reference prompts' queries (kv-<phi>-refq)
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
        check_types(self)
        check_option("projection", self.projection, Projection)
        check_option("engine", self.engine, Engine)
        check_option("monitor_aggregate", self.monitor_aggregate, Aggregate)
        RepresentationSettings(decays=tuple(self.decays), compress=tuple(self.compress))  # their checks, before any work
        for name, low in MINIMA.items():
            value = getattr(self, name)
            if value is not None and value < low:
                why = " (grouped cross-validation needs two folds)" if name == "n_splits" else ""
                raise ValueError(f"{name} must be >= {low}{why}; got {value}")
        for name, value in self.limits.items():
            if value < 1:
                raise ValueError(f"limits.{name} must be >= 1; got {value}")
        if not 0 < self.monitor_fpr < 1:
            raise ValueError(f"monitor_fpr must be between 0 and 1; got {self.monitor_fpr}")
        for name in ("models", "suites", "phis", "detectors"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty; name at least one (or leave it out for the default)")
        if self.representations is not None and not self.representations:
            raise ValueError("representations is empty; name at least one prefix (or leave it out for all)")
        unknown = sorted(set(self.detectors) - set(DETECTORS))
        if unknown:
            raise ValueError(f"unknown detectors {unknown}. Available: {', '.join(sorted(DETECTORS))}")

    def limit_of(self, suite: str) -> int | None:
        """Items of ``suite`` (a name or file) the study loads: ``limits`` by its label, else ``limit``."""
        from ..store import suite_label

        return self.limits.get(suite_label(suite), self.limit)

    @classmethod
    def quick(cls, **overrides) -> "StudyConfig":
        """A small study that runs in minutes on 2 CPU cores with the default model.

        Every task it runs is evaluated: sysprompt's labels come from the model's replies, and the
        default model keeps its rule in only some groups (a forbidden word, a secret code), so the
        suite is taken whole (240 items, 20 groups) where 84 items (7 groups) held too few groups
        with a kept rule for grouped CV. A ``limit`` given by the user applies to every suite.
        """
        base = dict(suites=["jailbreak", "truefalse", "sysprompt"], limit=84, n_boot=200, n_splits=4,
                    phis=["identity", "elu", "random"], max_new_tokens=24, max_tokens=384, monitor_items=16)
        if "limit" not in overrides:
            base["limits"] = {"sysprompt": 240}
        return cls(**{**base, **overrides})


#: the smallest value each numeric setting accepts
MINIMA = {"limit": 1, "n_splits": 2, "n_boot": 1, "reduce_above": 1, "batch_size": 1, "chunk": 1,
          "max_new_tokens": 1, "max_tokens": 1, "monitor_items": 0, "ray_workers": 1, "monitor_every": 1,
          "calibration_items": 2}


def _matches(value, tp) -> bool:
    origin = get_origin(tp)
    if tp is type(None):
        return value is None
    if origin is Literal:
        return isinstance(value, str)  # which strings: check_option says
    if origin is Union or str(origin) == "<class 'types.UnionType'>":
        return any(_matches(value, t) for t in get_args(tp))
    if origin is list:
        (inner,) = get_args(tp)
        return isinstance(value, list) and all(_matches(v, inner) for v in value)
    if origin is dict:
        key, val = get_args(tp)
        return isinstance(value, dict) and all(_matches(k, key) and _matches(v, val) for k, v in value.items())
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def _describe(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal or tp is str:
        return "a string"
    if origin is list:
        return "a list of strings, e.g. [\"a\", \"b\"]"
    if origin is dict:
        if get_args(tp)[1] is int:
            return "a table of integers, e.g. {sysprompt = 240}"
        return "a table of lists, e.g. {jailbreak = [\"jailbreak-pairs\"]}"
    if origin is Union or str(origin) == "<class 'types.UnionType'>":
        return " or ".join("null (left out)" if t is type(None) else _describe(t) for t in get_args(tp))
    return {int: "an integer", float: "a number", bool: "true or false"}.get(tp, getattr(tp, "__name__", str(tp)))


def check_types(cfg) -> None:
    """Each setting has its declared type (a TOML typo like ``limit = "16"`` fails here, in one line)."""
    hints = get_type_hints(type(cfg), globals())
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if not _matches(value, hints[f.name]):
            got = "a string" if isinstance(value, str) else type(value).__name__
            raise ValueError(f"{f.name} must be {_describe(hints[f.name])}; got {got} {value!r}")


def check_monitor(cfg: StudyConfig, labels: list[str]) -> None:
    """The monitor settings name what the study records (one-line ``ValueError``, before any work).

    ``monitor_suites`` may name registered suites the study does not run (the default names
    jailbreak and sysprompt whatever ``suites`` says), but not an unknown name (a typo), and when
    monitors are on at least one of them must be run; ``monitor_representation`` must be a kv
    read-out (``kv-<phi>-<kind>@<read>``) of a recorded feature map at a recorded read point.
    """
    from ..data import SUITES
    from ..state import get_phi, key_name

    if not cfg.monitor_suites or cfg.monitor_items == 0:
        return
    unknown = [s for s in cfg.monitor_suites if s not in labels and s not in SUITES]
    if unknown:
        raise ValueError(f"monitor_suites names {unknown}, not a suite the study runs ({', '.join(labels)}) "
                         "nor a registered one; fix the name, or set monitor_suites = [] for no monitor")
    if not set(cfg.monitor_suites) & set(labels):
        if cfg.monitor_suites == StudyConfig().monitor_suites:
            return  # the default, and the study runs neither: no monitor, as asked for by leaving it out
        raise ValueError(f"monitor_suites {cfg.monitor_suites} names no suite the study runs ({', '.join(labels)}); "
                         "name one of them, or set monitor_suites = [] (or monitor_items = 0) for no monitor")
    rep = cfg.monitor_representation
    try:
        phi, _ = parse_kv_name(rep)
        read = RepName.parse(rep).read
    except ValueError as e:
        raise ValueError(f"monitor_representation: {str(e).splitlines()[0]}") from None
    recorded = [key_name(get_phi(p)) for p in cfg.phis] + (["learned"] if cfg.learned_phi else [])
    if phi not in recorded:
        raise ValueError(f"monitor_representation {rep!r}: feature map {phi!r} is not recorded; "
                         f"the study records {', '.join(recorded)}")
    if read not in ("end", "prompt_end"):
        raise ValueError(f"monitor_representation {rep!r} must end in @end or @prompt_end (the read points a study "
                         "records), e.g. kv-elu-S/n-hn@end")


#: settings :func:`kvstate.study.evaluate_study` may change: they act on stored vectors only
EVALUATION_SETTINGS = ("representations", "detectors", "all_detectors_for", "n_splits", "n_boot", "reduce_above")
