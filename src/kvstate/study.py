"""The main job: for each model x suite, generate and label replies if needed, capture every
representation in one pass into a resumable store, evaluate them side by side, write the report.

Every stage is cached on disk under the output folder, so a killed run resumes where it stopped and
ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__

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
    projection: str = "gaussian"  # stored vectors above 2048 dims: "gaussian" or "sparse" (a ~60x cheaper live monitor)
    dtype: str = "float32"
    batch_size: int = 8
    chunk: int = 32  # items per store shard (the unit of resumption)
    max_new_tokens: int = 40
    max_tokens: int = 768  # longer items are dropped (and counted) to bound O(T^2) attention work
    monitor_suites: list[str] = field(default_factory=lambda: ["jailbreak", "sysprompt"])
    monitor_representation: str = "kv-elu-S/n-hn@end"
    monitor_items: int = 60  # test-split items generated with the live monitor
    monitor_fpr: float = 0.01
    fidelity_layers: str | None = "upper3"  # layers where linear attention is compared with softmax; None skips
    engine: str = "local"  # or "ray": extraction as a Ray Data pipeline into the same store
    ray_address: str | None = None
    ray_workers: int = 2

    def __post_init__(self):  # fail before any model is loaded
        from .representations import PROJECTIONS

        if self.projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {self.projection!r}. Available: {', '.join(PROJECTIONS)}")

    @classmethod
    def quick(cls, **overrides) -> "StudyConfig":
        """A small study that runs in minutes on 2 CPU cores with the default model."""
        base = dict(suites=["jailbreak", "truefalse", "sysprompt"], limit=84, n_boot=200, n_splits=4,
                    phis=["identity", "elu", "random"], max_new_tokens=24, max_tokens=384, monitor_items=16)
        return cls(**{**base, **overrides})


def _log(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(msg, highlight=False, markup=False)


class _Stage:
    """Progress of one stage: a rich bar with ETA on a terminal, a log line per step otherwise (log
    files stay readable: at most one line per ``every`` seconds), and a one-line summary at the end."""

    def __init__(self, desc: str, total: int, unit: str = "items", every: float = 30.0):
        self.desc, self.total, self.unit, self.every, self.done = desc, total, unit, every, 0

    def __enter__(self) -> "_Stage":
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.t0 = self.last = time.perf_counter()
        console = Console(stderr=True)
        self.bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(self.unit),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console,
                            transient=True) if console.is_terminal and self.total else None
        if self.bar is not None:
            self.bar.start()
            self.task = self.bar.add_task(self.desc, total=self.total)
        return self

    def advance(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(self.task, advance=n)
        elif time.perf_counter() - self.last >= self.every and self.done < self.total:
            self.last = time.perf_counter()
            rate = (self.last - self.t0) / self.done
            _log(f"  {self.desc}: {self.done}/{self.total} {self.unit}, {rate:.2f} s each, ETA {rate * (self.total - self.done):.0f} s")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
        if exc[0] is None and self.total:
            dt = time.perf_counter() - self.t0
            _log(f"  {self.desc}: {self.done} {self.unit} in {dt:.0f} s ({dt / max(self.done, 1):.2f} s each)")


# ----------------------------------------------------------------------------------- stages
def _replies(lm, suite, out: Path, cfg: StudyConfig) -> dict[str, str]:
    """Model replies for a suite that needs them, cached as JSON (atomic) and resumed by id."""
    from .generate import generate_replies

    path = _replies_path(out, lm.name, suite.name)
    cache = json.loads(path.read_text()) if path.exists() else {}
    todo = [it for it in suite.items if it.id not in cache]
    with _Stage(f"generate {suite.name}", len(todo), "replies") as stage:
        for s in range(0, len(todo), cfg.chunk):
            part = todo[s : s + cfg.chunk]
            got = generate_replies(lm, part, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=False)
            cache.update({it.id: r for it, r in zip(part, got)})
            _atomic_json(path, cache)
            stage.advance(len(part))
    return {it.id: cache[it.id] for it in suite.items}


def _replies_path(out: Path, model: str, suite: str) -> Path:
    """Where a study caches a model's replies to a suite (read again by :func:`evaluate_study`)."""
    return out / "replies" / model / f"{_safe(suite)}.json"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=_json_default))
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


