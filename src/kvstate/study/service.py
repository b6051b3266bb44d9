"""Services over a finished study: fit a monitor on its stored states."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .._io import read_json
from ..data import load_suite
from ..models import load_model, model_name
from ..monitor import Monitor, fit_monitor
from ..store import Store, StudyLayout, suite_label
from .config import StudyConfig

__all__ = ["train_monitor"]


def train_monitor(out: Path, model: str, suite: str, representation: str = "kv-elu-S/n-hn@end", *,
                  detector: str = "mahalanobis", fpr: float = 0.01, per_sequence: bool = False,
                  max_new_tokens: int = 40):
    """Fit a monitor on a study's stored normal states; returns (MonitorSpec, detector).

    By default the threshold is per step (``fpr`` of single normal states, out of fold). With
    ``per_sequence`` a third of the normal groups is held out of the fit, the model generates from
    those prompts under the monitor, and the threshold is set so that about ``fpr`` of normal
    replies cross it at any step (:meth:`Monitor.calibrate`); this loads the model.
    """
    layout = StudyLayout(Path(out))
    name = model_name(model)  # how the study names the model
    if not layout.has_store(name, suite):
        raise ValueError(f"no stored states for {model}/{suite} in {out}; run `kvstate study` with that model and suite first")
    store = Store(layout.store(name, suite))
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
        results = read_json(layout.results, "study results file") if layout.results.exists() else {}
        cfg = StudyConfig(**((results.get("meta") or {}).get("config") or {}))
        source = {suite_label(n): n for n in cfg.suites}.get(suite, suite)
        by_id = {it.id: it for it in load_suite(source, limit=cfg.limit_of(source), seed=cfg.seed).items}
        prompts = [{"messages": by_id[i].messages} for i in index["id"][~fit & (y == 0)]]
        lm = load_model(model, dtype=store.settings.get("dtype", "float32"))
        Monitor(lm, spec, det).calibrate(prompts, fpr=fpr, max_new_tokens=max_new_tokens)
    return spec, det
