"""Stage: how well each phi's linear attention reproduces the model's softmax attention."""

from __future__ import annotations

from ..models import LoadedModel
from ..state.fidelity import attention_fidelity
from ..state.learned import HELDOUT_PROMPTS
from .config import StudyConfig
from .types import FidelityResult

__all__ = ["phi_fidelity"]


def phi_fidelity(lm: LoadedModel, cfg: StudyConfig) -> FidelityResult:
    """Relative error of linear attention vs the model's softmax attention output, per layer and phi,
    on prompts no suite uses (the learned phi's held-out set)."""
    df = attention_fidelity(lm, HELDOUT_PROMPTS, list(cfg.phis), layers=cfg.fidelity_layers, batch_size=cfg.batch_size)
    layers = sorted(df["layer"].unique().tolist())
    series = {str(p): [round(float(df[(df.phi == p) & (df.layer == l)]["rel_err"].iloc[0]), 4) for l in layers]
              for p in df["phi"].unique()}
    return {"layers": layers, "series": series, "metric": "relative error of the attention output (lower is better)"}