STORE_VERSION = 1


def store_settings(name: str, dtype: str, settings) -> dict:
    """Settings of a (model, suite) store: what changes the stored numbers (the store hashes it)."""
    return {"model": name, "dtype": dtype, "representations": settings.to_dict(), "version": STORE_VERSION}


def item_content(it) -> dict:
    """What an item's store key covers besides its id: the prompt and the teacher-forced reply."""
    return {"messages": it.messages, "response": it.response}


def capture_suite(lm, items, out: Path, cfg: StudyConfig, settings, suite_name: str):
    """Capture missing items into the (model, suite) store chunk by chunk; return (index, arrays)."""
    from .representations import capture_representations
    from .store import Store

    store = Store.open(out / "store" / _safe(lm.name) / _safe(suite_name), store_settings(lm.name, lm.dtype, settings))
    keys = [store.key(lm.name, it.id, item_content(it)) for it in items]
    by_key = dict(zip(keys, items))
    todo = store.missing(keys)
    if todo and cfg.engine == "ray":
        from .distributed import run_ray_extraction
        from .models import MODELS

        res = run_ray_extraction(lm.name if lm.name in MODELS else lm.path, [by_key[k] for k in todo], store.root,
                                 settings, num_workers=cfg.ray_workers, batch_size=cfg.batch_size,
                                 address=cfg.ray_address, chunk=cfg.chunk, dtype=lm.dtype)
        _log(f"  ray: {res.computed} items in {res.seconds:.0f} s with {cfg.ray_workers} workers")
        store = Store.open(store.root, store.settings)
        todo = store.missing(keys)
    with _Stage(f"capture {suite_name}", len(todo)) as stage:
        for s in range(0, len(todo), cfg.chunk):
            part = [by_key[k] for k in todo[s : s + cfg.chunk]]
            cap = capture_representations(lm, part, settings, reads=["prompt_end", "end"], batch_size=cfg.batch_size,
                                          progress=False)
            names = sorted(cap.rows[0])
            arrays = {n: np.stack([r[n] for r in cap.rows]) for n in names}
            rows = [{"item_key": k, "id": it.id, "label": int(it.label), "group": str(it.group), "split": it.split,
                     "n_tokens": int(n), "time_ms": 1000 * cap.seconds_per_item,
                     "dims": json.dumps({n: cap.dims[n] for n in names})}
                    for k, it, n in zip(todo[s : s + cfg.chunk], part, cap.n_tokens)]
            store.put(rows, arrays)
            stage.advance(len(part))
    return store.load(keys=keys)


# ----------------------------------------------------------------------------------- evaluation
def _detector(name: str, dim: int, cfg: StudyConfig):
    from .detect import get_detector
    from .reduce import reduce_if_wide

    det = get_detector(name, n_estimators=100) if name == "iforest" else get_detector(name)
    return reduce_if_wide(det, dim, cfg.reduce_above, random_state=cfg.seed)


def _family(name: str) -> str:
    from .representations import family

    return family(name)


