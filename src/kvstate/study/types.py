"""The typed inputs and outputs of the study's stages.

In memory a captured suite is a :class:`SuiteData`; what a stage writes into results.json is a
``TypedDict`` (JSON has no classes, and the report reads the same keys back).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from ..data import Item

__all__ = ["FidelityResult", "HeldoutTransfer", "MonitorEvaluation", "SuiteData", "TaskResult", "TransferBlock"]


@dataclass
class SuiteData:
    """One (model, suite) after capture: the store's index rows, arrays by representation name, and
    the suite items, all in the same order."""

    name: str
    index: pd.DataFrame
    arrays: dict[str, np.ndarray]
    items: list[Item]

    @classmethod
    def from_store(cls, name: str, index: pd.DataFrame, arrays: dict[str, np.ndarray], items: list[Item]) -> "SuiteData":
        """Stored rows with the items' *current* labels and groups: a store key covers the prompt and
        the reply, not the label, so a corrected labelled file is evaluated with its new labels."""
        index = index.assign(label=[int(it.label) for it in items], group=[str(it.group) for it in items])
        return cls(name, index, arrays, list(items))

    @property
    def y(self) -> np.ndarray:
        return self.index["label"].to_numpy().astype(int)

    @property
    def groups(self) -> np.ndarray:
        return self.index["group"].to_numpy()

    @property
    def lengths(self) -> np.ndarray:
        return self.index["n_tokens"].to_numpy().astype(float)


class TaskResult(TypedDict, total=False):
    """results.json ``tasks[<model>/<suite>]``: the evaluation of one (model, suite)."""

    n: int
    label_counts: dict[str, int]
    table: list[dict[str, Any]]  # one row per representation x detector
    state_probes: list[dict[str, Any]]  # the bilinear probe on compressed states, rows as in ``table``
    curves: dict[str, dict[str, list[float]]]
    selection_corrected: dict[str, Any]
    layer_sweep: dict[str, Any]
    length_control: dict[str, Any]
    shuffled_label_auroc: float
    examples: list[dict[str, Any]]
    model: str
    suite: str
    description: str
    layers: list[int]
    seconds: float


class TransferBlock(TypedDict):
    """results.json ``transfer[<model> | <representation>]``: fit on one suite, score the others."""

    suites: list[str]
    auroc: list[list[float | None]]
    representation: str
    detector: str


class MonitorEvaluation(TypedDict):
    """results.json ``monitor[<model>/<suite>]``: live monitors on held-out items (one row each)."""

    representation: str
    every: int
    aggregate: str
    n_fit: int
    n_test: int
    n_anomalous: int
    calibration: str | None
    n_calibration: int
    fpr: float
    max_new_tokens: int
    rows: list[dict[str, Any]]
    end_state_study_probe: dict[str, Any]
    note: str


class FidelityResult(TypedDict):
    """results.json ``fidelity[<model>]``: linear vs softmax attention, per layer and phi."""

    layers: list[int]
    series: dict[str, list[float]]
    metric: str


class HeldoutTransfer(TypedDict):
    """results.json ``heldout[<model>/<train> -> <test>]``: train on one suite, test on another of
    the same task, threshold on benign chat (one row per family x supervised)."""

    train: str
    test: str
    n_test: int
    label_counts: dict[str, int]
    length_auroc: float
    calibration: str | None
    n_calibration: int
    fpr: float
    rows: list[dict[str, Any]]
    layer_sweep: dict[str, Any]
    ablation: list[dict[str, Any]]  # one row per state option (chosen on training CV within the option)
