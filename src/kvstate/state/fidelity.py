"""How well does linear attention with a feature map phi reproduce a model's real softmax attention?

A state S = sum phi(k)^T v is only a faithful summary of the context if phi(q) S / phi(q).z is close
to what the model actually computed, softmax(q k^T s) V. We capture real q, k, v (post-RoPE, the
attention's own mask and scaling) with :class:`~kvstate.capture.KVCapture`, compute the causal
linear-attention output for every phi, and compare it with the model's attention output (before
o_proj) at every real query position:

    rel_err = ||y_hat - y|| / ||y||      cosine = <y_hat, y> / (||y_hat|| ||y||)

per (query token, query head), then mean / median per layer. Nothing is fitted here; a learned phi
(:mod:`kvstate.learned_phi`) must be trained on *other* prompts for the numbers to mean anything.

Random-feature and Taylor maps approximate exp(s q.k) only with the attention's own scale ``s``:
by default each such map whose ``scale`` is unset is rebuilt with the scaling the model passes to
its attention (``call.kwargs["scaling"]``). Logit soft-capping (Gemma 2) is not modelled.
"""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch

from ..capture.engine import Recorder, check_layers, encode_all, run
from ..capture.hook import AttentionCall
from ..capture.masks import allowed_keys as _allowed
from ..models import LoadedModel
from .extract import key_name
from .phi import FeatureMap, for_layer, get_phi

DEFAULT_PHIS: tuple[Any, ...] = (
    "identity", "elu",
    {"name": "random", "n_features": 64}, {"name": "random", "n_features": 256},
    {"name": "random", "n_features": 1024}, "taylor",
)
COLUMNS = ["layer", "phi", "rel_err", "rel_err_median", "cosine", "cosine_median", "neg_den", "n"]


def phi_label(phi: FeatureMap) -> str:
    """Short name for tables: ``random256``, ``learned``, ``elu`` ..."""
    return key_name(phi)


def with_scaling(phi: FeatureMap, scaling: float | None) -> FeatureMap:
    """Rebuild a map that has an unset ``scale`` (random, taylor) with the attention's own scaling."""
    cfg = phi.config()
    if scaling is None or "scale" not in cfg or cfg["scale"] is not None:
        return phi
    return get_phi({**cfg, "scale": float(scaling)})


def allowed_keys(call: AttentionCall) -> torch.Tensor:
    """Boolean (B, 1|H, q_len, T_kv) of the keys each query may attend to, exactly as softmax saw them.

    Uses the mask the attention function received (padding, sliding windows), or causal when None.
    """
    return _allowed(call.mask, call.q_len, call.key.shape[2], call.key.device)


def masked_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, phi: FeatureMap, allowed: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadratic form of causal linear attention: (A V) / A.1 with A = phi(Q) phi(K)^T masked.

    Same numbers as :func:`kvstate.state.causal_linear_attention` (same sign-keeping ``eps`` guard
    on the denominator) but one batched matmul, which is faster for prompts of a few hundred tokens.
    q: (B, Hq, T, d); k, v: (B, Hkv, T_kv, d) with Hq a multiple of Hkv (GQA).
    Returns (output (B, Hq, T, d_v), denominator (B, Hq, T)).
    """
    rep = q.shape[1] // k.shape[1]
    fq = phi(q.float())
    fk = phi(k.float()).repeat_interleave(rep, dim=1)
    a = (fq @ fk.transpose(-1, -2)) * allowed.to(fq.dtype)
    num = a @ v.float().repeat_interleave(rep, dim=1)
    den = a.sum(-1)
    safe = torch.where(den.abs() < eps, torch.full_like(den, eps).copysign(den), den)
    return num / safe.unsqueeze(-1), den


def compare(y_hat: torch.Tensor, y: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Relative error and cosine per vector (last dim), robust to zero norms."""
    y_hat, y = y_hat.double(), y.double()
    ny = y.norm(dim=-1).clamp_min(eps)
    rel = (y_hat - y).norm(dim=-1) / ny
    cos = (y_hat * y).sum(-1) / (y_hat.norm(dim=-1).clamp_min(eps) * ny)
    return rel.float(), cos.float()


