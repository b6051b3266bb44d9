"""Streaming aggregation of per-step scores: the threshold applies to the aggregate, so one noisy
step need not flag a reply (``ema``, ``mean``) or any single step may (``max``).

>>> agg = Aggregator("ema", alpha=0.5)
>>> [round(float(agg.update(np.array([s]))[0]), 3) for s in (1.0, 3.0, 3.0)]
[1.0, 2.0, 2.5]
"""

from __future__ import annotations

from collections import deque
from typing import Literal

import numpy as np

from .._options import check_option

__all__ = ["Aggregate", "Aggregator"]

Aggregate = Literal["last", "max", "ema", "mean"]


class Aggregator:
    """Per-row running aggregate of scored steps (unscored steps, NaN, leave it unchanged).

    Parameters
    ----------
    kind : {"last", "max", "ema", "mean"}, default="max"
        ``last``: the current step's score; ``max``: the highest so far; ``ema``: exponential
        moving average with weight ``alpha`` on the new score; ``mean``: rolling mean over the last
        ``window`` scored steps.
    alpha : float, default=0.3
    window : int, default=8
    """

    def __init__(self, kind: Aggregate = "max", alpha: float = 0.3, window: int = 8):
        self.kind = check_option("aggregate", kind, Aggregate)
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.alpha, self.window = alpha, window
        self.value: np.ndarray | None = None
        self._recent: list[deque] = []

    def update(self, scores: np.ndarray) -> np.ndarray:
        """Fold in one step's scores (B,); returns the aggregate (B,) (NaN before any scored step)."""
        s = np.asarray(scores, dtype=float)
        if self.value is None:
            self.value = np.full(s.shape, np.nan)
            self._recent = [deque(maxlen=self.window) for _ in range(s.size)]
        new = ~np.isnan(s)
        first = new & np.isnan(self.value)
        if self.kind == "last":
            self.value = np.where(new, s, self.value)
        elif self.kind == "max":
            self.value = np.where(new, np.fmax(self.value, s), self.value)
        elif self.kind == "ema":
            self.value = np.where(first, s, np.where(new, self.alpha * s + (1 - self.alpha) * self.value, self.value))
        else:
            for i in np.flatnonzero(new):
                self._recent[i].append(s[i])
                self.value[i] = float(np.mean(self._recent[i]))
        return self.value.copy()
