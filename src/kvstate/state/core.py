"""Keys and values -> the linear-attention state, in parallel and recurrent form.

For one head, with token weights w_i (0 drops a token: padding, a skipped span, outside a window):

    S = sum_i w_i phi(k_i)^T v_i      (d_phi x d_v)
    z = sum_i w_i phi(k_i)            (d_phi)
    n = sum_i w_i

The linear-attention output for a query q is phi(q) S / (phi(q) . z). Neither form ever builds a
per-token state: memory per head is O(d_phi * d_v) whatever the sequence length.
"""

from __future__ import annotations

import torch

from .phi import FeatureMap, get_phi

READOUTS = ("S", "z", "S/n", "S/|z|")


def parallel_state(
    k: torch.Tensor,
    v: torch.Tensor,
    phi: FeatureMap | str = "identity",
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """State of a whole (batched, masked) sequence in one contraction.

    Args:
        k: keys (B, H, T, d); v: values (B, H, T, d_v).
        weights: (B, T) for one read-out per item or (B, R, T) for R read-outs (e.g. end of prompt
            and end of response) computed in the same pass; ``None`` weighs every token 1.

    Returns:
        S (B, [R,] H, d_phi, d_v), z (B, [R,] H, d_phi), n (B, [R]) in float32.
    """
    phi = get_phi(phi)
    if k.ndim != 4 or v.ndim != 4 or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k and v must be (B, H, T, d) with matching B, H, T; got {tuple(k.shape)} and {tuple(v.shape)}")
    B, _, T, _ = k.shape
    single = weights is None or weights.ndim == 2
    if weights is None:
        weights = torch.ones(B, T, device=k.device)
    if single:
        weights = weights[:, None, :]
    if weights.shape[0] != B or weights.shape[-1] != T:
        raise ValueError(f"weights must be (B, T) or (B, R, T) with B={B}, T={T}; got {tuple(weights.shape)}")
    fk = phi(k.float())
    w = weights.to(fk.dtype)
    # one contraction gives S and z: a column of ones appended to v sums phi(k) into the last column
    v1 = torch.cat([v.float(), torch.ones_like(v[..., :1], dtype=torch.float32)], dim=-1)
    Sz = torch.einsum("brt,bhtf,bhte->brhfe", w, fk, v1)
    S, z = Sz[..., :-1], Sz[..., -1]
    n = w.sum(-1)
    if single:
        return S[:, 0], z[:, 0], n[:, 0]
    return S, z, n


class RecurrentState:
    """The same state, updated one token (or one chunk) at a time: S += phi(k)^T v, z += phi(k).

    This is the form the runtime monitor uses during generation: O(1) work per new token.
    """

    def __init__(self, phi: FeatureMap | str = "identity"):
        self.phi = get_phi(phi)
        self.S: torch.Tensor | None = None
        self.z: torch.Tensor | None = None
        self.n: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, weights: torch.Tensor | None = None) -> "RecurrentState":
        """Add new tokens: k (B, H, t, d), v (B, H, t, d_v), weights (B, t) or None."""
        S, z, n = parallel_state(k, v, self.phi, weights)
        if self.S is None:
            self.S, self.z, self.n = S, z, n
        else:
            self.S, self.z, self.n = self.S + S, self.z + z, self.n + n
        return self


def recurrent_state(
    k: torch.Tensor, v: torch.Tensor, phi: FeatureMap | str = "identity", weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference: feed tokens one at a time to :class:`RecurrentState` (weights (B, T) or None)."""
    state = RecurrentState(phi)
    for t in range(k.shape[2]):
        w = None if weights is None else weights[:, t : t + 1]
        state.update(k[:, :, t : t + 1], v[:, :, t : t + 1], w)
    return state.S, state.z, state.n


def readout(S: torch.Tensor, z: torch.Tensor, n: torch.Tensor, kind: str = "S/n", eps: float = 1e-8) -> torch.Tensor:
    """A normalised view of the state: ``S``, ``z``, ``S/n`` (mean outer product) or ``S/|z|``.

    ``n`` broadcasts over the trailing (H, d_phi, d_v) dimensions of ``S``.
    """
    if kind == "S":
        return S
    if kind == "z":
        return z
    if kind == "S/n":
        return S / n.clamp_min(eps).reshape(*n.shape, *([1] * (S.ndim - n.ndim)))
    if kind == "S/|z|":
        return S / z.norm(dim=-1).clamp_min(eps)[..., None, None]
    raise ValueError(f"unknown readout {kind!r}. Available: {', '.join(READOUTS)}")


def linear_attention(
    q: torch.Tensor, S: torch.Tensor, z: torch.Tensor, phi: FeatureMap | str = "identity", eps: float = 1e-6
) -> torch.Tensor:
    """phi(q) S / (phi(q) . z) for queries q (..., H, t, d) against states S (..., H, d_phi, d_v).

    With phi = identity the denominator can be near zero or negative (keys are not positive
    features); it is guarded by ``eps`` with its sign kept.
    """
    phi = get_phi(phi)
    fq = phi(q.float())
    num = fq @ S
    den = (fq @ z.unsqueeze(-1)).squeeze(-1)
    den = torch.where(den.abs() < eps, torch.full_like(den, eps).copysign(den), den)
    return num / den.unsqueeze(-1)


def causal_linear_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, phi: FeatureMap | str = "identity", eps: float = 1e-6
) -> torch.Tensor:
    """Output at every position t with the state of tokens <= t (recurrent, O(d^2) memory).

    q, k: (B, H, T, d), v: (B, H, T, d_v); q may have a multiple of k's heads (GQA).
    """
    phi = get_phi(phi)
    rep = q.shape[1] // k.shape[1]
    state = RecurrentState(phi)
    outs = []
    for t in range(k.shape[2]):
        state.update(k[:, :, t : t + 1], v[:, :, t : t + 1])
        S = state.S.repeat_interleave(rep, dim=1)
        z = state.z.repeat_interleave(rep, dim=1)
        outs.append(linear_attention(q[:, :, t : t + 1], S, z, phi, eps))
    return torch.cat(outs, dim=2)
