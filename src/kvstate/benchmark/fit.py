"""A task's detector in one command: the family's leave-one-source-out choice, fitted on every
training source, its threshold set on the task's calibration traffic (``kvstate fit --task``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from ..capture import select_layers
from ..deploy import Detector, fit_detector
from ..deploy.folder import READS
from ..models import load_model
from .config import BenchmarkConfig
from .run import capture, choices, select, task_data
from .tasks import TaskData, TaskSpec

__all__ = ["fit_task"]

Family = Literal["kv-state", "activation", "control"]


def fit_task(task: TaskSpec, model: str, cfg: BenchmarkConfig, store: str | Path, *, family: Family = "kv-state") -> Detector:
    """The detector folder's contents for ``task`` on ``model``.

    The training and calibration parts of the task (never its test parts) are captured into
    ``store`` as a detector folder reads them; the ``family``'s best (representation, detector) by
    leave-one-source-out AUROC is fitted on all training items, and its threshold is set at
    ``cfg.fpr`` on the calibration parts' benign items, read at the same point (the prompt's end for
    prompt-only tasks).
    """
    data = task_data(task, cfg)
    data = TaskData(task, {"train": data.parts["train"], "calibration": data.parts["calibration"], "test": []},
                    data.duplicates, data.dropped)
    lm = load_model(model, dtype=cfg.dtype)
    feats, _ = capture(lm, data, cfg, Path(store), reads=READS)
    train, calib = feats["train"], feats["calibration"]
    table = select(train, cfg)
    best = choices(table).get(family)
    if best is None:
        raise ValueError(f"no {family} representation among {cfg.representations}; add one")
    rep = best["representation"]
    layers = select_layers(cfg.layers, lm.model.config.num_hidden_layers)
    settings = cfg.settings(tuple(layers)).to_dict()
    det = fit_detector(train.X[rep], train.y, f"{rep}@end", best["detector"], model=lm.name, dtype=lm.dtype, settings=settings,
                       seed=cfg.seed, reduce_above=cfg.reduce_above,
                       training={"source": f"task {task.name}", "suite": task.name, "task": task.name,
                                 "sources": sorted(set(train.sources.tolist())), "loso_auroc": best["loso_auroc"],
                                 "loso_worst": best["loso_worst"], "same_source_auroc": best["same_source_auroc"],
                                 "selection": "leave-one-source-out", "family": family, "layers": layers})
    benign = calib.subset(calib.y == 0)
    det.calibrate(det.decision_function(benign.X[rep]), fpr=cfg.fpr, source=f"task {task.name} calibration",
                  provenance={"sources": sorted(set(benign.sources.tolist())), "n": int(benign.y.size), "read": "end"})
    return det

