"""Keys and values -> the linear-attention state, in parallel and recurrent form.

For one head, with token weights w_i (0 drops a token: padding, a skipped span, outside a window):

    S = sum_i w_i phi(k_i)^T v_i      (d_phi x d_v)
    z = sum_i w_i phi(k_i)            (d_phi)
    n = sum_i w_i

The linear-attention output for a query q is phi(q) S / (phi(q) . z). Neither form ever builds a
per-token state: memory per head is O(d_phi * d_v) whatever the sequence length.

Two read-outs closer to how the model reads its cache (issue #16):

- **decay** ``gamma``: S_gamma = sum_i gamma^(m_i) w_i phi(k_i)^T v_i, z_gamma and n_gamma likewise, with
  m_i the number of *selected* tokens (weight > 0) after token i up to the read point. Distance is
  counted in selected-token positions, not padded positions, so padding (weight 0) never decays a
  state and a batched state equals the unbatched one under left or right padding; the recurrent form
  is S <- gamma S + w phi(k)^T v for each selected token. gamma = 1 (or None) is the plain state.
- **structured compression** ``project=(A, B)``: A S B^T = sum_i w_i (A phi(k_i))(B v_i)^T with seeded,
  data-independent A (H, a, d_phi) and B (H, b, d_v) per head (:func:`compression_matrices`); the
  recurrent form costs O((a + b) d) per token and holds only (a x b) per head.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .phi import FeatureMap, get_phi

READOUTS = ("S", "z", "S/n", "S/|z|")


def _check_gamma(gamma: float | None) -> float | None:
    if gamma is None:
        return None
    if not 0.0 < float(gamma) <= 1.0:
        raise ValueError(f"gamma must be in (0, 1] (1 = no decay); got {gamma}")
    return float(gamma)


def decay_weights(weights: torch.Tensor, gammas: Sequence[float]) -> torch.Tensor:
    """Token weights of decayed states: w_i gamma^(m_i), m_i = selected tokens after i.

    Parameters
    ----------
    weights : torch.Tensor
        (..., T) token weights of one read point each (0 = not selected: padding, another span).
    gammas : sequence of float
        Decay factors in (0, 1]; 1 keeps the weights unchanged.

    Returns
    -------
    torch.Tensor
        (..., G, T) float32, one row of weights per gamma. Only selected tokens count towards the
        distance, so padding and skipped tokens change nothing.
    """
    g = torch.tensor([_check_gamma(x) for x in gammas], dtype=torch.float64, device=weights.device)
    sel = (weights > 0).to(torch.float64)
    after = sel.flip(-1).cumsum(-1).flip(-1) - sel  # selected tokens strictly after i
    # gamma^m as exp(m log gamma): exact 1 for gamma = 1, no overflow for long sequences
    dec = torch.exp(after[..., None, :] * torch.log(g)[:, None])
    return (weights.to(torch.float64)[..., None, :] * dec).float()


def compression_matrices(heads: int, d_phi: int, d_v: int, a: int, b: int, seed: int = 0,
                         device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded Gaussian A (H, a, d_phi) and B (H, b, d_v), one pair per head, for A S B^T.

    Entries are N(0, 1/a) and N(0, 1/b), so E ||A S B^T||_F^2 = ||S||_F^2 (a Kronecker-structured
    Johnson-Lindenstrauss map). They depend only on (heads, d_phi, d_v, a, b, seed), never on data.

    Parameters
    ----------
    heads, d_phi, d_v : int
        KV heads, feature and value dimensions of the states to compress.
    a, b : int
        Rows of A and B: the compressed state is (a x b) per head.
    seed : int, default=0
        Seed of the matrices.
    """
    if a < 1 or b < 1:
        raise ValueError(f"compressed sizes must be positive; got a={a}, b={b}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + d_phi * 7919 + d_v)
    A = torch.randn(heads, a, d_phi, generator=gen, dtype=torch.float64) / math.sqrt(a)
    B = torch.randn(heads, b, d_v, generator=gen, dtype=torch.float64) / math.sqrt(b)
    return A.float().to(device), B.float().to(device)


def compress_state(S: torch.Tensor, z: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A S B^T and A z for states S (..., H, d_phi, d_v), z (..., H, d_phi); A (H, a, d_phi), B (H, b, d_v)."""
    return A @ S @ B.transpose(-1, -2), (A @ z[..., None])[..., 0]


def parallel_state(
    k: torch.Tensor,
    v: torch.Tensor,
    phi: FeatureMap | str = "identity",
    weights: torch.Tensor | None = None,
    gamma: float | None = None,
    project: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """State of a whole (batched, masked) sequence in one contraction.

    Parameters
    ----------
    k, v : torch.Tensor
        Keys (B, H, T, d) and values (B, H, T, d_v).
    phi : FeatureMap or str, default="identity"
    weights : torch.Tensor or None, default=None
        (B, T) for one read-out per item or (B, R, T) for R read-outs (e.g. end of prompt and end of
        response) computed in the same pass; ``None`` weighs every token 1.
    gamma : float or None, default=None
        Decay in (0, 1]: token i enters with gamma^(m_i), m_i the selected tokens after it up to the
        read point (see :func:`decay_weights`). ``None`` or 1: the plain state.
    project : (A, B) or None, default=None
        Per-head compression matrices A (H, a, d_phi), B (H, b, d_v) (:func:`compression_matrices`):
        returns A S B^T (..., H, a, b) and A z (..., H, a), computed from the projected features
        without ever building the full state.

    Returns
    -------
    S : (B, [R,] H, d_phi, d_v) float32 (or (B, [R,] H, a, b) with ``project``)
    z : (B, [R,] H, d_phi) (or (B, [R,] H, a))
    n : (B, [R]), the (decayed) sum of the weights
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
    gamma = _check_gamma(gamma)
    if gamma is not None and gamma != 1.0:
        weights = decay_weights(weights, [gamma])[..., 0, :]
    fk, vf = phi(k.float()), v.float()
    if project is not None:
        fk, vf = _project(fk, vf, project)
    S, z, n = _contract(fk, vf, weights.to(fk.dtype))
    if single:
        return S[:, 0], z[:, 0], n[:, 0]
    return S, z, n


def _project(fk: torch.Tensor, v: torch.Tensor, project: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(A phi(k), B v) per head: fk (B, H, T, f), v (B, H, T, e) -> (B, H, T, a), (B, H, T, b)."""
    A, Bm = (m.to(fk.device, fk.dtype) for m in project)
    H = fk.shape[1]
    if A.ndim != 3 or Bm.ndim != 3 or A.shape[0] != H or Bm.shape[0] != H or A.shape[2] != fk.shape[-1] \
            or Bm.shape[2] != v.shape[-1]:
        raise ValueError(f"project must be A (H={H}, a, d_phi={fk.shape[-1]}) and B (H, b, d_v={v.shape[-1]}); "
                         f"got {tuple(A.shape)} and {tuple(Bm.shape)} (build them with compression_matrices)")
    return torch.einsum("haf,bhtf->bhta", A, fk), torch.einsum("hce,bhte->bhtc", Bm, v)


def _contract(fk: torch.Tensor, v: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """S (B, R, H, f, e), z, n from features fk (B, H, T, f), values v (B, H, T, e), weights (B, R, T)."""
    # one contraction gives S and z: a column of ones appended to v sums phi(k) into the last column.
    # The weights go on the (narrow) values, and the R read-outs side by side, so that it is one batched
    # matmul phi(k)^T [w_1 v1, ..., w_R v1] per head with no (B, R, H, T, f) intermediate (Taylor's f is 4161)
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    B, H, T, E = v1.shape
    R, f = w.shape[1], fk.shape[-1]
    wv = (w[:, :, None, :, None] * v1[:, None]).permute(0, 2, 3, 1, 4).reshape(B, H, T, R * E)
    Sz = (fk.transpose(-1, -2) @ wv).reshape(B, H, f, R, E).permute(0, 3, 1, 2, 4)  # (B, R, H, f, E)
    return Sz[..., :-1], Sz[..., -1], w.sum(-1)


class RecurrentState:
    """The same state, updated one token (or one chunk) at a time: S <- gamma^m S + sum phi(k)^T v.

    This is the form the runtime monitor uses during generation: O(1) work per new token.

    Parameters
    ----------
    phi : FeatureMap or str, default="identity"
    gamma : float or None, default=None
        Decay in (0, 1] per selected token (weight > 0); a chunk of m selected tokens decays the old
        state by gamma^m, so feeding tokens one at a time or in chunks gives the same state as
        :func:`parallel_state` with the same ``gamma``. ``None``: no decay.
    project : (A, B) or None, default=None
        Per-head compression (:func:`compression_matrices`): the state kept is A S B^T (a x b per
        head), updated from (A phi(k), B v) at O((a + b) d) per token.
    """

    def __init__(self, phi: FeatureMap | str = "identity", gamma: float | None = None,
                 project: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.phi = get_phi(phi)
        self.gamma = _check_gamma(gamma)
        self.project = project
        self.S: torch.Tensor | None = None
        self.z: torch.Tensor | None = None
        self.n: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, weights: torch.Tensor | None = None) -> "RecurrentState":
        """Add new tokens: k (B, H, t, d), v (B, H, t, d_v), weights (B, t) or None (all 1)."""
        if self._one_token(k, v, weights):  # decoding: one outer product per head, not the general contraction
            fk = self.phi(k.float())[:, :, 0]  # (B, H, f)
            w = torch.ones(k.shape[0], device=fk.device) if weights is None else weights[:, 0].to(fk.dtype)
            wfk = fk * w[:, None, None]
            self.S, self.z, self.n = self.S + wfk[..., :, None] * v[:, :, 0].float()[..., None, :], self.z + wfk, self.n + w
            return self
        S, z, n = parallel_state(k, v, self.phi, weights, self.gamma, self.project)
        if self.S is None:
            self.S, self.z, self.n = S, z, n
        elif self.gamma is None or self.gamma == 1.0:
            self.S, self.z, self.n = self.S + S, self.z + z, self.n + n
        else:
            m = torch.full((k.shape[0],), float(k.shape[2]), device=S.device) if weights is None \
                else (weights > 0).sum(-1).to(S.device, torch.float32)
            f = self.gamma ** m  # (B,)
            self.S = f[:, None, None, None] * self.S + S
            self.z = f[:, None, None] * self.z + z
            self.n = f * self.n + n
        return self

    def _one_token(self, k: torch.Tensor, v: torch.Tensor, weights: torch.Tensor | None) -> bool:
        """One new token of an existing plain state, with shapes the general path would accept."""
        return (self.S is not None and self.project is None and (self.gamma is None or self.gamma == 1.0)
                and k.ndim == 4 and v.ndim == 4 and k.shape[2] == 1 and k.shape[:3] == v.shape[:3]
                and (weights is None or tuple(weights.shape) == (k.shape[0], 1)))


def recurrent_state(
    k: torch.Tensor, v: torch.Tensor, phi: FeatureMap | str = "identity", weights: torch.Tensor | None = None,
    gamma: float | None = None, project: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference: feed tokens one at a time to :class:`RecurrentState` (weights (B, T) or None)."""
    state = RecurrentState(phi, gamma, project)
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
