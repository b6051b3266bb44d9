"""Query probe: read the state the way the model reads it, with a learned query per head.

A linear probe on a flattened state has O(L H d_phi d_v) weights; the model itself reads a head's
state with one query, phi(q) S / (phi(q) . z). This probe keeps that structure and has O(L H d)
parameters:

- ``kind="query"``: a learned virtual query and read-out vector per head,
  score = sum_{l,h} w_lh^T (phi(q_lh) S_lh) / (phi(q_lh) . z_lh) + b
  (with ``with_z=False`` the denominator is 1, an unnormalised read);
- ``kind="bilinear"``: rank-r bilinear forms, score = sum_{l,h} sum_r u_lhr^T S_lh v_lhr + b.

It is fitted with a (class-weighted) logistic loss and an L2 penalty by full-batch L-BFGS in torch
float64, from a seeded initialisation.

**Input.** The probe needs the unflattened state, but kvstate's pipelines pass flat vectors. So it
takes a flat ``X`` (n, L*H*f*e) and the declared ``state_shape=(L, H, f, e)``; with ``with_z=True``
each row is the flattened S followed by the flattened z (n, L*H*f*e + L*H*f), see :func:`pack_states`.
A 5-D array (n, L, H, f, e) is also accepted when ``with_z=False``. Stored study vectors wider than
``max_dim`` have been randomly projected and no longer have this shape, which is why the probe is
not in the flat-X registry (:data:`kvstate.detect.DETECTORS`): build it directly with the shape of
the states you give it (e.g. ``KVState.readout`` or a compressed state, ``KVState.compress``).
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import ClassVar

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .base import BaseDetector, check_binary_y

__all__ = ["QueryProbe", "pack_states", "probe_scores"]


def pack_states(S: ArrayLike, z: ArrayLike | None = None) -> NDArray[np.float32]:
    """Flat probe input from states S (n, L, H, f, e) and optionally z (n, L, H, f): (n, D) float32."""
    S = np.asarray(S, dtype=np.float32)
    if S.ndim != 5:
        raise ValueError(f"S must be (n, L, H, f, e); got shape {S.shape}")
    parts = [S.reshape(len(S), -1)]
    if z is not None:
        z = np.asarray(z, dtype=np.float32)
        if z.shape != S.shape[:4]:
            raise ValueError(f"z must be (n, L, H, f) = {S.shape[:4]}; got {z.shape}")
        parts.append(z.reshape(len(z), -1))
    return np.concatenate(parts, axis=1)


def probe_scores(S: torch.Tensor, z: torch.Tensor | None, params: dict[str, torch.Tensor], kind: str,
                 mask: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Scores of states S (n, L, H, f, e) (and z (n, L, H, f)) under probe parameters; differentiable.

    Parameters
    ----------
    params : dict
        ``kind="query"``: ``q`` (L, H, f) (phi(q) = softplus(q) when z is given, so phi(q) . z > 0
        for positive feature maps; q itself otherwise), ``w`` (L, H, e), ``b`` (); ``kind="bilinear"``:
        ``u`` (L, H, r, f), ``v`` (L, H, r, e), ``b`` ().
    mask : torch.Tensor or None, default=None
        (L, H) weights of each head's term (0 drops a head); None keeps all.
    eps : float, default=1e-6
        Guard of the denominator, sign kept (as :func:`kvstate.state.linear_attention`).

    Returns
    -------
    torch.Tensor
        (n,) scores, higher = more positive.
    """
    if kind == "bilinear":
        per_head = torch.einsum("lhrf,nlhfe,lhre->nlh", params["u"], S, params["v"])
    elif kind == "query":
        fq = torch.nn.functional.softplus(params["q"]) if z is not None else params["q"]
        num = torch.einsum("lhf,nlhfe,lhe->nlh", fq, S, params["w"])
        if z is not None:
            den = torch.einsum("lhf,nlhf->nlh", fq, z)
            den = torch.where(den.abs() < eps, torch.full_like(den, eps).copysign(den), den)
            num = num / den
        per_head = num
    else:
        raise ValueError(f"unknown probe kind {kind!r}; use 'query' or 'bilinear'")
    if mask is not None:
        per_head = per_head * mask
    return per_head.sum((1, 2)) + params["b"]


