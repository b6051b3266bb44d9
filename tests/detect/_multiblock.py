"""Seeded multi-block data shared by the MLPM and stacking tests: blocks side by side, some informative."""

from __future__ import annotations

import numpy as np


def make_blocks(seed: int = 0, n: int = 200, width: int = 8, informative: tuple[int, ...] = (0, 2), n_blocks: int = 4,
                shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(2n, n_blocks * width) X and 0/1 y; blocks in ``informative`` carry a class shift on their
    first two columns (correlated noise within each block), the others are pure noise."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n, int), np.ones(n, int)]
    blocks = []
    for b in range(n_blocks):
        mix = rng.normal(size=(width, width)) / np.sqrt(width) + np.eye(width)
        Xb = rng.normal(size=(2 * n, width)) @ mix
        if b in informative:
            Xb[:, :2] += shift * y[:, None]
        blocks.append(Xb)
    return np.hstack(blocks), y
