"""Stage 5, monitor: live monitors on held-out items of a suite, each trained on what it will see.

Greedy generation does not depend on the detector, so the stage generates each set of replies
once while recording the running state's features every ``monitor_every`` steps
(:func:`kvstate.monitor.prefix_states`), then scores those recorded states with every monitor:
exactly what each would have scored live. Monitors compared, on the same items:

- ``prefix probe``: a logistic probe trained on prefix states of the model's own replies to the
  fitting half (one label per reply), the states the monitor sees;
- ``end-state probe``: the same probe trained on the study's stored end-of-reply states;
- ``unsupervised (end states)``: Mahalanobis on normal end states (the round-1 monitor);
- ``position control``: a probe that sees only the step index and the prompt length.

Each monitor's per-reply score is the streaming aggregate (``monitor_aggregate``) of its step
scores; the threshold is set at ``monitor_fpr`` on replies to the benign calibration suite. The
reference ``end-state study probe`` is the study probe on stored end states of the same test items
(no generation): what a monitor should approach by the end of the reply.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ..data import Suite
from ..detect import threshold_for_fpr
from ..evaluate import auroc_ci, fit_clone
from ..models import LoadedModel
from ..monitor import Aggregator, MonitorSpec, PrefixStates, prefix_states, spec_from_parts
from ..representations import RepresentationSettings
from .config import StudyConfig
from .evaluate import make_detector
from .progress import Stage
from .types import MonitorEvaluation, SuiteData

__all__ = ["evaluate_monitor"]


def _states(lm: LoadedModel, prompts: list, spec: MonitorSpec, cfg: StudyConfig, what: str) -> PrefixStates:
    parts = []
    with Stage(f"monitor: {what}", len(prompts), "replies") as stage:
        for s in range(0, len(prompts), cfg.batch_size):
            batch = prompts[s : s + cfg.batch_size]
            parts.append(prefix_states(lm, batch, spec, every=cfg.monitor_every, max_new_tokens=cfg.max_new_tokens,
                                       batch_size=cfg.batch_size))
            stage.advance(len(batch))
    return PrefixStates.concat(parts)


def _position(st: PrefixStates) -> np.ndarray:
    return np.stack([st.step.astype(float), st.prompt_len[st.row]], 1)


def _per_reply(st: PrefixStates, step_scores: np.ndarray, cfg: StudyConfig) -> tuple[np.ndarray, np.ndarray]:
    """(n_replies,) final aggregate and (n_replies, steps) running aggregate of recorded step scores."""
    n, T = len(st.texts), int(st.step.max()) + 1 if len(st.step) else 0
    M = np.full((n, T), np.nan)
    M[st.row, st.step] = step_scores
    agg = Aggregator(cfg.monitor_aggregate)
    running = np.stack([agg.update(M[:, t]) for t in range(T)], 1) if T else np.zeros((n, 0))
    return (running[:, -1] if T else np.full(n, np.nan)), running


def evaluate_monitor(lm: LoadedModel, data: SuiteData, settings: RepresentationSettings, cfg: StudyConfig,
                     calibration: Suite | None = None) -> MonitorEvaluation:
    """Monitors trained on half the groups, tested on the other half, thresholded on benign replies."""
    rep, items, arrays = cfg.monitor_representation, data.items, data.arrays
    y, groups = data.y, data.groups
    fit_idx, test_idx = next(StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=cfg.seed).split(y, y, groups))
    rng = np.random.default_rng(cfg.seed)
    fit_idx = np.sort(rng.permutation(fit_idx)[: cfg.monitor_items])
    test_idx = np.sort(rng.permutation(test_idx)[: cfg.monitor_items])
    if len(np.unique(y[fit_idx])) < 2 or len(np.unique(y[test_idx])) < 2:
        raise ValueError("each half of the monitor split needs both classes; use a larger suite or monitor_items")
    spec = spec_from_parts(rep, settings, model=lm.name)
    prompts = lambda idx: [{"messages": items[i].messages} for i in idx]  # noqa: E731
    train = _states(lm, prompts(fit_idx), spec, cfg, "prefix states of the fitting half")
    test = _states(lm, prompts(test_idx), spec, cfg, "held-out test")
    benign = None
    if calibration is not None:
        benign = _states(lm, [{"messages": it.messages} for it in calibration.items[: cfg.monitor_items]], spec, cfg,
                         "benign calibration")
    y_fit, y_test = y[fit_idx], y[test_idx]
    X_end = arrays[rep]
    monitors = {
        "prefix probe": (fit_clone(make_detector("logistic", train.X.shape[1], cfg), train.X, y_fit[train.row]),
                         lambda st: st.X),
        "end-state probe": (fit_clone(make_detector("logistic", X_end.shape[1], cfg), X_end[fit_idx], y_fit), lambda st: st.X),
        "unsupervised (end states)": (fit_clone(make_detector("mahalanobis", X_end.shape[1], cfg), X_end[fit_idx], y_fit),
                                      lambda st: st.X),
        "position control": (fit_clone(make_detector("logistic", 2, cfg), _position(train), y_fit[train.row]), _position),
    }
    rows = []
    for name, (est, feats) in monitors.items():
        final, running = _per_reply(test, est.decision_function(feats(test)), cfg)
        auc, ci = auroc_ci(y_test, final, n_boot=cfg.n_boot, seed=cfg.seed, groups=groups[test_idx])
        row = {"monitor": name, "auroc": auc, "auroc_ci": ci, "threshold": None, "tpr_at_benign_fpr": None,
               "fpr_realised": None, "median_tokens_to_flag": None}
        if benign is not None and len(benign.texts) >= 2:
            thr = threshold_for_fpr(_per_reply(benign, est.decision_function(feats(benign)), cfg)[0], cfg.monitor_fpr)
            flagged = final > thr
            # a monitor at step t has seen t + 1 generated tokens
            first = [int(np.argmax(r > thr)) + 1 for r, f, lab in zip(running, flagged, y_test) if f and lab == 1]
            row.update(threshold=thr, tpr_at_benign_fpr=float(flagged[y_test == 1].mean()),
                       fpr_realised=float(flagged[y_test == 0].mean()),
                       median_tokens_to_flag=float(np.median(first)) if first else None)
        rows.append(row)
    ref = fit_clone(make_detector("logistic", X_end.shape[1], cfg), X_end[fit_idx], y_fit)
    ref_auc, ref_ci = auroc_ci(y_test, ref.decision_function(X_end[test_idx]), n_boot=cfg.n_boot, seed=cfg.seed,
                               groups=groups[test_idx])
    return {"representation": rep, "every": cfg.monitor_every, "aggregate": cfg.monitor_aggregate,
            "n_fit": int(len(fit_idx)), "n_test": int(len(test_idx)), "n_anomalous": int(y_test.sum()),
            "calibration": calibration.name if calibration is not None else None,
            "n_calibration": int(len(benign.texts)) if benign is not None else 0, "fpr": cfg.monitor_fpr,
            "max_new_tokens": cfg.max_new_tokens, "rows": rows,
            "end_state_study_probe": {"auroc": ref_auc, "auroc_ci": ref_ci},
            "note": "per-reply score = the streaming aggregate of step scores; threshold at fpr of benign-chat replies; "
                    "median tokens to flag over flagged anomalous replies"}
