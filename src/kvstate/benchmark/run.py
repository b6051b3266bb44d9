"""The benchmark protocol, top to bottom:

1. :func:`~kvstate.benchmark.tasks.prepare_task`: sources split into roles, near-duplicates
   reported and dropped (no model yet);
2. :func:`capture`: one forward pass per item into a (model, source) store (resumable; stored once,
   evaluated many times);
3. :func:`select`: every (representation, detector) scored by leave-one-source-out CV on the
   training sources, same-source CV beside it; each family's best LOSO choice;
4. :func:`evaluate_choices`: each choice fitted on all training sources, its threshold set at
   ``fpr`` on the calibration set's benign items, then scored on every test benchmark (AUROC with
   a grouped CI, TPR, realised FPR, unsafe-class F1), and the KV state compared with the
   activations on the same items, paired (:func:`kvstate.evaluate.paired.paired_auroc`).

Test labels enter step 4 only; no choice reads them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import read_json, write_json
from ..capture import select_layers
from ..capture.tokens import fit_context
from ..data import Item
from ..data.dedup import overlap_report
from ..detect import get_detector, make_detector, threshold_for_fpr
from ..evaluate import auroc_ci, fit_clone, metrics
from ..evaluate.loso import loso_auroc, same_source_auroc
from ..evaluate.paired import f1_at, paired_auroc
from ..models import LoadedModel, load_model
from ..representations import family
from ..store import Store, item_content, safe_name, store_settings
from ..store.chunks import capture_chunk, item_record
from .config import BenchmarkConfig
from .tasks import TaskData, TaskSpec, prepare_task, unit_hash

__all__ = ["Features", "capture", "choices", "evaluate_choices", "run_benchmark", "select", "task_data"]

FAMILIES = ("kv-state", "activation", "control")


@dataclass
class Features:
    """One role's stored vectors: ``X[name]`` (n_items, dim) in the order of ``items``."""

    items: list[Item]
    X: dict[str, np.ndarray]
    n_tokens: np.ndarray

    @property
    def y(self) -> np.ndarray:
        return np.array([it.label for it in self.items], dtype=int)

    @property
    def sources(self) -> np.ndarray:
        return np.array([it.source for it in self.items])

    @property
    def groups(self) -> np.ndarray:
        return np.array([it.group for it in self.items])

    def subset(self, keep: np.ndarray) -> "Features":
        idx = np.flatnonzero(keep)
        return Features([self.items[i] for i in idx], {k: v[idx] for k, v in self.X.items()}, self.n_tokens[idx])


def capture(lm: LoadedModel, data: TaskData, cfg: BenchmarkConfig, out: Path,
            reads: tuple[str, ...] = ("end",)) -> tuple[dict[str, Features], dict[str, int]]:
    """Every role's items through one forward pass each, into ``out/store/<model>/<source>``; returns
    the features per role (keyed by the names of ``cfg.representations``, read at ``end``) and how
    many items per source were too long (dropped, counted). ``reads`` as a detector folder's
    (``("prompt_end", "end")``) stores names with read suffixes; the features are the same."""
    layers = tuple(select_layers(cfg.layers, lm.model.config.num_hidden_layers))
    settings = cfg.settings(layers)
    suffix = "@end" if len(reads) > 1 else ""
    wanted = {f"{r}{suffix}": r for r in cfg.representations}
    if cfg.sweep:  # the sweep carries the last read only, without a suffix
        wanted.update({f"sweep-{kind}/{layer}": f"sweep-{kind}/{layer}" for kind in ("kv", "resid")
                       for layer in range(lm.model.config.num_hidden_layers)})
    rows: dict[str, dict[str, np.ndarray]] = {}
    lengths: dict[str, int] = {}
    too_long: dict[str, int] = {}
    by_source: dict[str, list[Item]] = {}
    for role_items in data.parts.values():
        for it in role_items:
            by_source.setdefault(it.source, []).append(it)
    for source, items in sorted(by_source.items()):
        fitting, dropped = fit_context(lm, items, cfg.max_tokens)
        if dropped:
            too_long[source] = dropped
        store = Store.open(out / "store" / safe_name(lm.name) / safe_name(source), store_settings(lm.name, lm.dtype, settings))
        keys = [store.key(lm.name, it.id, item_content(it)) for it in fitting]
        todo = store.missing(keys)
        by_key = dict(zip(keys, fitting))
        t0 = time.time()
        for s in range(0, len(todo), cfg.chunk):
            part = todo[s : s + cfg.chunk]
            r, arrays = capture_chunk(lm, [item_record(k, by_key[k]) for k in part], settings,
                                      batch_size=cfg.batch_size, reads=reads)
            store.put(r, arrays)
        if todo:
            print(f"  {lm.name} {source}: {len(todo)} items in {time.time() - t0:.0f} s", flush=True)
        index, arrays = store.load(keys=keys)
        names = [n for n in arrays if n in wanted]
        for i, it in enumerate(fitting):
            rows[it.id] = {wanted[n]: arrays[n][i] for n in names}
            lengths[it.id] = int(index["n_tokens"].iloc[i])
    feats = {}
    for role, items in data.parts.items():
        kept = [it for it in items if it.id in rows]
        names = sorted(set.intersection(*(set(rows[it.id]) for it in kept))) if kept else []
        X = {n: np.stack([rows[it.id][n] for it in kept]).astype(np.float32) for n in names}
        for kind in ("kv", "resid"):  # every layer side by side, in layer order: the multi-layer read-outs' blocks
            blocks = sorted((int(n.rsplit("/", 1)[1]), n) for n in X if n.startswith(f"sweep-{kind}/"))
            if blocks:
                X[f"sweep-{kind}/all"] = np.hstack([X[n] for _, n in blocks])
        feats[role] = Features(kept, X, np.array([lengths[it.id] for it in kept], dtype=float))
    return feats, too_long


