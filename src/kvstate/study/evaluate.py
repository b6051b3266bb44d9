"""Stage 3, evaluate: every representation x detector of one (model, suite) under grouped CV, with
CIs, length-matched AUROC, the held-out choice of each family's best, the layer sweep and controls."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Callable

import numpy as np
from sklearn.metrics import roc_curve

from ..detect import QueryProbe, detector_name
from ..detect import make_detector as _make_detector
from ..evaluate import (
    confound_warnings,
    evaluate_detector,
    evaluate_length_matched,
    length_matched_indices,
    metrics,
    selection_corrected,
    shuffled_label_control,
)
from ..representations import COMPRESSED, QUERY_STATE, RepName, family
from .config import CORE, LENGTH_MATCHED_FOR, StudyConfig
from .progress import Stage, log
from .types import SuiteData, TaskResult

__all__ = ["STATE_PROBE", "TooFewGroups", "best", "check_groups", "evaluate_task", "make_detector", "row_detector",
           "state_probe"]

#: the probes on whole, unflattened states (:class:`~kvstate.detect.QueryProbe`); not in the
#: flat-vector registry, because they need the state's shape (:func:`state_probe` builds them)
STATE_PROBE = "query_probe"


def make_detector(name: str, dim: int, cfg: StudyConfig):
    """A registered detector, behind PCA when the vectors are wide and the detector unsupervised."""
    return _make_detector(name, dim, reduce_above=cfg.reduce_above, seed=cfg.seed)


def state_probe(data: SuiteData, name: str, cfg: StudyConfig) -> QueryProbe:
    """The probe of a whole stored state ``name`` of ``data``: a rank-1 bilinear form per head on the
    compressed state A S B^T (per head an a x b matrix, ``cfg.compress = [a, b]``), or a virtual
    query per head, phi(q) S / phi(q).z, on the query state (``kv-<phi>-Sz/n``: every head's d x d
    S/n, then its z/n; the width of ``kv-<phi>-z/n`` gives the number of heads)."""
    dim, n = data.arrays[name].shape[1], RepName.parse(name)
    if n.readout == QUERY_STATE:
        z_width = int(json.loads(data.index["dims"].iloc[0]).get(str(RepName("kv", f"{n.phi}-z/n", n.read)), 0))
        d = dim // z_width - 1 if z_width else 0
        if d < 1 or dim != z_width * (d + 1) or z_width % d:
            raise ValueError(f"{name}: {dim} values are not heads of d x d S/n then d z/n (z/n has {z_width}); "
                             "record it with query_states on")
        return QueryProbe(state_shape=(z_width // d, 1, d, d), kind="query", with_z=True, random_state=cfg.seed)
    a, b = cfg.compress or (0, 0)
    if n.readout != COMPRESSED or not a or dim % (a * b):
        raise ValueError(f"the state probe reads compressed states of (a, b) = {tuple(cfg.compress)} per head; "
                         f"{name} ({dim} values) is not one (set compress = [a, b] and use a kv-<phi>-ASB/n state)")
    return QueryProbe(state_shape=(dim // (a * b), 1, a, b), kind="bilinear", rank=1, random_state=cfg.seed)


def row_detector(descriptor: str) -> str:
    """The :func:`make_detector` name inside an evaluation row's detector descriptor (``STATE_PROBE``
    for a state probe's row: build that one with :func:`state_probe`)."""
    return STATE_PROBE if descriptor == STATE_PROBE else detector_name(descriptor)


def _whole_state(name: str, cfg: StudyConfig) -> bool:
    """A state a probe reads unflattened: the compressed state (when ``cfg.compress`` is set) or the query state."""
    readout = RepName.parse(name).readout
    return readout == QUERY_STATE or (readout == COMPRESSED and bool(cfg.compress))