def evaluate_task(index, arrays: dict[str, np.ndarray], cfg: StudyConfig, items, log: Callable = _log) -> dict:
    """Every representation x detector, grouped CV, CIs, length-matched AUROC, sweep, controls."""
    from .evaluate import (confound_warnings, evaluate_detector, evaluate_length_matched, length_matched_indices,
                           metrics as metric_fn, selection_corrected, shuffled_label_control)

    y = index["label"].to_numpy().astype(int)
    groups = index["group"].to_numpy()
    lengths = index["n_tokens"].to_numpy().astype(float)
    dims = json.loads(index["dims"].iloc[0])
    # every training part needs normal items (unsupervised) and both classes (probes): each class must
    # appear in at least k groups for k grouped folds
    per_class = [len(np.unique(groups[y == c])) for c in (0, 1)]
    k = min([cfg.n_splits, *per_class])
    if k < 2:
        raise TooFewGroups(f"labels 0/1 occur in {per_class[0]}/{per_class[1]} groups; grouped CV needs >= 2 each")
    cfg = StudyConfig(**{**asdict(cfg), "n_splits": k})
    time_ms = float(index["time_ms"].mean())
    main = sorted(n for n in arrays if n.endswith("@end") and not n.startswith("sweep")
                  and (cfg.representations is None or n.startswith(tuple(cfg.representations))))
    extra_reads = [f"{c}@prompt_end" for c in CORE if f"{c}@prompt_end" in arrays and _has_response(items)
                   and (cfg.representations is None or c.startswith(tuple(cfg.representations)))]
    rows, results = [], {}
    try:
        matched = length_matched_indices(lengths, y, seed=cfg.seed)
    except ValueError:  # no length bin holds both classes: length alone separates them
        matched = np.array([], dtype=int)
    with _Stage("evaluate", len(main + extra_reads), "representations") as stage:
        for name in main + extra_reads:
            base = name.rsplit("@", 1)[0]
            dets = cfg.detectors if base in cfg.all_detectors_for else [d for d in ("mahalanobis", "logistic") if d in cfg.detectors]
            X = arrays[name]
            for det_name in dets:
                det = _detector(det_name, X.shape[1], cfg)
                r = evaluate_detector(X, y, groups, det, n_splits=cfg.n_splits, seed=cfg.seed, n_boot=cfg.n_boot,
                                      representation=name)
                lm_auc = None
                if det_name in LENGTH_MATCHED_FOR and len(matched) >= 20 and len(np.unique(y[matched])) == 2:
                    lm_auc = evaluate_length_matched(X, y, groups, lengths, det, n_splits=min(cfg.n_splits, 3), seed=cfg.seed,
                                                     n_boot=1, ci_metrics=()).metrics["auroc"]
                rows.append({
                    "representation": name, "family": _family(name), "detector": r.detector, "supervised": r.supervised,
                    "auroc": r.metrics["auroc"], "auroc_lo": r.ci["auroc"][0], "auroc_hi": r.ci["auroc"][1],
                    "auprc": r.metrics["auprc"], "tpr_at_1fpr": r.metrics["tpr_at_1fpr"],
                    "tpr_at_1fpr_lo": r.ci["tpr_at_1fpr"][0], "tpr_at_1fpr_hi": r.ci["tpr_at_1fpr"][1],
                    "fpr_at_95tpr": r.metrics["fpr_at_95tpr"], "dim": int(dims.get(name, X.shape[1])),
                    "dim_used": int(X.shape[1]), "time_per_item_ms": time_ms, "length_matched_auroc": lm_auc,
                })
                results[(name, r.detector)] = r
            stage.advance(1)
    log(f"  evaluated {len(rows)} representation x detector rows")
    task = {"n": int(len(y)), "label_counts": {str(k): int((y == k).sum()) for k in (0, 1)}, "table": rows}
    task["curves"] = _curves(rows, results)
    # the "best" rows above are maxima over many candidates; this picks on half the groups, scores the other
    unsup = {f"{r['representation']}|{r['detector']}": r for r in rows
             if not r["supervised"] and r["family"] in ("kv-state", "activation")}
    task["selection_corrected"] = selection_corrected(
        {k: results[(r["representation"], r["detector"])].scores for k, r in unsup.items()},
        {k: r["family"] for k, r in unsup.items()}, y, groups, seed=cfg.seed)
    task["layer_sweep"] = _sweep(arrays, y, groups, cfg)
    length_auc = metric_fn(y, lengths)["auroc"]
    warn = confound_warnings(lengths, y)
    task["length_control"] = {"length_auroc": float(length_auc), "warning": warn[0] if warn else None,
                              "length_matched_n": int(len(matched))}
    best_kv = _best(rows, "kv-state", supervised=True) or rows[0]
    sh = shuffled_label_control(arrays[best_kv["representation"]], y, groups,
                                _detector("logistic", arrays[best_kv["representation"]].shape[1], cfg),
                                n_permutations=3, seed=cfg.seed)
    task["shuffled_label_auroc"] = float(sh["auroc_mean"])
    task["examples"] = _examples(items, results, rows)
    return task


