"""The recorder's kv read-outs rebuilt from running states, so a detector fitted on stored study
features can score a live state (used by :mod:`kvstate.monitor`)."""

from __future__ import annotations

import numpy as np
import torch

from .names import KV_KINDS, decay_of
from .projection import sketch
from .settings import COMPRESSED, RepresentationSettings

__all__ = ["headnorm", "kv_features", "kv_readout"]


def headnorm(S: torch.Tensor) -> torch.Tensor:
    """Divide each head's matrix by its Frobenius norm: (B, R, H, f, e)."""
    return S / S.flatten(3).norm(dim=-1).clamp_min(1e-12)[..., None, None]


def kv_features(S: torch.Tensor, z: torch.Tensor, n: torch.Tensor, kind: str, settings: RepresentationSettings,
                head_dim: int) -> np.ndarray:
    """The recorder's kv read-outs rebuilt from running states: S (B, L, H, f, e), z (B, L, H, f), n (B, L).

    Same sketch, normalisation, layer order and reduction as :class:`RepresentationRecorder`, so a
    detector fitted on stored study features scores a live state (used by :mod:`kvstate.monitor`):
    :func:`kv_readout`, then the seeded projection (:class:`Reducer`) when wider than ``settings.max_dim``.
    """
    flat = kv_readout(S, z, n, kind, settings, head_dim).cpu().numpy()
    return settings.reducer(kind)(np.ascontiguousarray(flat))


def kv_readout(S: torch.Tensor, z: torch.Tensor, n: torch.Tensor, kind: str, settings: RepresentationSettings,
               head_dim: int) -> torch.Tensor:
    """The read-out of :func:`kv_features` before the whole-vector projection: (B, D) float32, on S's device.

    The projection is linear, so an affine detector of the projected vector is an affine function
    of this one (:mod:`kvstate.monitor.fold`).
    """
    kind = kind.replace("-pre", "")  # pre-RoPE keys change the state, not the read-out
    if decay_of(kind) is not None:  # a decayed state (S_gamma, n_gamma) is read out as S/n
        kind = "S/n"
    P = sketch(S.shape[-2], head_dim, settings.seed).to(S.device) if S.shape[-2] > head_dim else None
    Sv = P @ S if P is not None else S
    nn_ = n.clamp_min(1.0)[..., None, None, None]
    if kind == "S/n":
        x = Sv / nn_
    elif kind == "S/n-hn":
        x = headnorm(Sv / nn_)
    elif kind == "z/n":
        x = (z @ P.T if P is not None else z) / nn_[..., 0]
    elif kind == "S|z|":
        x = Sv / z.norm(dim=-1).clamp_min(1e-8)[..., None, None]
    elif kind == "S":
        x = Sv
    elif kind == COMPRESSED:  # the running state is already A S B^T (a x b per head)
        x = S / nn_
    else:
        raise ValueError(f"unknown kv read-out {kind!r}. Available: {', '.join(KV_KINDS)}")
    return x.float().flatten(1)