def check_groups(y: np.ndarray, groups: np.ndarray, n_splits: int) -> int:
    """The number of grouped folds a task allows: every training part needs normal items
    (unsupervised) and both classes (probes), so each class must appear in at least k groups, and
    normal items in at least 4 (so that each training part keeps >= 2 for an unsupervised fit)."""
    per_class = [len(np.unique(groups[y == c])) for c in (0, 1)]
    k = min([n_splits, *per_class])
    if k < 2 or per_class[0] < MIN_NORMAL_GROUPS:
        raise TooFewGroups(f"labels 0/1 occur in {per_class[0]}/{per_class[1]} groups; grouped CV needs >= 2 each "
                           f"and >= {MIN_NORMAL_GROUPS} of label 0 (unsupervised detectors fit on the normal items)")
    return k


MIN_NORMAL_GROUPS = 4


def evaluate_task(data: SuiteData, cfg: StudyConfig, log: Callable = log) -> TaskResult:
    """Every representation x detector, grouped CV, CIs, length-matched AUROC, sweep, controls."""
    index, arrays, items = data.index, data.arrays, data.items
    y, groups, lengths = data.y, data.groups, data.lengths
    dims = json.loads(index["dims"].iloc[0])
    cfg = replace(cfg, n_splits=check_groups(y, groups, cfg.n_splits))
    time_ms = float(index["time_ms"].mean())
    main = sorted(n for n in arrays if RepName.parse(n).read == "end"
                  and (cfg.representations is None or n.startswith(tuple(cfg.representations))))
    extra_reads = [f"{c}@prompt_end" for c in CORE if f"{c}@prompt_end" in arrays and _has_response(items)
                   and (cfg.representations is None or c.startswith(tuple(cfg.representations)))]
    rows, results = [], {}
    # a store written before the compressed state was kept whole holds it randomly projected: no state probe there
    probes = [n for n in main if _whole_state(n, cfg) and int(dims.get(n, -1)) == arrays[n].shape[1]] \
        if "logistic" in cfg.detectors else []
    # the query state (tens of thousands of values) is read by its probe only
    query = [n for n in main if RepName.parse(n).readout == QUERY_STATE]
    main = [n for n in main if n not in query]
    try:
        matched = length_matched_indices(lengths, y, seed=cfg.seed)
    except ValueError:  # no length bin holds both classes: length alone separates them
        matched = np.array([], dtype=int)
    with Stage("evaluate", len(main + extra_reads + query), "representations") as stage:
        for name in main + extra_reads + query:
            base = RepName.parse(name).base
            dets = [] if name in query else cfg.detectors if base in cfg.all_detectors_for \
                else [d for d in ("mahalanobis", "logistic") if d in cfg.detectors]
            X = arrays[name]
            for det_name in dets + ([STATE_PROBE] if name in probes else []):
                det = state_probe(data, name, cfg) if det_name == STATE_PROBE else make_detector(det_name, X.shape[1], cfg)
                r = evaluate_detector(X, y, groups, det, n_splits=cfg.n_splits, seed=cfg.seed, n_boot=cfg.n_boot,
                                      representation=name)
                lm_auc = None
                if det_name in LENGTH_MATCHED_FOR and len(matched) >= 20 and len(np.unique(y[matched])) == 2:
                    lm_auc = evaluate_length_matched(X, y, groups, lengths, det, n_splits=min(cfg.n_splits, 3), seed=cfg.seed,
                                                     n_boot=1, ci_metrics=()).metrics["auroc"]
                rows.append({
                    "representation": name, "family": family(name), "detector": r.detector, "supervised": r.supervised,
                    "auroc": r.metrics["auroc"], "auroc_lo": r.ci["auroc"][0], "auroc_hi": r.ci["auroc"][1],
                    "auprc": r.metrics["auprc"], "tpr_at_1fpr": r.metrics["tpr_at_1fpr"],
                    "tpr_at_1fpr_lo": r.ci["tpr_at_1fpr"][0], "tpr_at_1fpr_hi": r.ci["tpr_at_1fpr"][1],
                    "fpr_at_95tpr": r.metrics["fpr_at_95tpr"], "dim": int(dims.get(name, X.shape[1])),
                    "dim_used": int(X.shape[1]), "time_per_item_ms": time_ms, "length_matched_auroc": lm_auc,
                })
                results[(name, r.detector)] = r
            stage.advance(1)
    log(f"  evaluated {len(rows)} representation x detector rows")
    # the state probe's rows sit beside the table: the ablation compares them, but nothing that
    # deploys or monitors a table row (flat vectors, registered detectors) can pick them
    state_probes = [r for r in rows if r["detector"] == STATE_PROBE]
    rows = [r for r in rows if r["detector"] != STATE_PROBE]
    task: TaskResult = {"n": int(len(y)), "label_counts": {str(k): int((y == k).sum()) for k in (0, 1)}, "table": rows,
                        "state_probes": state_probes}
    task["curves"] = _curves(rows, results)
    # the "best" rows above are maxima over many candidates; this picks on half the groups, scores the other
    unsup = {f"{r['representation']}|{r['detector']}": r for r in rows
             if not r["supervised"] and r["family"] in ("kv-state", "activation")}
    task["selection_corrected"] = selection_corrected(
        {k: results[(r["representation"], r["detector"])].scores for k, r in unsup.items()},
        {k: r["family"] for k, r in unsup.items()}, y, groups, seed=cfg.seed)
    task["layer_sweep"] = _sweep(arrays, y, groups, cfg)
    length_auc = metrics(y, lengths)["auroc"]
    warn = confound_warnings(lengths, y)
    task["length_control"] = {"length_auroc": float(length_auc), "warning": warn[0] if warn else None,
                              "length_matched_n": int(len(matched))}
    best_kv = best(rows, "kv-state", supervised=True) or rows[0]
    sh = shuffled_label_control(arrays[best_kv["representation"]], y, groups,
                                make_detector("logistic", arrays[best_kv["representation"]].shape[1], cfg),
                                n_permutations=3, seed=cfg.seed)
    task["shuffled_label_auroc"] = float(sh["auroc_mean"])
    task["examples"] = _examples(items, results, rows)
    return task