class TooFewGroups(ValueError):
    """A task whose labels sit in too few groups for grouped cross-validation."""


def _has_response(items) -> bool:
    return any(it.response for it in items)


def _best(rows, fam: str, supervised: bool = False):
    cand = [r for r in rows if r["family"] == fam and r["supervised"] == supervised]
    return max(cand, key=lambda r: r["auroc"]) if cand else None


def _curves(rows, results) -> dict:
    from sklearn.metrics import roc_curve

    out = {}
    picks = [_best(rows, "kv-state"), _best(rows, "activation"),
             next((r for r in rows if r["representation"].startswith("ctl-length") and not r["supervised"]), None)]
    for row in filter(None, picks):
        r = results[(row["representation"], row["detector"])]
        fpr, tpr, _ = roc_curve(r.y, r.scores)
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int))
        out[f"{row['representation']}|{row['detector']}"] = {
            "fpr": fpr[keep].round(4).tolist(), "tpr": tpr[keep].round(4).tolist(),
            "scores_normal": r.scores[r.y == 0].round(5).tolist(), "scores_anomalous": r.scores[r.y == 1].round(5).tolist()}
    return out


def _sweep(arrays, y, groups, cfg: StudyConfig) -> dict:
    from .evaluate import evaluate_detector

    layers = sorted(int(n.split("/")[1]) for n in arrays if n.startswith("sweep-kv/"))
    series = {"kv-state": [], "residual": []}
    with _Stage("layer sweep", len(layers), "layers") as stage:
        for l in layers:
            for key, name in (("kv-state", f"sweep-kv/{l}"), ("residual", f"sweep-resid/{l}")):
                X = arrays[name]
                r = evaluate_detector(X, y, groups, _detector("mahalanobis", X.shape[1], cfg), n_splits=cfg.n_splits,
                                      seed=cfg.seed, n_boot=1, ci_metrics=())
                series[key].append(round(r.metrics["auroc"], 4))
            stage.advance(1)
    return {"layers": layers, "series": series, "detector": "mahalanobis (unsupervised)"}


