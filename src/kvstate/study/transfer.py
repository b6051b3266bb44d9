"""Stage 4, transfer: detectors fitted on one suite and scored on the others."""

from __future__ import annotations

from ..evaluate import transfer_matrix
from .config import StudyConfig
from .evaluate import make_detector
from .types import SuiteData, TransferBlock

__all__ = ["TRANSFER_REPRESENTATIONS", "cross_suite"]

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