class FidelityRecorder(Recorder):
    """Per layer and phi, collect rel. error / cosine of every real (query token, head)."""

    def __init__(self, layers: Sequence[int], phis: Sequence[FeatureMap], match_scaling: bool = True,
                 skip_first: int = 0, eps: float = 1e-6):
        self.layers, self.phis = set(layers), list(phis)
        self.match_scaling, self.skip_first, self.eps = match_scaling, skip_first, eps
        self.rows: dict[tuple[int, str], dict[str, list[torch.Tensor]]] = {}

    def _query_mask(self) -> torch.Tensor:
        """(B, T) real query positions, minus the first ``skip_first`` tokens of each item."""
        mask = self.batch.attention_mask.bool()
        rank = mask.long().cumsum(-1) - 1
        return mask & (rank >= self.skip_first)

    def __call__(self, call: AttentionCall) -> None:
        if call.layer not in self.layers:
            return
        allowed = allowed_keys(call).to(call.query.device)
        y = call.output.transpose(1, 2).float()  # (B, Hq, T, d_v)
        keep = self._query_mask().to(y.device)[:, None, :].expand(-1, y.shape[1], -1)
        scaling = call.kwargs.get("scaling") if self.match_scaling else None
        for phi in self.phis:
            p = with_scaling(for_layer(phi, call.layer), scaling)
            y_hat, den = masked_linear_attention(call.query, call.key, call.value, p, allowed, self.eps)
            rel, cos = compare(y_hat, y)
            acc = self.rows.setdefault((call.layer, phi_label(phi)), {"rel": [], "cos": [], "den": []})
            acc["rel"].append(rel[keep].cpu())
            acc["cos"].append(cos[keep].cpu())
            acc["den"].append(den[keep].cpu())

    def frame(self) -> pd.DataFrame:
        """One row per (layer, phi); ``neg_den`` is the share of queries with a denominator <= 0."""
        out = []
        for (layer, label), acc in sorted(self.rows.items(), key=lambda kv: kv[0][0]):
            rel, cos, den = (torch.cat(acc[k]).double() for k in ("rel", "cos", "den"))
            out.append({"layer": layer, "phi": label, "rel_err": rel.mean().item(), "rel_err_median": rel.median().item(),
                        "cosine": cos.mean().item(), "cosine_median": cos.median().item(),
                        "neg_den": (den <= 0).double().mean().item(), "n": int(rel.numel())})
        order = {phi_label(p): i for i, p in enumerate(self.phis)}
        df = pd.DataFrame(out, columns=COLUMNS)
        return df.sort_values(["layer", "phi"], key=lambda s: s.map(order) if s.name == "phi" else s,
                              ignore_index=True)


def _check_phis(phis: Sequence[Any], layers: Sequence[int]) -> list[FeatureMap]:
    """Build the maps; per-layer maps must cover every requested layer and labels must be unique."""
    maps = [get_phi(p) for p in phis]
    for p in maps:
        covered = getattr(p, "layers", None)
        if callable(getattr(p, "for_layer", None)) and covered is not None and getattr(p, "layer", None) is None:
            missing = sorted(set(layers) - set(covered))
            if missing:
                raise ValueError(f"{phi_label(p)} phi has no weights for layers {missing}; train it on them or pass layers=")
    labels = [phi_label(p) for p in maps]
    if len(set(labels)) != len(labels):
        raise ValueError(f"feature maps must have distinct names, got {labels}")
    return maps


def attention_fidelity(
    lm: LoadedModel,
    prompts: Sequence[Any] | Any,
    phis: Sequence[str | dict | FeatureMap] = DEFAULT_PHIS,
    layers: Sequence[int] | int | str | None = None,
    *,
    match_scaling: bool = True,
    skip_first: int = 0,
    chat: bool | None = None,
    batch_size: int = 8,
    eps: float = 1e-6,
) -> pd.DataFrame:
    """Per layer x phi: how close causal linear attention is to the model's softmax attention output.

    Args:
        prompts: anything :func:`kvstate.extract` accepts (strings, chats, dicts with a response).
        phis: names, config dicts or instances; a :class:`~kvstate.learned_phi.LearnedPhi` is applied
            per layer. layers: indices or a scheme name (default all).
        match_scaling: give random/taylor maps with unset ``scale`` the attention's own scaling.
        skip_first: ignore the first k query positions of each prompt (position 0 is trivially exact
            for any positive phi: it attends only to itself).

    Returns:
        DataFrame with columns ``layer, phi, rel_err (mean), rel_err_median, cosine (mean),
        cosine_median, neg_den, n`` (n = query tokens x query heads). Identity linear attention
        has a signed denominator; ``neg_den`` reports how often it is <= 0, where its output is
        meaningless (divisions are guarded, not hidden).
    """
    layer_list = check_layers(lm, layers)
    rec = FidelityRecorder(layer_list, _check_phis(phis, layer_list), match_scaling, skip_first, eps)
    encoded = encode_all(lm, prompts, chat)
    run(lm, encoded, [rec], reads=["end"], batch_size=batch_size, progress=False)
    return rec.frame()


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Median over layers per phi (rows in the order the maps were given)."""
    order = list(dict.fromkeys(df["phi"]))
    agg = df.groupby("phi")[["rel_err", "rel_err_median", "cosine", "neg_den"]].median()
    return agg.loc[order]
