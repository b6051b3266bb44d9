"""The main job, as a pipeline of stages: for each model x suite, generate and label replies if
needed (:mod:`.generate`), capture every representation in one pass into a resumable store
(:mod:`.capture`), evaluate them side by side (:mod:`.evaluate`), then cross-suite transfer
(:mod:`.transfer`), the live monitor (:mod:`.monitor`), phi fidelity (:mod:`.fidelity`) and the
report (:mod:`kvstate.report`).

Every stage is cached on disk under the output folder (:class:`kvstate.store.StudyLayout`), so a
killed run resumes where it stopped and ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .._io import read_json, write_json
from .._version import __version__
from ..capture import check_layers, select_layers
from ..capture.tokens import fit_context
from ..data import Suite, load_suite
from ..models import LoadedModel, check_model_folder, load_model, model_layers, resolve
from ..report import write_report
from ..representations import RepresentationSettings
from ..state import get_phi
from ..store import Store, StudyLayout, item_content, suite_label
from .capture import capture_suite
from .config import EVALUATION_SETTINGS, StudyConfig, check_monitor
from .evaluate import TooFewGroups, best, check_groups, evaluate_task
from .fidelity import learned_phi, phi_fidelity, reference_query_file
from .generate import replies
from .monitor import evaluate_monitor
from .progress import log
from .transfer import cross_suite, heldout_transfer
from .types import HeldoutTransfer, SuiteData

__all__ = ["evaluate_study", "run_study", "validate_study"]


def validate_study(cfg: StudyConfig) -> dict:
    """Check everything a study can check before model work; return its suites by label.

    Suites load and hold enough groups per class for ``n_splits``-fold grouped CV (a generation
    suite's labels are known only after the model replies, so there only its number of groups is
    checked); each model folder has a config, a tokenizer and complete weights, and the layer
    choices fit its config.json. Raises a one-line ``ValueError``.
    """
    for p in cfg.phis:
        get_phi(p)
    for m in cfg.models:
        folder = resolve(m)
        n_layers = model_layers(check_model_folder(folder))
        if n_layers:
            for what, spec in (("layers", cfg.layers), ("fidelity_layers", cfg.fidelity_layers or None)):
                if spec is not None:
                    try:
                        select_layers(spec, n_layers)
                    except ValueError as e:
                        raise ValueError(f"{what}: {e} ({m})") from None
    suites = {}
    for name in cfg.suites:
        suite = load_suite(name, limit=cfg.limit_of(name), seed=cfg.seed)
        label = suite_label(name)
        groups = np.array([it.group for it in suite.items])
        fix = "use more items (a higher or no --limit) or more groups, or fewer n_splits"
        if suite.generation:
            if len(set(groups)) < 2:
                raise ValueError(f"suite {label}: {len(set(groups))} group(s); grouped CV needs >= 2; {fix}")
        else:
            try:
                check_groups(np.array([it.label for it in suite.items]), groups, cfg.n_splits)
            except TooFewGroups as e:
                raise ValueError(f"suite {label}: {e}; {fix}") from None
        suites[label] = suite
    check_transfer(cfg)
    check_monitor(cfg, list(suites))
    return suites


def _keep_previous(layout: StudyLayout, results: dict) -> None:
    """Never replace a results file or report with one that has no task: say why instead."""
    if results["tasks"]:
        return
    why = "; ".join(results["meta"]["notes"]) or "no suite could be evaluated"
    kept = "kept the previous results.json and report.html" if layout.results.exists() else "nothing written"
    raise ValueError(f"no task was evaluated ({why}); {kept}")


def run_study(cfg: StudyConfig, out: Path, command: str = "") -> dict:
    """Run (or resume) a study and write report.html + results.json under ``out``."""
    out = Path(out)
    layout = StudyLayout(out)
    suites = validate_study(cfg)  # before any model work or any file is written
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    results = {"meta": {"title": "kvstate study", "command": command, "kvstate_version": __version__,
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "models": cfg.models,
                        "suites": cfg.suites, "config": asdict(cfg), "notes": []},
               "tasks": {}, "transfer": {}, "heldout": {}, "monitor": {}}
    notes = results["meta"]["notes"]
    for model_name in cfg.models:
        t_model = time.perf_counter()
        lm = load_model(model_name, dtype=cfg.dtype)
        layers = tuple(check_layers(lm, cfg.layers))
        phis = (*cfg.phis, learned_phi(lm, layout, layers, cfg)) if cfg.learned_phi else tuple(cfg.phis)
        settings = RepresentationSettings(layers=layers, phis=phis, seed=cfg.seed, projection=cfg.projection,
                                          decays=tuple(cfg.decays), compress=tuple(cfg.compress), deltas=cfg.deltas,
                                          query_states=cfg.query_states,
                                          ref_queries=reference_query_file(lm, layout, layers) if cfg.reference_queries else "")
        per_suite: dict[str, SuiteData | None] = {}
        benign = (load_suite(cfg.calibration_suite, limit=cfg.monitor_items, seed=cfg.seed)
                  if cfg.calibration_suite and cfg.monitor_items > 0 and cfg.monitor_suites else None)
        for suite_name, suite in suites.items():
            t0 = time.perf_counter()
            data = per_suite[suite_name] = prepare_suite(lm, suite_name, suite, layout, cfg, settings, notes)
            if data is None:
                continue
            try:
                task = evaluate_task(data, cfg)
            except TooFewGroups as e:
                notes.append(f"{lm.name}/{suite_name}: not evaluated, {e}")
                log(f"  not evaluated: {e}")
                per_suite[suite_name] = None
                continue
            task.update(model=lm.name, suite=suite_name, description=suite.description, layers=list(settings.layers),
                        seconds=round(time.perf_counter() - t0, 1))
            results["tasks"][f"{lm.name}/{suite_name}"] = task
            per_suite[suite_name] = data
            if suite_name in cfg.monitor_suites and cfg.monitor_items > 0:
                try:
                    results["monitor"][f"{lm.name}/{suite_name}"] = evaluate_monitor(lm, data, settings, cfg, benign)
                    mon = results["monitor"][f"{lm.name}/{suite_name}"]
                    log("  monitor AUROC: " + ", ".join(f"{r['monitor']} {r['auroc']:.2f}" for r in mon["rows"])
                        + f"; end-state study probe {mon['end_state_study_probe']['auroc']:.2f}")
                except ValueError as e:
                    notes.append(f"{lm.name}/{suite_name}: monitor not evaluated, {e}")
            top = [best(task["table"], fam) for fam in ("kv-state", "activation")]
            kv, act = (f"{t['auroc']:.3f}" if t else "not evaluated" for t in top)  # a representation filter may drop one
            log(f"  done in {task['seconds']} s: best unsupervised kv-state AUROC {kv}, "
                f"activation {act}, length alone {task['length_control']['length_auroc']:.3f}")
            write_json(layout.results, results, sort_keys=True)
        for rep, block in cross_suite(per_suite, cfg).items():
            results["transfer"][f"{lm.name} | {rep}"] = block
        def get(label: str, suite: Suite, one_class: bool, lm: LoadedModel = lm, settings=settings) -> SuiteData | None:
            return prepare_suite(lm, label, suite, layout, cfg, settings, notes, one_class=one_class)

        results["heldout"].update(run_heldout(lm.name, per_suite, results["tasks"], cfg, get))
        if results["tasks"]:  # never replace a results file with one that has no task
            write_json(layout.results, results, sort_keys=True)
        if cfg.fidelity_layers:
            results.setdefault("fidelity", {})[lm.name] = phi_fidelity(lm, cfg, settings.phis)
        log(f"[{lm.name}] finished in {time.perf_counter() - t_model:.0f} s")
        del lm
    _keep_previous(layout, results)
    write_report(results, out)
    return results


def check_transfer(cfg: StudyConfig) -> None:
    """Held-out transfer settings, checked (and their suites loaded) before any model work."""
    if not isinstance(cfg.transfer, dict):
        raise ValueError(f"transfer must map a training suite to a list of test suites, got {cfg.transfer!r}")
    labels = {suite_label(n) for n in cfg.suites}
    for train, tests in cfg.transfer.items():
        if suite_label(train) not in labels:
            raise ValueError(f"transfer: training suite {train!r} is not among the study's suites ({', '.join(cfg.suites)})")
        if isinstance(tests, str) or not tests:
            raise ValueError(f"transfer: {train!r} needs a list of test suites, e.g. {train} = [\"my_test.jsonl\"]")
        for t in tests:
            load_suite(t, limit=cfg.limit_of(t), seed=cfg.seed)
    if cfg.transfer and cfg.calibration_suite:
        load_suite(cfg.calibration_suite, limit=cfg.calibration_items, seed=cfg.seed)
    if not 0 < cfg.transfer_fpr < 1:
        raise ValueError(f"transfer_fpr must be in (0, 1), got {cfg.transfer_fpr}")


def prepare_suite(lm: LoadedModel, name: str, suite: Suite, layout: StudyLayout, cfg: StudyConfig,
                  settings: RepresentationSettings, notes: list[str], *, one_class: bool = False) -> SuiteData | None:
    """Replies (if the labels need them), the items that fit the context, then capture; None (with a
    note) when the suite cannot be evaluated: a single class, unless ``one_class`` (calibration)."""
    log(f"[{lm.name} / {name}] {len(suite.items)} items")
    if suite.generation:
        with warnings.catch_warnings(record=True) as caught:  # into the log and the notes, not raw warnings
            warnings.simplefilter("always")
            suite = suite.label_with(replies(lm, suite, layout, cfg), strict=True)
        for w in caught:
            if not (one_class and "only one class is left" in str(w.message)):
                notes.append(f"{lm.name}/{w.message}")
                log(f"  {w.message}")
    items, dropped = fit_context(lm, suite.items, cfg.max_tokens)
    if dropped:
        notes.append(f"{lm.name}/{name}: dropped {dropped} items longer than {cfg.max_tokens} tokens")
    labels = {it.label for it in items}
    if not items or (labels != {0, 1} and not one_class):
        note = f"{lm.name}/{name}: skipped, labels {sorted(labels)} (needs both classes; every item left has the same label)"
        notes.append(note)
        log("  " + note)
        return None
    return capture_suite(lm, items, layout, cfg, settings, name)


def run_heldout(model: str, per_suite: dict[str, SuiteData | None], tasks: dict, cfg: StudyConfig,
                get: Callable[[str, Suite, bool], SuiteData | None]) -> dict[str, HeldoutTransfer]:
    """The held-out transfer stage: each training suite in ``cfg.transfer`` against its test suites.

    ``get(label, suite, one_class)`` gives a test or calibration suite's states: captured by the
    study (:func:`prepare_suite`) or read back from the store (:func:`evaluate_study`); None when
    it cannot be evaluated.
    """
    out: dict[str, HeldoutTransfer] = {}
    todo = {train: tests for train, tests in cfg.transfer.items() if per_suite.get(suite_label(train)) is not None}
    if not todo:
        return out
    calib = None
    if cfg.calibration_suite:
        suite = load_suite(cfg.calibration_suite, limit=cfg.calibration_items, seed=cfg.seed)
        calib = get(suite_label(cfg.calibration_suite), suite, True)
    for train, tests in todo.items():
        train_data = per_suite[suite_label(train)]
        for test_name in tests:
            label = suite_label(test_name)
            test = get(label, load_suite(test_name, limit=cfg.limit_of(test_name), seed=cfg.seed), False)
            if test is None:
                continue
            key = f"{model}/{suite_label(train)} -> {label}"
            out[key] = heldout_transfer(train_data, tasks[f"{model}/{suite_label(train)}"], test, calib, cfg)
            log(f"  {key}: " + ", ".join(f"{r['family']}{'' if r['supervised'] else ' (unsup.)'} {r['auroc']:.2f}"
                                          for r in out[key]["rows"]))
    return out


def stored_suite(layout: StudyLayout, model: str, label: str, suite: Suite) -> SuiteData | None:
    """A suite's states read back from the study's store, labelled with the study's cached replies
    (so the labels are the study's); None when the study stored no such suite."""
    if not layout.has_store(model, label):
        return None
    store = Store(layout.store(model, label))
    if suite.generation:
        cache = layout.replies(model, suite.name)
        with warnings.catch_warnings():  # the study logged these when it labelled the suite
            warnings.simplefilter("ignore")
            suite = suite.label_with(read_json(cache, "replies cache") if cache.exists() else {}, strict=True)
    stored = set(store.index()["item_key"])
    keyed = [(store.key(model, it.id, item_content(it)), it) for it in suite.items]
    keyed = [(k, it) for k, it in keyed if k in stored]  # items the study dropped as too long are absent
    index, arrays = store.load(keys=[k for k, _ in keyed])
    return SuiteData.from_store(label, index, arrays, [it for _, it in keyed])


def evaluate_study(out: Path, command: str = "", **overrides) -> dict:
    """Re-run the evaluation of a finished study from its store and rewrite results.json + report.html.

    No model is loaded and nothing is captured: other detectors, a representation filter, more
    bootstrap resamples, or new evaluation code over the same stored states. With no overrides the
    numbers equal the study's own. The held-out transfer stage is re-run too, from the stores of its
    test and calibration suites. The live-monitor and phi-fidelity sections need the model, so
    they are kept from the original run (a note in the results says so).
    """
    out = Path(out)
    layout = StudyLayout(out)
    path = layout.results
    if not path.exists():
        raise ValueError(f"{path} does not exist; run `kvstate study -o {out}` first")
    unknown = sorted(set(overrides) - set(EVALUATION_SETTINGS))
    if unknown:
        raise ValueError(f"{unknown} change what is captured, not how it is evaluated; re-run `kvstate study` "
                         f"(evaluation settings: {', '.join(EVALUATION_SETTINGS)})")
    results = read_json(path, "study results file")
    if not (isinstance(results, dict) and isinstance(results.get("meta"), dict)
            and isinstance(results["meta"].get("config"), dict) and isinstance(results.get("tasks"), dict)):
        raise ValueError(f"{path}: not a study results file (no meta.config or tasks); "
                         f"re-run `kvstate study -o {out}` to write one")
    try:
        cfg = StudyConfig(**{**results["meta"]["config"], **{k: v for k, v in overrides.items() if v is not None}})
    except TypeError as e:
        raise ValueError(f"{path}: meta.config is not a study config ({e}); re-run `kvstate study -o {out}`") from None
    if not results["tasks"]:
        raise ValueError(f"{path}: has no task to re-evaluate; re-run `kvstate study -o {out}`")
    sources = {suite_label(n): n for n in cfg.suites}
    per_model: dict[str, dict] = {}
    for key, task in results["tasks"].items():
        t0, model, label = time.perf_counter(), task["model"], task["suite"]
        if not layout.has_store(model, label):
            raise ValueError(f"{layout.store(model, label)}: the store of {key} is missing; "
                             f"re-run `kvstate study -o {out}` to rebuild it")
        data = stored_suite(layout, model, label, load_suite(sources[label], limit=cfg.limit_of(sources[label]), seed=cfg.seed))
        new = evaluate_task(data, cfg)
        new.update({k: task[k] for k in ("model", "suite", "description", "layers") if k in task},
                   seconds=round(time.perf_counter() - t0, 1))
        results["tasks"][key] = new
        per_model.setdefault(model, {})[label] = data
        log(f"[{key}] re-evaluated: {len(new['table'])} rows in {new['seconds']} s")
    results["transfer"] = {f"{m} | {rep}": block for m, per_suite in per_model.items()
                           for rep, block in cross_suite(per_suite, cfg).items()}
    results["heldout"] = {}
    for m, per_suite in per_model.items():
        results["heldout"].update(run_heldout(m, per_suite, results["tasks"], cfg,
                                              lambda label, suite, _one_class, m=m: stored_suite(layout, m, label, suite)))
    results["meta"]["config"] = asdict(cfg)
    results["meta"]["notes"].append(
        f"evaluation re-run from the store ({command or 'evaluate_study'}, "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}); monitor and fidelity are from the original run")
    write_json(path, results, sort_keys=True)
    write_report(results, out)
    return results
