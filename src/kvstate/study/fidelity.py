"""Stages of the feature maps: the learned (Hedgehog) map of each model, the benign reference
queries its states are also read with, and how well each phi's linear attention reproduces the
model's softmax attention."""

from __future__ import annotations

from typing import Sequence

from ..capture import check_layers
from ..models import LoadedModel
from ..state.fidelity import attention_fidelity
from ..state.learned import (
    CALIBRATION_PROMPTS,
    HELDOUT_PROMPTS,
    LearnedPhi,
    load_reference_queries,
    prompts_hash,
    reference_queries,
    save_reference_queries,
    train_learned_phi,
)
from ..store import StudyLayout
from .config import StudyConfig
from .progress import log
from .types import FidelityResult

__all__ = ["learned_phi", "phi_fidelity", "reference_query_file"]


def learned_phi(lm: LoadedModel, layout: StudyLayout, layers: Sequence[int], cfg: StudyConfig) -> str:
    """The spec (``learned:<path>``) of the model's Hedgehog map at ``layers``, trained once on the
    calibration prompts (no suite's items) and cached in the study folder; a cached map trained
    for other layers or another seed is retrained."""
    path = layout.learned_phi(lm.name)
    if path.exists():
        phi = LearnedPhi.load(path)
        if phi.layers == sorted(layers) and phi.meta.get("seed") == cfg.seed and phi.meta.get("model") == lm.name:
            return f"learned:{path}"
    log(f"[{lm.name}] training the learned (Hedgehog) phi at layers {list(layers)}")
    train_learned_phi(lm, CALIBRATION_PROMPTS, list(layers), seed=cfg.seed, batch_size=cfg.batch_size).save(path)
    return f"learned:{path}"


def reference_query_file(lm: LoadedModel, layout: StudyLayout, layers: Sequence[int]) -> str:
    """The path of the model's reference queries at ``layers`` (the calibration prompts' last-token
    queries, as the learned map is trained on them: no suite's items), computed once per study folder."""
    path = layout.reference_queries(lm.name)
    meta = {"model": lm.name, "prompts": prompts_hash(CALIBRATION_PROMPTS)}
    if path.exists():
        _, old = load_reference_queries(path)
        if old.get("layers") == sorted(layers) and all(old.get(k) == v for k, v in meta.items()):
            return str(path)
    log(f"[{lm.name}] recording the benign reference queries at layers {list(layers)}")
    save_reference_queries(path, reference_queries(lm, layers), meta)
    return str(path)


def phi_fidelity(lm: LoadedModel, cfg: StudyConfig, phis: Sequence[str] | None = None) -> FidelityResult:
    """Relative error of linear attention vs the model's softmax attention output, per layer and phi,
    on prompts no suite uses (the learned phi's held-out set). ``phis`` defaults to ``cfg.phis``; a
    learned map is measured at the fidelity layers it was trained for."""
    phis = list(phis or cfg.phis)
    layers = check_layers(lm, cfg.fidelity_layers)
    learned = [p for p in phis if p.startswith("learned:")]
    if learned and not set(layers) <= set(LearnedPhi.load(learned[0].partition(":")[2]).layers):
        phis = [p for p in phis if p not in learned]  # no weights at some fidelity layer
    df = attention_fidelity(lm, HELDOUT_PROMPTS, phis, layers=cfg.fidelity_layers, batch_size=cfg.batch_size)
    layers = sorted(df["layer"].unique().tolist())
    series = {str(p): [round(float(df[(df.phi == p) & (df.layer == l)]["rel_err"].iloc[0]), 4) for l in layers]
              for p in df["phi"].unique()}
    return {"layers": layers, "series": series, "metric": "relative error of the attention output (lower is better)"}