class TooFewGroups(ValueError):
    """A task whose labels sit in too few groups for grouped cross-validation."""


def _has_response(items) -> bool:
    return any(it.response for it in items)


def best(rows, fam: str, supervised: bool = False):
    cand = [r for r in rows if r["family"] == fam and r["supervised"] == supervised]
    return max(cand, key=lambda r: r["auroc"]) if cand else None


def _curves(rows, results) -> dict:
    out = {}
    picks = [best(rows, "kv-state"), best(rows, "activation"),
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
    layers = sorted(RepName.parse(n).layer for n in arrays if n.startswith("sweep-kv/"))
    series = {"kv-state": [], "residual": []}
    with Stage("layer sweep", len(layers), "layers") as stage:
        for l in layers:
            for key, name in (("kv-state", f"sweep-kv/{l}"), ("residual", f"sweep-resid/{l}")):
                X = arrays[name]
                r = evaluate_detector(X, y, groups, make_detector("mahalanobis", X.shape[1], cfg), n_splits=cfg.n_splits,
                                      seed=cfg.seed, n_boot=1, ci_metrics=())
                series[key].append(round(r.metrics["auroc"], 4))
            stage.advance(1)
    return {"layers": layers, "series": series, "detector": "mahalanobis (unsupervised)"}


def _examples(items, results, rows, n: int = 6) -> list[dict]:
    row = best(rows, "kv-state")
    if row is None:
        return []
    r = results[(row["representation"], row["detector"])]
    order = np.argsort(-r.scores)
    pick = list(order[: n // 2]) + list(order[-(n - n // 2):])
    return [{"id": items[i].id, "label": int(items[i].label), "text": items[i].text()[:600],
             "response": (items[i].response or "")[:300], "score": float(r.scores[i]),
             "scored_by": f"{row['representation']} | {row['detector']}"} for i in pick]