def _n_blocks(rep: str, X: dict[str, np.ndarray]) -> int:
    kind = rep.split("/", 1)[0]
    return sum(1 for n in X if n.startswith(f"{kind}/") and not n.endswith("/all"))


def _detector(name: str, rep: str, X: dict[str, np.ndarray], cfg: BenchmarkConfig):
    if rep.endswith("/all"):  # per-layer blocks: the multi-layer read-outs
        return get_detector(name, n_blocks=_n_blocks(rep, X))
    return make_detector(name, X[rep].shape[1], reduce_above=cfg.reduce_above, seed=cfg.seed)


def candidates(X: dict[str, np.ndarray], cfg: BenchmarkConfig) -> list[tuple[str, str]]:
    """(representation, detector) pairs to score: the configured ones, and with ``sweep`` each
    layer with the sweep detectors and all layers with the multi-layer ones."""
    out = [(r, d) for r in cfg.representations for d in cfg.detectors]
    if cfg.sweep:
        layers = sorted({int(n.rsplit("/", 1)[1]) for n in X if n.startswith("sweep-kv/") and not n.endswith("/all")})
        out += [(f"sweep-{k}/{layer}", d) for k in ("kv", "resid") for layer in layers for d in cfg.sweep_detectors]
        out += [(f"sweep-{k}/all", d) for k in ("kv", "resid") for d in cfg.multilayer_detectors]
    return out


def select(train: Features, cfg: BenchmarkConfig) -> list[dict[str, Any]]:
    """One row per (representation, detector): LOSO AUROC (mean and worst fold) and same-source
    grouped CV AUROC on the training sources, sorted best LOSO first."""
    rows = []
    for rep, det_name in candidates(train.X, cfg):
        if rep not in train.X or not np.ptp(train.X[rep], axis=0).any():
            continue
        X = train.X[rep]
        det = _detector(det_name, rep, train.X, cfg)
        lo = loso_auroc(X, train.y, train.sources, det)
        same = same_source_auroc(X, train.y, train.groups, det, n_splits=cfg.n_splits, seed=cfg.seed)
        rows.append({"representation": rep, "detector": det_name, "family": family(rep), "loso_auroc": lo["auroc"],
                     "loso_worst": lo["worst"], "loso_folds": lo["folds"], "same_source_auroc": same})
    return sorted(rows, key=lambda r: (-r["loso_auroc"], r["representation"], r["detector"]))


