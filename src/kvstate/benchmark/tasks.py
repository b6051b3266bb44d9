"""Tasks as sets of sources, each with a role: training, calibration (benign traffic that sets
thresholds) or test only, and the test benchmarks built from the test parts.

A source is a suite (:func:`kvstate.data.load_suite`: a built-in or public suite, a file, or
``hf:...``). Its items are split by group, under the seed, into the roles' fractions, so one source
may train, calibrate and test (disjoint groups), and ``limit`` caps it first. Before any model
work, near-duplicates across sources are found (:func:`kvstate.data.dedup.near_duplicates`); a
calibration or test item that duplicates a training item is dropped and counted.

Examples
--------
>>> t = TASKS["truth"]
>>> [s.suite for s in t.sources if "train" in s.roles]
['got-cities', 'got-neg-cities', 'got-sp-en-trans']
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from ..data import Item, load_suite
from ..data.dedup import near_duplicates

__all__ = ["ROLES", "TASKS", "Role", "SourceSpec", "TaskData", "TaskSpec", "TestSpec", "prepare_task", "task_from_dict"]

Role = Literal["train", "calibration", "test"]
ROLES: tuple[str, ...] = get_args(Role)


@dataclass(frozen=True)
class SourceSpec:
    """One source of a task: a suite name and the share of its groups each role gets.

    ``labels`` keeps only items with these labels (e.g. ``(0,)``: a source's benign half as
    calibration traffic); ``limit`` caps the source (whole groups, chosen by a seeded hash) before it is split.
    """

    suite: str
    roles: dict[str, float]
    limit: int | None = None
    labels: tuple[int, ...] = (0, 1)

    def __post_init__(self):
        bad = sorted(set(self.roles) - set(ROLES))
        if bad or not self.roles:
            raise ValueError(f"source {self.suite!r}: roles {bad or '{}'} unknown; use {', '.join(ROLES)}")
        if any(f <= 0 for f in self.roles.values()) or abs(sum(self.roles.values()) - 1.0) > 1e-6:
            raise ValueError(f"source {self.suite!r}: role fractions {self.roles} must be positive and sum to 1")


@dataclass(frozen=True)
class TestSpec:
    """A test benchmark: the pooled test parts of ``sources`` (e.g. HarmBench against held-out benign
    instructions), and the published anchor number for the same protocol where one exists."""

    name: str
    sources: tuple[str, ...]
    anchor: str = ""
    __test__ = False  # not a pytest class


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    sources: tuple[SourceSpec, ...]
    tests: tuple[TestSpec, ...]

    def __post_init__(self):
        names = [s.suite for s in self.sources]
        for t in self.tests:
            missing = sorted(set(t.sources) - {s.suite for s in self.sources if "test" in s.roles})
            if missing:
                raise ValueError(f"task {self.name!r}: test {t.name!r} names {missing}, which have no test role; "
                                 f"give them roles = {{test = ...}} among the sources {names}")
        for role in ("train", "calibration"):
            if not any(role in s.roles for s in self.sources):
                raise ValueError(f"task {self.name!r} has no {role} source; give one source a {role} role")


def _anchor_2604() -> str:
    return "0.96 worst-case AUROC, AdvBench -> HarmBench/JailbreakBench, 0.5B-1.3B models (arXiv 2604.18901)"


GOT = "geometry-of-truth (Marks & Tegmark 2023); truth probes are trained on cities/neg_cities (arXiv 2407.12831)"

TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec(
        "harmful-request", "harmful (1) vs benign (0) requests, read at the prompt (no reply)",
        sources=(
            SourceSpec("advbench", {"train": 1.0}),
            SourceSpec("donotanswer", {"train": 1.0}),
            SourceSpec("misuse", {"train": 1.0}),
            SourceSpec("self-instruct", {"train": 1.0}),
            SourceSpec("rho-overrefusal", {"train": 1.0}),
            SourceSpec("halueval-general-queries", {"train": 0.3, "calibration": 0.35, "test": 0.35}, limit=2400),
            SourceSpec("benign-chat", {"calibration": 1.0}, limit=300),
            SourceSpec("harmbench", {"test": 1.0}),
            SourceSpec("maliciousinstruct", {"test": 1.0}),
            SourceSpec("xstest", {"test": 1.0}),
            SourceSpec("jailbreak-pairs", {"test": 1.0}, limit=600),
        ),
        tests=(
            TestSpec("harmbench", ("harmbench", "halueval-general-queries"), _anchor_2604()),
            TestSpec("maliciousinstruct", ("maliciousinstruct", "halueval-general-queries")),
            TestSpec("xstest", ("xstest",), "unsafe-class F1 0.89 for 1B latent-prototype moderators (arXiv 2502.16174)"),
            TestSpec("jailbreak-pairs", ("jailbreak-pairs",)),
        )),
    TaskSpec(
        "truth", "false (1) vs true (0) statements, read at the statement's end",
        sources=(
            SourceSpec("got-cities", {"train": 0.8, "calibration": 0.2}),
            SourceSpec("got-neg-cities", {"train": 0.8, "calibration": 0.2}),
            SourceSpec("got-sp-en-trans", {"train": 0.8, "calibration": 0.2}),
            SourceSpec("got-neg-sp-en-trans", {"test": 1.0}),
            SourceSpec("got-larger-than", {"test": 1.0}, limit=800),
            SourceSpec("got-smaller-than", {"test": 1.0}, limit=800),
            SourceSpec("got-companies", {"test": 1.0}, limit=800),
            SourceSpec("got-common-claim", {"test": 1.0}, limit=800),
            SourceSpec("got-counterfact", {"test": 1.0}, limit=800),
        ),
        tests=tuple(TestSpec(n, (f"got-{n}",), GOT) for n in
                    ("neg-sp-en-trans", "larger-than", "smaller-than", "companies", "common-claim", "counterfact"))),
)}


def task_from_dict(d: dict[str, Any]) -> TaskSpec:
    """A task from a TOML ``[benchmark.task]`` table: ``name``, ``description``, ``sources`` (a list
    of tables with ``suite``, ``roles``, optional ``limit`` and ``labels``) and ``tests`` (a table
    name -> list of source suites)."""
    try:
        sources = tuple(SourceSpec(s["suite"], dict(s["roles"]), s.get("limit"), tuple(s.get("labels", (0, 1))))
                        for s in d["sources"])
        tests = tuple(TestSpec(k, tuple(v)) for k, v in d["tests"].items())
        return TaskSpec(str(d["name"]), str(d.get("description", "")), sources, tests)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"bad task table ({type(exc).__name__}: {exc}); expected name, sources = [{{suite, roles}}], "
                         "tests = {name = [suites]}") from None


# ----------------------------------------------------------------------------------------- data
@dataclass
class TaskData:
    """A task's items after the split and the duplicate check: ``parts[role]`` lists items whose
    ``source`` is their suite; ``duplicates`` the cross-source near-duplicate report, ``dropped``
    the calibration / test items removed for duplicating a training item, per source."""

    task: TaskSpec
    parts: dict[str, list[Item]]
    duplicates: pd.DataFrame
    dropped: dict[str, int] = field(default_factory=dict)

    def test_items(self, test: TestSpec) -> list[Item]:
        return [it for it in self.parts["test"] if it.source in test.sources]


def unit_hash(seed: int, key: str) -> float:
    """A seeded, uniform number in [0, 1) for ``key``: the order in which groups are split and capped."""
    h = hashlib.sha256(f"kvstate-benchmark:{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def _split(items: list[Item], spec: SourceSpec, seed: int) -> dict[str, list[Item]]:
    items = [it for it in items if it.label in spec.labels]
    groups = sorted({it.group for it in items}, key=lambda g: unit_hash(seed, f"{spec.suite}/{g}"))
    if spec.limit is not None:  # whole groups, in hash order, until the cap
        keep, n = set(), 0
        sizes = pd.Series([it.group for it in items]).value_counts().to_dict()
        for g in groups:
            if n >= spec.limit:
                break
            keep.add(g)
            n += sizes[g]
        groups = [g for g in groups if g in keep]
    edges = np.cumsum([spec.roles[r] for r in spec.roles]) * len(groups)
    role_of = {g: list(spec.roles)[int(np.searchsorted(edges, i, side="right"))] for i, g in enumerate(groups)}
    out: dict[str, list[Item]] = {r: [] for r in spec.roles}
    for it in items:
        if it.group in role_of:
            out[role_of[it.group]].append(replace(it, id=f"{spec.suite}/{it.id}", group=f"{spec.suite}/{it.group}",
                                                  source=spec.suite, split=role_of[it.group]))
    return out


def request_text(it: Item) -> str:
    """The text compared for duplicates: the teacher-forced reply when there is one (a statement
    after "Tell me a fact."), else the last user turn (the request itself)."""
    if it.response:
        return it.response
    users = [m["content"] for m in it.messages if m["role"] == "user"]
    return users[-1] if users else it.text()


def prepare_task(task: TaskSpec, *, seed: int = 0, threshold: float = 0.8) -> TaskData:
    """Load, cap and split every source; find cross-source near-duplicates (Jaccard >= threshold);
    drop each calibration or test item that duplicates a training item. No model is loaded."""
    parts: dict[str, list[Item]] = {r: [] for r in ROLES}
    for spec in task.sources:
        suite = load_suite(spec.suite, seed=seed)
        if suite.generation is not None and spec.suite != "benign-chat":
            raise ValueError(f"source {spec.suite!r} needs the model's own replies; the benchmark reads prompts and "
                             "teacher-forced replies only")
        items = [it for it in suite.items if it.label in (0, 1)]
        for role, its in _split(items, spec, seed).items():
            parts[role] += its
    every = [(role, it) for role in ROLES for it in parts[role]]
    keys = [f"{it.source}:{role}" for role, it in every]
    by_key: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        by_key.setdefault(k, []).append(i)
    texts = {k: [request_text(every[i][1]) for i in idx] for k, idx in by_key.items()}
    pairs = near_duplicates(texts, threshold=threshold)
    drop: set[int] = set()
    for r in pairs.itertuples(index=False):
        a, b = by_key[r.source_a][r.index_a], by_key[r.source_b][r.index_b]
        ra, rb = every[a][0], every[b][0]
        if ra == "train" and rb != "train":
            drop.add(b)
        elif rb == "train" and ra != "train":
            drop.add(a)
    dropped: dict[str, int] = {}
    for i in sorted(drop):
        role, it = every[i]
        dropped[f"{it.source}:{role}"] = dropped.get(f"{it.source}:{role}", 0) + 1
    kept = {r: [it for i, (role, it) in enumerate(every) if role == r and i not in drop] for r in ROLES}
    return TaskData(task, kept, pairs, dropped)