def _examples(items, results, rows, n: int = 6) -> list[dict]:
    row = _best(rows, "kv-state")
    if row is None:
        return []
    r = results[(row["representation"], row["detector"])]
    order = np.argsort(-r.scores)
    pick = list(order[: n // 2]) + list(order[-(n - n // 2):])
    return [{"id": items[i].id, "label": int(items[i].label), "text": items[i].text()[:600],
             "response": (items[i].response or "")[:300], "score": float(r.scores[i]),
             "scored_by": f"{row['representation']} | {row['detector']}"} for i in pick]


def _transfer(per_suite: dict, cfg: StudyConfig) -> dict:
    """Fit on one suite's normal items, score every other suite (same representation)."""
    from .evaluate import transfer_matrix

    names = [s for s, d in per_suite.items() if d is not None]
    if len(names) < 2:
        return {}
    out = {}
    for rep in ("kv-elu-S/n-hn@end", "kv-identity-S/n-pre-content@end", "act-resid-last@end"):
        if not all(rep in per_suite[s][1] for s in names):
            continue
        data = {s: (per_suite[s][1][rep], per_suite[s][0]["label"].to_numpy().astype(int), per_suite[s][0]["group"].to_numpy())
                for s in names}
        dim = next(iter(data.values()))[0].shape[1]
        table = transfer_matrix(data, _detector("mahalanobis", dim, cfg), n_splits=min(cfg.n_splits, 3), seed=cfg.seed)
        out[rep] = {"suites": names, "auroc": table.to_numpy().round(4).tolist(), "representation": rep,
                    "detector": "mahalanobis (unsupervised)"}
    return out


def _fidelity(lm, cfg: StudyConfig) -> dict:
    """Relative error of linear attention vs the model's softmax attention output, per layer and phi,
    on prompts no suite uses (the learned phi's held-out set)."""
    from .fidelity import attention_fidelity
    from .learned_phi import HELDOUT_PROMPTS

    df = attention_fidelity(lm, HELDOUT_PROMPTS, list(cfg.phis), layers=cfg.fidelity_layers, batch_size=cfg.batch_size)
    layers = sorted(df["layer"].unique().tolist())
    series = {str(p): [round(float(df[(df.phi == p) & (df.layer == l)]["rel_err"].iloc[0]), 4) for l in layers]
              for p in df["phi"].unique()}
    return {"layers": layers, "series": series, "metric": "relative error of the attention output (lower is better)"}


def evaluate_monitor(lm, items, index, arrays, settings, cfg: StudyConfig) -> dict:
    """Live monitor on held-out items, under both thresholds a user can calibrate.

    Grouped, stratified quarters (the suites' own split may hold one class only): the detector is
    fitted on the normal end-of-text states of half the groups, with the per-step threshold at
    ``monitor_fpr`` of their out-of-fold scores (:func:`fit_monitor`); the normal prompts of a quarter
    are generated with the monitor to set the per-sequence threshold (as :meth:`Monitor.calibrate`);
    the last quarter is generated once and scored under both. The peak AUROC (each reply's highest
    score, anomalous vs normal) needs no threshold at all.
    """
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    from .monitor import Monitor, fit_monitor

    rep = cfg.monitor_representation
    y = index["label"].to_numpy().astype(int)
    groups = index["group"].to_numpy()
    test_idx, calib_idx, *fit_idx = [part for _, part in StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=cfg.seed)
                                      .split(y, y, groups)]
    fit = np.zeros(len(y), dtype=bool)
    fit[np.concatenate(fit_idx)] = True
    spec, det = fit_monitor(arrays[rep][fit], y[fit], groups[fit], rep, settings.to_dict(), fpr=cfg.monitor_fpr,
                            seed=cfg.seed, model=lm.name)
    rng = np.random.default_rng(cfg.seed)

    def pick(idx, n):
        return [items[i] for i in sorted(rng.permutation(idx)[:n])]

    def scores(part, what):  # one row of per-step scores per reply
        rows = []
        with _Stage(f"monitor: {what}", len(part), "replies") as stage:
            for s in range(0, len(part), cfg.batch_size):
                batch = [{"messages": it.messages} for it in part[s : s + cfg.batch_size]]
                rows += list(Monitor(lm, spec, det).generate(batch, max_new_tokens=cfg.max_new_tokens).scores)
                stage.advance(len(batch))
        return rows

    calib = pick([i for i in calib_idx if y[i] == 0], cfg.monitor_items)
    step_threshold = spec.threshold
    # a finished row's state, and so its score, no longer changes: its peak is over the steps it ran
    seq_threshold = (float(np.quantile([np.nanmax(r) for r in scores(calib, "calibrate on normal prompts")], 1 - cfg.monitor_fpr))
                     if len(calib) >= 2 else None)
    test = pick(test_idx, cfg.monitor_items)
    rows = scores(test, "held-out test")
    peak = np.array([np.nanmax(r) for r in rows])
    lab = np.array([it.label for it in test])

    def rates(threshold):
        if threshold is None:
            return None, None
        flags = peak > threshold
        return (float(flags[lab == 1].mean()) if (lab == 1).any() else None,
                float(flags[lab == 0].mean()) if (lab == 0).any() else None)

    step_rates, seq_rates = rates(step_threshold), rates(seq_threshold)
    first = [int(np.argmax(r > seq_threshold)) for r, l in zip(rows, lab) if l == 1 and seq_threshold is not None
             and (r > seq_threshold).any()]
    return {"representation": rep, "detector": f"{spec.notes['detector']} (unsupervised, fit on 1/2 of the groups)",
            "threshold_fpr": cfg.monitor_fpr, "n_test": int(len(test)), "n_anomalous": int(lab.sum()),
            "n_calibration": len(calib), "max_new_tokens": cfg.max_new_tokens,
            "peak_auroc": float(roc_auc_score(lab, peak)) if len(np.unique(lab)) == 2 else None,
            "flagged_anomalous": step_rates[0], "flagged_normal": step_rates[1],
            "seq_flagged_anomalous": seq_rates[0], "seq_flagged_normal": seq_rates[1],
            "seq_median_tokens_to_flag": float(np.median(first)) if first else None,
            "note": "rates per sequence (flagged if any step crosses the threshold); flagged_*: per-step threshold "
                    "(1% of single normal states), seq_flagged_*: per-sequence threshold (1% of normal replies' peaks, "
                    "calibrated on generations from held-out normal prompts)"}


# ----------------------------------------------------------------------------------- driver
def run_study(cfg: StudyConfig, out: Path, command: str = "") -> dict:
    """Run (or resume) a study and write report.html + results.json under ``out``."""
    import torch

    from .data import load_suite
    from .models import load_model
    from .report import write_report
    from .representations import RepresentationSettings

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    suites = {_suite_label(name): load_suite(name, limit=cfg.limit, seed=cfg.seed) for name in cfg.suites}  # validate first
    results = {"meta": {"title": "kvstate study", "command": command, "kvstate_version": __version__,
                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "models": cfg.models,
                        "suites": cfg.suites, "config": asdict(cfg), "notes": []},
               "tasks": {}, "transfer": {}, "monitor": {}}
    for model_name in cfg.models:
        t_model = time.perf_counter()
        lm = load_model(model_name, dtype=cfg.dtype)
        from .extract import check_layers

        settings = RepresentationSettings(layers=tuple(check_layers(lm, cfg.layers)), phis=tuple(cfg.phis), seed=cfg.seed,
                                          projection=cfg.projection)
        per_suite = {}
        for suite_name, suite in suites.items():
            t0 = time.perf_counter()
            _log(f"[{lm.name} / {suite_name}] {len(suite.items)} items")
            if suite.generation:
                suite = suite.label_with(_replies(lm, suite, out, cfg), strict=True)
            items, dropped = _fit_context(lm, suite.items, cfg.max_tokens)
            if dropped:
                results["meta"]["notes"].append(f"{lm.name}/{suite_name}: dropped {dropped} items longer than {cfg.max_tokens} tokens")
            labels = {it.label for it in items}
            if labels != {0, 1}:
                note = f"{lm.name}/{suite_name}: skipped, labels {sorted(labels)} (needs both classes; e.g. the model never refused)"
                results["meta"]["notes"].append(note)
                _log("  " + note)
                per_suite[suite_name] = None
                continue
            index, arrays = capture_suite(lm, items, out, cfg, settings, suite_name)
            try:
                task = evaluate_task(index, arrays, cfg, items)
            except TooFewGroups as e:
                results["meta"]["notes"].append(f"{lm.name}/{suite_name}: not evaluated, {e}")
                _log(f"  not evaluated: {e}")
                per_suite[suite_name] = None
                continue
            task.update(model=lm.name, suite=suite_name, description=suite.description, layers=list(settings.layers),
                        seconds=round(time.perf_counter() - t0, 1))
            results["tasks"][f"{lm.name}/{suite_name}"] = task
            per_suite[suite_name] = (index, arrays)
            if suite_name in cfg.monitor_suites and cfg.monitor_items > 0:
                try:
                    results["monitor"][f"{lm.name}/{suite_name}"] = evaluate_monitor(lm, items, index, arrays, settings, cfg)
                    _log(f"  monitor: {results['monitor'][f'{lm.name}/{suite_name}']}")
                except ValueError as e:
                    results["meta"]["notes"].append(f"{lm.name}/{suite_name}: monitor not evaluated, {e}")
            best = _best(task["table"], "kv-state"), _best(task["table"], "activation")
            _log(f"  done in {task['seconds']} s: best unsupervised kv-state AUROC {best[0]['auroc']:.3f}, "
                 f"activation {best[1]['auroc']:.3f}, length alone {task['length_control']['length_auroc']:.3f}")
            _atomic_json(out / "results.json", results)
        for rep, block in _transfer(per_suite, cfg).items():
            results["transfer"][f"{lm.name} | {rep}"] = block
        if cfg.fidelity_layers:
            results.setdefault("fidelity", {})[lm.name] = _fidelity(lm, cfg)
        _log(f"[{lm.name}] finished in {time.perf_counter() - t_model:.0f} s")
        del lm
    write_report(results, out)
    return results


#: settings :func:`evaluate_study` may change: they act on stored vectors only
EVALUATION_SETTINGS = ("representations", "detectors", "all_detectors_for", "n_splits", "n_boot", "reduce_above")


def evaluate_study(out: Path, command: str = "", **overrides) -> dict:
    """Re-run the evaluation of a finished study from its store and rewrite results.json + report.html.

    No model is loaded and nothing is captured: other detectors, a representation filter, more
    bootstrap resamples, or new evaluation code over the same stored states. With no overrides the
    numbers equal the study's own. The live-monitor and phi-fidelity sections need the model, so
    they are kept from the original run (a note in the results says so).
    """
    from .data import load_suite
    from .report import write_report
    from .store import Store

    out = Path(out)
    path = out / "results.json"
    if not path.exists():
        raise ValueError(f"{path} does not exist; run `kvstate study -o {out}` first")
    unknown = sorted(set(overrides) - set(EVALUATION_SETTINGS))
    if unknown:
        raise ValueError(f"{unknown} change what is captured, not how it is evaluated; re-run `kvstate study` "
                         f"(evaluation settings: {', '.join(EVALUATION_SETTINGS)})")
    results = json.loads(path.read_text())
    cfg = StudyConfig(**{**results["meta"]["config"], **{k: v for k, v in overrides.items() if v is not None}})
    sources = {_suite_label(n): n for n in cfg.suites}
    per_model: dict[str, dict] = {}
    for key, task in results["tasks"].items():
        t0, model, label = time.perf_counter(), task["model"], task["suite"]
        root = out / "store" / _safe(model) / _safe(label)
        if not (root / "store.json").exists():
            raise ValueError(f"{root}: the store of {key} is missing; re-run `kvstate study -o {out}` to rebuild it")
        store = Store(root)
        suite = load_suite(sources[label], limit=cfg.limit, seed=cfg.seed)
        if suite.generation:  # the study's own cached replies, so the labels are the study's
            cache = _replies_path(out, model, suite.name)
            suite = suite.label_with(json.loads(cache.read_text()) if cache.exists() else {}, strict=True)
        stored = set(store.index()["item_key"])
        keyed = [(store.key(model, it.id, item_content(it)), it) for it in suite.items]
        keyed = [(k, it) for k, it in keyed if k in stored]  # items the study dropped as too long are absent
        index, arrays = store.load(keys=[k for k, _ in keyed])
        new = evaluate_task(index, arrays, cfg, [it for _, it in keyed])
        new.update({k: task[k] for k in ("model", "suite", "description", "layers") if k in task},
                   seconds=round(time.perf_counter() - t0, 1))
        results["tasks"][key] = new
        per_model.setdefault(model, {})[label] = (index, arrays)
        _log(f"[{key}] re-evaluated: {len(new['table'])} rows in {new['seconds']} s")
    results["transfer"] = {f"{m} | {rep}": block for m, per_suite in per_model.items()
                           for rep, block in _transfer(per_suite, cfg).items()}
    results["meta"]["config"] = asdict(cfg)
    results["meta"]["notes"].append(
        f"evaluation re-run from the store ({command or 'evaluate_study'}, "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}); monitor and fidelity are from the original run")
    _atomic_json(path, results)
    write_report(results, out)
    return results


