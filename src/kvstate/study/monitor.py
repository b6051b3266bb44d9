"""Stage 5, monitor: the live monitor on held-out items of a suite, under both thresholds."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from ..detect import threshold_for_fpr
from ..models import LoadedModel
from ..monitor import Monitor, fit_monitor
from ..representations import RepresentationSettings
from .config import StudyConfig
from .progress import Stage
from .types import MonitorEvaluation, SuiteData

__all__ = ["evaluate_monitor"]


def evaluate_monitor(lm: LoadedModel, data: SuiteData, settings: RepresentationSettings,
                     cfg: StudyConfig) -> MonitorEvaluation:
    """Live monitor on held-out items, under both thresholds a user can calibrate.

    Grouped, stratified quarters (the suites' own split may hold one class only): the detector is
    fitted on the normal end-of-text states of half the groups, with the per-step threshold at
    ``monitor_fpr`` of their out-of-fold scores (:func:`fit_monitor`); the normal prompts of a quarter
    are generated with the monitor to set the per-sequence threshold (as :meth:`Monitor.calibrate`);
    the last quarter is generated once and scored under both. The peak AUROC (each reply's highest
    score, anomalous vs normal) needs no threshold at all.
    """
    rep, items, arrays = cfg.monitor_representation, data.items, data.arrays
    y, groups = data.y, data.groups
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
        with Stage(f"monitor: {what}", len(part), "replies") as stage:
            for s in range(0, len(part), cfg.batch_size):
                batch = [{"messages": it.messages} for it in part[s : s + cfg.batch_size]]
                rows += list(Monitor(lm, spec, det).generate(batch, max_new_tokens=cfg.max_new_tokens).scores)
                stage.advance(len(batch))
        return rows

    calib = pick([i for i in calib_idx if y[i] == 0], cfg.monitor_items)
    step_threshold = spec.threshold
    # a finished row's state, and so its score, no longer changes: its peak is over the steps it ran
    seq_threshold = (threshold_for_fpr([np.nanmax(r) for r in scores(calib, "calibrate on normal prompts")], cfg.monitor_fpr)
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
