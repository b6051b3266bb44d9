"""Fit a monitor's detector: on a study's stored end-of-reply states (:func:`fit_monitor`), or on
the states the monitor will actually see, prefix states of the model's own generations
(:func:`prefix_states`, :func:`fit_prefix_detector`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import clone

from ..capture import encode_all
from ..detect import get_detector, is_supervised, make_detector, reduce_if_wide, threshold_for_fpr
from ..evaluate import evaluate_detector, fit_clone
from ..representations import RepresentationSettings, parse_kv_name
from .live import Monitor
from .spec import MonitorSpec

__all__ = ["PrefixStates", "fit_monitor", "fit_prefix_detector", "prefix_states"]


def fit_monitor(X, y, groups, representation: str, settings: dict, *, detector: str = "mahalanobis",
                fpr: float = 0.01, seed: int = 0, model: str = "", reduce_above: int = 512):
    """Fit a detector on normal items and calibrate its threshold on out-of-fold normal scores.

    In-sample scores of the training items would be optimistic (too low), so the threshold is the
    (1 - fpr) quantile of cross-validated scores of normal items; the final detector is then fitted
    on all normal items. Returns (MonitorSpec, detector).
    """
    phi_key, _ = parse_kv_name(representation)
    phi = RepresentationSettings.from_dict(settings).feature_map(phi_key)  # the map the stored states used
    det = get_detector(detector)
    if is_supervised(det):
        raise ValueError(f"{detector} is supervised; a monitor is fitted on normal data only (use mahalanobis, pca, knn)")
    det = reduce_if_wide(det, X.shape[1], reduce_above, random_state=seed)
    y = np.asarray(y)
    k = min(5, len(np.unique(np.asarray(groups)[y == 0])))
    if k < 2:
        raise ValueError("too few groups of normal items to calibrate a threshold; use a larger suite")
    oof = evaluate_detector(X, y, groups, det, n_splits=k, seed=seed, n_boot=1, ci_metrics=())
    threshold = threshold_for_fpr(oof.scores[y == 0], fpr)
    final = clone(det).fit(X[y == 0])
    spec = MonitorSpec(representation, list(settings["layers"]), phi.config(), settings,
                       threshold=threshold, fpr=fpr, model=model,
                       notes={"detector": detector, "n_normal": int((y == 0).sum()), "oof_auroc": oof.metrics["auroc"]})
    return spec, final


# ----------------------------------------------------------------------------------- prefix states
@dataclass
class PrefixStates:
    """Features of the running state during the model's own generations, every ``every`` steps.

    ``X[i]`` is the representation after ``step[i] + 1`` generated tokens of reply ``row[i]``;
    ``texts[r]`` and ``tokens[r]`` are reply r's text and new token ids.
    """

    X: np.ndarray
    row: np.ndarray
    step: np.ndarray
    texts: list[str]
    tokens: list[list[int]]
    prompt_len: np.ndarray | None = None  # (replies,) prompt tokens of each reply

    @classmethod
    def concat(cls, parts: Sequence["PrefixStates"]) -> "PrefixStates":
        """One set from consecutive batches (rows renumbered)."""
        offsets = np.cumsum([0] + [len(p.texts) for p in parts])
        return cls(np.concatenate([p.X for p in parts]), np.concatenate([p.row + o for p, o in zip(parts, offsets)]),
                   np.concatenate([p.step for p in parts]), sum((p.texts for p in parts), []),
                   sum((p.tokens for p in parts), []), np.concatenate([p.prompt_len for p in parts]))

    def labels(self, y: np.ndarray, onset: list[int | None] | None = None) -> np.ndarray:
        """Per-state labels: each reply's label (per sequence), or, with ``onset`` (the first step
        of a violation per reply, None if none), 1 from that step on and 0 before it."""
        y = np.asarray(y).astype(int)
        if onset is None:
            return y[self.row]
        start = np.array([np.inf if o is None else o for o in onset])
        return (self.step >= start[self.row]).astype(int)


class _Recorder:
    """A stand-in detector that keeps every feature matrix the monitor asks it to score."""

    def __init__(self):
        self.calls: list[np.ndarray] = []

    def decision_function(self, X):
        self.calls.append(np.array(X, copy=True))
        return np.zeros(len(X))


def prefix_states(lm, prompts: Sequence[Any], spec: MonitorSpec, *, every: int = 4, max_new_tokens: int = 40,
                  batch_size: int = 8, **generate_kwargs) -> PrefixStates:
    """Generate from ``prompts`` under a monitor and keep the features it would score (alive rows only)."""
    Xs, rows, steps, texts, tokens = [], [], [], [], []
    for s in range(0, len(prompts), batch_size):
        rec = _Recorder()
        mon = Monitor(lm, spec, rec, every=every)
        res = mon.generate(list(prompts[s : s + batch_size]), max_new_tokens=max_new_tokens, **generate_kwargs)
        scored = [t for t in range(res.scores.shape[1]) if t % every == 0]
        for X, t in zip(rec.calls, scored):
            alive = [i for i in range(len(X)) if res.alive[i, t]]
            Xs.append(X[alive])
            rows += [s + i for i in alive]
            steps += [t] * len(alive)
        texts += res.texts
        tokens += [seq[res.prompt_len:].tolist() for seq in res.sequences]
    lengths = np.array([len(e) for e in encode_all(lm, list(prompts))], dtype=float)
    return PrefixStates(np.concatenate(Xs) if Xs else np.zeros((0, 0)), np.array(rows, dtype=int), np.array(steps, dtype=int),
                        texts, tokens, lengths)


def fit_prefix_detector(states: PrefixStates, y_states: np.ndarray, *, detector: str = "logistic", seed: int = 0,
                        reduce_above: int = 512):
    """A detector fitted on prefix states: probes on every state, unsupervised detectors on the normal ones."""
    return fit_clone(make_detector(detector, states.X.shape[1], reduce_above=reduce_above, seed=seed), states.X, y_states)