def train_monitor(out: Path, model: str, suite: str, representation: str = "kv-elu-S/n-hn@end", *,
                  detector: str = "mahalanobis", fpr: float = 0.01, per_sequence: bool = False,
                  max_new_tokens: int = 40):
    """Fit a monitor on a study's stored normal states; returns (MonitorSpec, detector).

    By default the threshold is per step (``fpr`` of single normal states, out of fold). With
    ``per_sequence`` a third of the normal groups is held out of the fit, the model generates from
    those prompts under the monitor, and the threshold is set so that about ``fpr`` of normal
    replies cross it at any step (:meth:`Monitor.calibrate`); this loads the model.
    """
    from .models import MODELS, load_model
    from .monitor import Monitor, fit_monitor
    from .store import Store

    out = Path(out)
    name = model if model in MODELS else Path(model).name  # how the study names the model
    root = out / "store" / _safe(name) / _safe(suite)
    if not (root / "store.json").exists():
        raise ValueError(f"no stored states for {model}/{suite} in {out}; run `kvstate study` with that model and suite first")
    store = Store(root)
    index, arrays = store.load()
    if representation not in arrays:
        raise ValueError(f"{representation!r} is not stored. Available kv read-outs: "
                         + ", ".join(n for n in arrays if n.startswith("kv-") and "-S" in n))
    y, groups = index["label"].to_numpy().astype(int), index["group"].to_numpy()
    fit = np.ones(len(y), dtype=bool)
    if per_sequence:
        normal_groups = np.unique(groups[y == 0])
        held = np.random.default_rng(0).permutation(normal_groups)[: len(normal_groups) // 3]
        if len(held) < 2:
            raise ValueError(f"{suite} has {len(normal_groups)} groups of normal items; per-sequence calibration needs >= 6")
        fit = ~np.isin(groups, held)
    spec, det = fit_monitor(arrays[representation][fit], y[fit], groups[fit], representation,
                            store.settings["representations"], detector=detector, fpr=fpr, model=name)
    if per_sequence:
        results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
        cfg = StudyConfig(**((results.get("meta") or {}).get("config") or {}))
        from .data import load_suite

        source = {_suite_label(n): n for n in cfg.suites}.get(suite, suite)
        by_id = {it.id: it for it in load_suite(source, limit=cfg.limit, seed=cfg.seed).items}
        prompts = [{"messages": by_id[i].messages} for i in index["id"][~fit & (y == 0)]]
        lm = load_model(model, dtype=store.settings.get("dtype", "float32"))
        Monitor(lm, spec, det).calibrate(prompts, fpr=fpr, max_new_tokens=max_new_tokens)
    return spec, det


def _suite_label(name: str) -> str:
    """A file suite is named by its file stem in keys, folders and the report."""
    p = Path(name)
    return p.stem if p.suffix in {".jsonl", ".json", ".csv", ".parquet"} else name


def _fit_context(lm, items, max_tokens: int):
    from .tokens import as_prompt, encode

    keep = [it for it in items if len(encode(lm.tokenizer, as_prompt(it))) <= max_tokens]
    return keep, len(items) - len(keep)