class QueryProbe(BaseDetector):
    """Supervised: a learned virtual query (or rank-r bilinear form) per head on unflattened states.

    Parameters
    ----------
    state_shape : tuple of int (L, H, f, e)
        Shape of one item's state S: layers, KV heads, feature and value dimensions. Required.
    kind : {"query", "bilinear"}, default="bilinear"
        Read-out per head (see the module docstring).
    rank : int, default=1
        Rank r of each head's bilinear form (``kind="bilinear"`` only).
    with_z : bool, default=False
        Rows carry z after S (:func:`pack_states`) and ``kind="query"`` divides by phi(q) . z.
    heads : list of (layer slot, head) pairs or None, default=None
        Restrict the probe to these heads (slots index ``state_shape``); None uses all.
    alpha : float, default=1e-3
        L2 penalty on all parameters but the bias.
    class_weight : "balanced" or None, default="balanced"
    max_iter : int, default=200
        L-BFGS iterations.
    random_state : int, default=0
        Seed of the initial parameters.
    contamination : float, default=0.1
        Sets ``threshold_`` only (as every detector).

    Fitted attributes
    -----------------
    params_ : dict of numpy arrays, the fitted parameters (see :func:`probe_scores`).
    mean_ : (D,) training mean subtracted before scoring (zeros for ``kind="query"``, whose ratio
        needs the raw S and z).
    scale_ : (D,) per-head scale each entry is divided by (the head's training RMS entry).
    classes_ : the two labels; ``predict_proba`` columns follow them.
    loss_ : final training loss.

    Notes
    -----
    Per-head (not per-entry) scaling keeps each head's bilinear structure: u^T (S / s) v is still
    a rank-1 form of S. ``decision_function`` is the logit, higher = more positive.
    """

    supervised: ClassVar[bool] = True
    name: ClassVar[str] = "query_probe"
    _parameter_constraints: ClassVar[dict] = {
        **BaseDetector._parameter_constraints,
        "state_shape": [tuple, list],
        "kind": [StrOptions({"query", "bilinear"})],
        "rank": [Interval(Integral, 1, None, closed="left")],
        "with_z": ["boolean"],
        "heads": [list, tuple, None],
        "alpha": [Interval(Real, 0.0, None, closed="left")],
        "class_weight": [None, StrOptions({"balanced"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "random_state": [Interval(Integral, 0, None, closed="left")],
    }

    def __init__(self, *, state_shape: tuple[int, int, int, int] = (), kind: str = "bilinear", rank: int = 1,
                 with_z: bool = False, heads: list[tuple[int, int]] | None = None, alpha: float = 1e-3,
                 class_weight: str | None = "balanced", max_iter: int = 200, random_state: int = 0,
                 contamination: float = 0.1) -> None:
        self.state_shape = state_shape
        self.kind = kind
        self.rank = rank
        self.with_z = with_z
        self.heads = heads
        self.alpha = alpha
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state
        self.contamination = contamination

    # ---------------------------------------------------------------- shapes
    def _shape(self) -> tuple[int, int, int, int]:
        if len(self.state_shape) != 4 or not all(isinstance(x, (int, np.integer)) and x > 0 for x in self.state_shape):
            raise ValueError(f"state_shape must be (L, H, f, e) of positive ints; got {self.state_shape!r}")
        return tuple(int(x) for x in self.state_shape)

    def _width(self) -> int:
        L, H, f, e = self._shape()
        return L * H * f * e + (L * H * f if self.with_z else 0)

    def _flat(self, X: ArrayLike) -> ArrayLike:
        X = np.asarray(X) if not hasattr(X, "ndim") else X
        if X.ndim > 2:
            if self.with_z:
                raise ValueError("with_z=True needs flat rows of S then z; build them with pack_states(S, z)")
            X = X.reshape(X.shape[0], -1)
        return X

    def _check_width(self, X: NDArray) -> None:
        if X.shape[1] != self._width():
            raise ValueError(f"X has {X.shape[1]} features but state_shape={tuple(self.state_shape)} "
                             f"(with_z={self.with_z}) needs {self._width()}; pass matching state_shape")

    def _unpack(self, Xn: NDArray) -> tuple[torch.Tensor, torch.Tensor | None]:
        L, H, f, e = self._shape()
        X = torch.from_numpy(np.ascontiguousarray(Xn, dtype=np.float64))
        nS = L * H * f * e
        S = X[:, :nS].reshape(-1, L, H, f, e)
        z = X[:, nS:].reshape(-1, L, H, f) if self.with_z else None
        return S, z

    def _mask(self) -> torch.Tensor | None:
        if self.heads is None:
            return None
        L, H, _, _ = self._shape()
        m = torch.zeros(L, H, dtype=torch.float64)
        for l, h in self.heads:
            if not (0 <= l < L and 0 <= h < H):
                raise ValueError(f"head ({l}, {h}) is outside state_shape (L={L}, H={H}); pick slots within it")
            m[l, h] = 1.0
        return m

    # ---------------------------------------------------------------- fit / score
    def fit(self, X: ArrayLike, y: ArrayLike | None = None) -> "QueryProbe":
        """Fit the probe on flat rows X (see the class docstring) and binary labels y. Returns self."""
        self._validate_params()
        X = validate_data(self, self._flat(X), dtype=np.float64, ensure_min_samples=2)
        self._check_width(X)
        y01 = check_binary_y(y, X.shape[0])
        self.classes_ = np.unique(np.asarray(y).ravel())
        L, H, f, e = self._shape()
        nS = L * H * f * e
        self.mean_ = X.mean(0) if self.kind == "bilinear" else np.zeros(X.shape[1])
        if self.kind == "bilinear" and self.with_z:
            self.mean_[nS:] = 0.0
        scale = np.ones(X.shape[1])
        Sc = (X - self.mean_)[:, :nS].reshape(-1, L, H, f * e)
        s_S = np.sqrt((Sc ** 2).mean((0, 3))).clip(1e-12)  # (L, H) RMS entry per head
        scale[:nS] = np.repeat(s_S.ravel(), f * e)
        if self.with_z:
            zc = X[:, nS:].reshape(-1, L, H, f)
            scale[nS:] = np.repeat(np.sqrt((zc ** 2).mean((0, 3))).clip(1e-12).ravel(), f)
        self.scale_ = scale
        S, z = self._unpack((X - self.mean_) / self.scale_)
        self.params_, self.loss_ = self._optimise(S, z, torch.from_numpy(y01.astype(np.float64)))
        self.decision_scores_ = self.decision_function(X)
        self._process_decision_scores()
        return self

    def _init_params(self) -> dict[str, torch.Tensor]:
        L, H, f, e = self._shape()
        g = torch.Generator().manual_seed(int(self.random_state))
        def rnd(*shape: int) -> torch.Tensor:
            return (torch.randn(*shape, generator=g, dtype=torch.float64) / np.sqrt(shape[-1])).requires_grad_()
        if self.kind == "bilinear":
            p = {"u": rnd(L, H, self.rank, f), "v": rnd(L, H, self.rank, e)}
        else:
            p = {"q": rnd(L, H, f), "w": rnd(L, H, e)}
        p["b"] = torch.zeros((), dtype=torch.float64, requires_grad=True)
        return p

    def _optimise(self, S: torch.Tensor, z: torch.Tensor | None, y: torch.Tensor) -> tuple[dict[str, NDArray], float]:
        params = self._init_params()
        mask = self._mask()
        if self.class_weight == "balanced":
            pos = float(y.mean())
            sw = torch.where(y > 0, 0.5 / pos, 0.5 / (1.0 - pos))
        else:
            sw = torch.ones_like(y)
        opt = torch.optim.LBFGS(list(params.values()), lr=1.0, max_iter=self.max_iter, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            s = probe_scores(S, z, params, self.kind, mask)
            loss = (sw * torch.nn.functional.binary_cross_entropy_with_logits(s, y, reduction="none")).mean()
            loss = loss + 0.5 * self.alpha * sum((p ** 2).sum() for k, p in params.items() if k != "b")
            loss.backward()
            return loss

        with torch.enable_grad():
            loss = opt.step(closure)
        out = {k: p.detach().clone() for k, p in params.items()}
        if mask is not None:  # dropped heads have no say: zero their parameters
            for k in out:
                if k != "b":
                    out[k] = out[k] * mask.reshape(*mask.shape, *([1] * (out[k].ndim - 2)))
        return {k: v.numpy() for k, v in out.items()}, float(loss.detach())

    def _transform(self, X: ArrayLike) -> NDArray[np.float64]:
        check_is_fitted(self)
        X = validate_data(self, self._flat(X), dtype=np.float64, reset=False)
        return (X - self.mean_) / self.scale_

    def _score(self, Xn: NDArray[np.float64]) -> NDArray[np.float64]:
        S, z = self._unpack(Xn)
        params = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in self.params_.items()}
        with torch.no_grad():
            return probe_scores(S, z, params, self.kind, self._mask()).numpy()

    def predict_proba(self, X: ArrayLike) -> NDArray[np.float64]:
        """(n, 2) probabilities of ``classes_[0]`` and ``classes_[1]`` (the positive class)."""
        p = 1.0 / (1.0 + np.exp(-self.decision_function(X)))
        return np.stack([1.0 - p, p], axis=1)
