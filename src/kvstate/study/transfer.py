"""Stage 4, transfer: detectors fitted on one suite and scored on others.

``cross_suite``: an unsupervised matrix across the study's own suites (different tasks).
``heldout_transfer``: train on one suite, test on another dataset of the same task, with the
threshold set on benign chat: what decides whether a detector can be deployed.
"""

from __future__ import annotations

import numpy as np

from ..deploy import calibration_representation, choose, has_replies
from ..detect import threshold_for_fpr
from ..evaluate import auroc_ci, fit_clone, length_matched_indices, metrics, transfer_matrix
from ..representations import COMPRESSED, RepName, kv_option
from .config import StudyConfig
from .evaluate import STATE_PROBE, make_detector, row_detector, state_probe
from .types import HeldoutTransfer, SuiteData, TaskResult, TransferBlock

__all__ = ["FAMILIES", "TRANSFER_REPRESENTATIONS", "choose", "cross_suite", "fit_choice", "heldout_transfer"]

TRANSFER_REPRESENTATIONS = ("kv-elu-S/n-hn@end", "kv-identity-S/n-pre-content@end", "act-resid-last@end")


def cross_suite(per_suite: dict[str, SuiteData | None], cfg: StudyConfig) -> dict[str, TransferBlock]:
    """Fit on one suite's normal items, score every other suite (same representation)."""
    names = [s for s, d in per_suite.items() if d is not None]
    if len(names) < 2:
        return {}
    out = {}
    for rep in TRANSFER_REPRESENTATIONS:
        if not all(rep in per_suite[s].arrays for s in names):
            continue
        data = {s: (per_suite[s].arrays[rep], per_suite[s].y, per_suite[s].groups) for s in names}
        dim = next(iter(data.values()))[0].shape[1]
        table = transfer_matrix(data, make_detector("mahalanobis", dim, cfg), n_splits=min(cfg.n_splits, 3), seed=cfg.seed)
        out[rep] = {"suites": names, "auroc": table.to_numpy().round(4).tolist(), "representation": rep,
                    "detector": "mahalanobis (unsupervised)"}
    return out


# ----------------------------------------------------------------------------------- held-out datasets
FAMILIES = ("kv-state", "activation", "control")


def _length_matched_auroc(test: SuiteData, s: np.ndarray, seed: int) -> float | None:
    try:
        idx = length_matched_indices(test.lengths, test.y, seed=seed)
    except ValueError:
        return None
    if len(idx) < 20 or len(np.unique(test.y[idx])) < 2:
        return None
    return metrics(test.y[idx], s[idx])["auroc"]


def fit_choice(train: SuiteData, row: dict, cfg: StudyConfig):
    """The chosen detector fitted on every training item (probes) or every normal one."""
    X = train.arrays[row["representation"]]
    name = row_detector(row["detector"])
    det = state_probe(train, row["representation"], cfg) if name == STATE_PROBE else make_detector(name, X.shape[1], cfg)
    return fit_clone(det, X, train.y)


def _transfer_row(train: SuiteData, row: dict, test: SuiteData, calib: SuiteData | None,
                  cfg: StudyConfig) -> tuple[dict, np.ndarray]:
    """One training-CV choice fitted on all training items and scored on the test suite: AUROC with
    a grouped bootstrap CI, and TPR / realised FPR at the threshold set on benign chat, whose items are
    read at the test items' read point (:func:`kvstate.deploy.calibration_representation`)."""
    rep = row["representation"]
    est = fit_choice(train, row, cfg)
    s = np.asarray(est.decision_function(test.arrays[rep]), dtype=float)
    auc, ci = auroc_ci(test.y, s, n_boot=cfg.n_boot, seed=cfg.seed, groups=test.groups)
    out = {"representation": rep, "in_distribution_auroc": row["auroc"],
           "in_distribution_ci": [row["auroc_lo"], row["auroc_hi"]], "auroc": auc, "auroc_ci": ci,
           "threshold": None, "tpr_at_benign_fpr": None, "fpr_realised": None, "calibration_read": None}
    # calibration items read where the test items are: at the prompt's end for prompt-only test items,
    # even when the calibration suite generated replies (benign-chat does), after the reply otherwise
    reply = has_replies(test.items)
    crep = calibration_representation(rep, reply) if calib is not None else rep
    if calib is not None and crep not in calib.arrays and not has_replies(calib.items):
        crep = rep  # a store without the prompt-end read: its items have no reply, so @end is the prompt's end
    if calib is not None and crep in calib.arrays:
        thr = threshold_for_fpr(np.asarray(est.decision_function(calib.arrays[crep]), dtype=float), cfg.transfer_fpr)
        out.update(threshold=thr, tpr_at_benign_fpr=float((s[test.y == 1] > thr).mean()),
                   fpr_realised=float((s[test.y == 0] > thr).mean()),
                   calibration_read="reply" if reply and has_replies(calib.items) else "prompt")
    return out, s