def choices(table: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each family's best row by LOSO AUROC (ties: the name order of :func:`select`)."""
    out: dict[str, dict[str, Any]] = {}
    for row in table:
        out.setdefault(row["family"], row)
    return out


def _test_row(y, s, groups, thr, cfg: BenchmarkConfig) -> dict[str, Any]:
    auc, ci = auroc_ci(y, s, n_boot=cfg.n_boot, seed=cfg.seed, groups=groups)
    return {"auroc": auc, "auroc_ci": ci, "tpr": float((s[y == 1] > thr).mean()), "fpr_realised": float((s[y == 0] > thr).mean()),
            "f1": f1_at(y, s, thr), "tpr_at_1fpr_oracle": metrics(y, s)["tpr_at_1fpr"]}


def evaluate_choices(feats: dict[str, Features], chosen: dict[str, dict], task: TaskSpec, cfg: BenchmarkConfig) -> dict[str, Any]:
    """Each family's choice fitted on all training items, thresholded on the calibration set's
    benign items, scored on each test benchmark; the KV state vs the activations paired per test."""
    train, calib = feats["train"], feats["calibration"]
    benign = calib.subset(calib.y == 0)
    fitted = {}
    for fam, row in chosen.items():
        rep = row["representation"]
        est = fit_clone(_detector(row["detector"], rep, train.X, cfg), train.X[rep], train.y)
        cal = np.asarray(est.decision_function(benign.X[rep]), dtype=float)
        fitted[fam] = (est, rep, threshold_for_fpr(cal, cfg.fpr))
    tests = {}
    for t in task.tests:
        test = feats["test"].subset(np.isin(feats["test"].sources, t.sources))
        y = test.y
        if test.X == {} or np.unique(y).size < 2:
            tests[t.name] = {"note": f"not evaluated: {len(y)} items, labels {sorted(set(y.tolist()))}"}
            continue
        scores = {fam: np.asarray(est.decision_function(test.X[rep]), dtype=float) for fam, (est, rep, _) in fitted.items()}
        block: dict[str, Any] = {"n": int(y.size), "n_positive": int(y.sum()), "sources": list(t.sources), "anchor": t.anchor,
                                 "length_auroc": metrics(y, test.n_tokens)["auroc"],
                                 "families": {fam: {"representation": fitted[fam][1], "detector": chosen[fam]["detector"],
                                                    "threshold": fitted[fam][2],
                                                    **_test_row(y, scores[fam], test.groups, fitted[fam][2], cfg)}
                                              for fam in fitted}}
        if "kv-state" in scores and "activation" in scores:
            block["paired"] = paired_auroc(y, scores["kv-state"], scores["activation"], groups=test.groups,
                                           n_boot=cfg.n_boot, seed=cfg.seed)
        tests[t.name] = block
    return {"tests": tests, "calibration": {"n": int(benign.y.size), "sources": sorted(set(benign.sources.tolist()))}}


def run_model(model: str, data: TaskData, cfg: BenchmarkConfig, out: Path) -> dict[str, Any]:
    """Steps 2-4 for one model."""
    t0 = time.time()
    lm = load_model(model, dtype=cfg.dtype)
    feats, too_long = capture(lm, data, cfg, out)
    table = select(feats["train"], cfg)
    if not table:
        raise ValueError(f"{model}: no representation in {cfg.representations} was recorded with variation")
    chosen = choices(table)
    result = evaluate_choices(feats, chosen, data.task, cfg)
    return {"model": lm.name, "layers": list(select_layers(cfg.layers, lm.model.config.num_hidden_layers)),
            "n": {role: len(f.items) for role, f in feats.items()}, "too_long": too_long,
            "train_sources": sorted(set(feats["train"].sources.tolist())),
            "selection": table, "chosen": {f: (r["representation"], r["detector"]) for f, r in chosen.items()},
            **result, "seconds": round(time.time() - t0, 1)}


def duplicates_report(data: TaskData, threshold: float) -> dict[str, Any]:
    """Which pairs of sources (and roles) overlap, and how many calibration / test items were dropped."""
    return {"threshold_jaccard": threshold, "pairs_by_source": overlap_report(data.duplicates).to_dict("records"), "dropped": data.dropped,
            "sizes": {role: len(items) for role, items in data.parts.items()}}


def task_data(task: TaskSpec, cfg: BenchmarkConfig) -> TaskData:
    """The task's items split into roles, duplicates dropped, capped at ``cfg.max_per_source``."""
    data = prepare_task(task, seed=cfg.seed, threshold=cfg.duplicate_threshold)
    return data if cfg.max_per_source is None else _capped(data, cfg.max_per_source, cfg.seed)


def run_benchmark(cfg: BenchmarkConfig, out: str | Path, task: TaskSpec) -> dict[str, Any]:
    """Run ``task`` for every model of ``cfg`` into ``out/results.json`` (one model at a time; a
    model already in the results is kept, so an interrupted run resumes)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = read_json(path) if path.exists() else {}
    if results and results.get("task", {}).get("name") != task.name:
        raise ValueError(f"{path} holds task {results['task'].get('name')!r}, not {task.name!r}; use another -o")
    data = task_data(task, cfg)
    dup = duplicates_report(data, cfg.duplicate_threshold)
    results.update(task={"name": task.name, "description": task.description,
                         "sources": [{"suite": s.suite, "roles": s.roles, "limit": s.limit} for s in task.sources],
                         "tests": [{"name": t.name, "sources": list(t.sources), "anchor": t.anchor} for t in task.tests]},
                   duplicates=dup)
    same = {k: v for k, v in cfg.to_dict().items() if k != "models"}
    if results.get("config") is not None and {k: v for k, v in results["config"].items() if k != "models"} != same:
        # other choices: evaluate again (the captures come from the store)
        print(f"{path}: the settings changed; every model is evaluated again from its stored states", flush=True)
        results["models"] = {}
    results.setdefault("models", {})
    results["config"] = cfg.to_dict()
    write_json(path, results)
    print(f"{task.name}: {dup['sizes']}; dropped as near-duplicates of training items: {dup['dropped'] or 'none'}", flush=True)
    for model in cfg.models:
        if model in results["models"]:
            print(f"{model}: already in {path}", flush=True)
            continue
        results["models"][model] = run_model(model, data, cfg, out)
        write_json(path, results)
    return results


def _capped(data: TaskData, k: int, seed: int) -> TaskData:
    """At most ``k`` items per source, role and label, whole groups in seeded hash order (not file order)."""
    parts = {}
    for role, items in data.parts.items():
        seen: dict[tuple[str, int], int] = {}
        keep = []
        for it in sorted(items, key=lambda it: (unit_hash(seed, it.group), it.id)):
            key = (it.source, it.label)
            if seen.get(key, 0) < k:
                seen[key] = seen.get(key, 0) + 1
                keep.append(it)
        pos = {it.id: i for i, it in enumerate(items)}
        parts[role] = sorted(keep, key=lambda it: pos[it.id])
    return TaskData(data.task, parts, data.duplicates, data.dropped)