def heldout_transfer(train: SuiteData, task: TaskResult, test: SuiteData, calib: SuiteData | None,
                     cfg: StudyConfig) -> HeldoutTransfer:
    """Train on one suite, test on another of the same task, threshold on benign chat.

    For each family (KV state, activations, controls), supervised and unsupervised: the
    representation and detector with the best grouped-CV AUROC on the training suite, fitted on all
    of it, scored on the test suite (AUROC with a grouped bootstrap CI, length-matched AUROC) and
    on the benign calibration prompts, whose ``1 - transfer_fpr`` quantile is the threshold: the
    test suite's TPR and FPR at that threshold are what a deployment would see.
    """
    y = test.y
    rows = []
    for supervised in (True, False):
        for fam in FAMILIES:
            row = choose(task["table"], fam, supervised)
            if row is None or row["representation"] not in test.arrays:
                continue
            out, s = _transfer_row(train, row, test, calib, cfg)
            rows.append({"family": fam, "supervised": supervised, "detector": row["detector"], **out,
                         "length_matched_auroc": _length_matched_auroc(test, s, cfg.seed), "test_scores": s.tolist()})
    return {"train": train.name, "test": test.name, "n_test": int(len(y)),
            "label_counts": {str(c): int((y == c).sum()) for c in (0, 1)},
            "length_auroc": metrics(y, test.lengths)["auroc"], "calibration": calib.name if calib else None,
            "n_calibration": int(len(calib.y)) if calib else 0, "fpr": cfg.transfer_fpr, "rows": rows,
            "layer_sweep": _sweep_transfer(train, test, cfg), "ablation": _ablation(train, task, test, calib, cfg)}


def _ablation_groups(table: list[dict], state_probes: list[dict] = ()) -> dict[str, list[dict]]:
    """Logistic rows at the end read point, grouped by the option they test: each kv state option,
    the activations (the baseline to beat) and the two controls; and the state probes, options of
    their own: the bilinear probe on the compressed states, the virtual query on the whole states."""
    groups: dict[str, list[dict]] = {}
    for r in [*table, *state_probes]:
        n = RepName.parse(r["representation"])
        if r["detector"] not in ("logistic", STATE_PROBE) or n.read not in (None, "end") or n.is_sweep:
            continue
        if r["detector"] == STATE_PROBE:
            option = "bilinear probe on A S B^T" if n.readout == COMPRESSED else "virtual-query probe phi(q) S / phi(q).z"
        else:
            option = kv_option(str(n)) if n.prefix == "kv" else {"ctl-bow": "control: BoW", "ctl-length": "control: length"}.get(
                n.base, "activation (best)" if n.prefix == "act" else None)
        if option is not None:
            groups.setdefault(option, []).append(r)
    return groups


def _ablation(train: SuiteData, task: TaskResult, test: SuiteData, calib: SuiteData | None, cfg: StudyConfig) -> list[dict]:
    """Each state option under the transfer protocol: within the option, the logistic probe with the
    best training-CV AUROC (over feature maps), fitted on all training items, scored on the test
    suite, with its threshold set on benign chat. One row per option, so each option is compared
    with the plain state and the best activation read-out on the same items. An option whose
    training vectors are constant (the reply-only state where items have no reply) has no row."""
    rows = []
    for option, group in sorted(_ablation_groups(task["table"], task.get("state_probes", [])).items()):
        row = max(group, key=lambda r: (r["auroc"], r["representation"]))
        X = train.arrays.get(row["representation"])
        if X is None or not np.ptp(X, axis=0).any():  # constant, e.g. the reply-only state of a suite without replies
            continue
        if row["representation"] in test.arrays:
            rows.append({"option": option, "detector": row["detector"], **_transfer_row(train, row, test, calib, cfg)[0]})
    return rows


def _sweep_transfer(train: SuiteData, test: SuiteData, cfg: StudyConfig) -> dict:
    """Per-layer transfer AUROC of a logistic probe on the sweep representations."""
    layers = sorted(RepName.parse(n).layer for n in train.arrays if n.startswith("sweep-kv/") and n in test.arrays)
    series: dict[str, list[float]] = {"kv-state": [], "residual": []}
    for layer in layers:
        for key, name in (("kv-state", f"sweep-kv/{layer}"), ("residual", f"sweep-resid/{layer}")):
            X = train.arrays[name]
            est = fit_clone(make_detector("logistic", X.shape[1], cfg), X, train.y)
            series[key].append(round(metrics(test.y, est.decision_function(test.arrays[name]))["auroc"], 4))
    return {"layers": layers, "series": series, "detector": "logistic (fit on the training suite)"}
