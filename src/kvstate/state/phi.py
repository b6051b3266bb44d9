"""Feature maps phi for linear attention.

Linear attention replaces softmax(q k^T) by phi(q) phi(k)^T, so that the context collapses into
S = sum_i phi(k_i)^T v_i and z = sum_i phi(k_i). Each map here takes (..., d) to (..., d_phi):

- ``identity``: phi(x) = x (the plain key/value outer-product state);
- ``elu``: elu(x) + 1 (Katharopoulos et al. 2020), positive;
- ``relu``: max(x, 0);
- ``random``: positive orthogonal random features approximating exp(s q.k) (Performer FAVOR+);
- ``taylor``: [1, sqrt(s) x, s x (x) x / sqrt(2)], the 2nd-order Taylor expansion of exp(s q.k).

``s`` is the attention's own scaling (1/sqrt(d) unless a model says otherwise).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

PHI_NAMES = ("identity", "elu", "relu", "random", "taylor")


class FeatureMap:
    """A named map from keys/queries to features; deterministic given its parameters."""

    name: str = "base"

    def dim(self, d: int) -> int:
        """Feature dimension for inputs of size ``d``."""
        return d

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict:
        """JSON-serialisable description, enough to rebuild the map with :func:`get_phi`."""
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Identity(FeatureMap):
    name = "identity"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x


class EluPlusOne(FeatureMap):
    name = "elu"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.elu(x) + 1.0


class Relu(FeatureMap):
    name = "relu"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x)


class RandomFeatures(FeatureMap):
    """Positive orthogonal random features: E[phi(q).phi(k)] = exp(s q.k) (Choromanski et al. 2021).

    The projection is drawn from ``seed`` and the input size, so the same map is rebuilt anywhere.
    """

    name = "random"

    def __init__(self, n_features: int = 64, seed: int = 0, scale: float | None = None):
        self.n_features = n_features
        self.seed = seed
        self.scale = scale
        self._cache: dict[tuple[int, str], torch.Tensor] = {}

    def dim(self, d: int) -> int:
        return self.n_features

    def projection(self, d: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(n_features, d) block-orthogonal Gaussian matrix with chi-distributed row norms."""
        key = (d, str(device))
        if key not in self._cache:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + d)
            blocks = []
            for _ in range(math.ceil(self.n_features / d)):
                g = torch.randn(d, d, generator=gen, dtype=torch.float64)
                q, _ = torch.linalg.qr(g)
                blocks.append(q.T)
            w = torch.cat(blocks)[: self.n_features]
            norms = torch.randn(self.n_features, d, generator=gen, dtype=torch.float64).norm(dim=1)
            self._cache[key] = (w * norms[:, None]).float().to(device)
        return self._cache[key]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        s = self.scale if self.scale is not None else d**-0.5
        x = x.float() * math.sqrt(s)
        w = self.projection(d, x.device)
        proj = x @ w.T - 0.5 * (x * x).sum(-1, keepdim=True)
        # exp can overflow for large keys; the clamp bounds it without changing typical values
        return torch.exp(proj.clamp(max=80.0)) / math.sqrt(self.n_features)

    def config(self) -> dict:
        return {"name": self.name, "n_features": self.n_features, "seed": self.seed, "scale": self.scale}


class Taylor(FeatureMap):
    """phi(q).phi(k) = 1 + s q.k + (s q.k)^2 / 2, the 2nd-order Taylor series of exp(s q.k)."""

    name = "taylor"

    def __init__(self, scale: float | None = None):
        self.scale = scale

    def dim(self, d: int) -> int:
        return 1 + d + d * d

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        s = self.scale if self.scale is not None else d**-0.5
        x = x * math.sqrt(s)
        out = x.new_empty(*x.shape[:-1], self.dim(d))  # [1, x, x (x) x / sqrt 2], written in place (no concatenation)
        out[..., 0] = 1.0
        out[..., 1 : d + 1] = x
        second = out[..., d + 1 :].unflatten(-1, (d, d))
        torch.mul(x[..., :, None], x[..., None, :], out=second)
        second.div_(math.sqrt(2.0))
        return out

    def config(self) -> dict:
        return {"name": self.name, "scale": self.scale}


_REGISTRY: dict[str, Callable[..., FeatureMap]] = {
    "identity": Identity,
    "elu": EluPlusOne,
    "relu": Relu,
    "random": RandomFeatures,
    "taylor": Taylor,
}


def register_phi(name: str, factory: Callable[..., FeatureMap]) -> None:
    """Make a feature map available by name (e.g. a learned one)."""
    if name in _REGISTRY:
        raise ValueError(f"feature map {name!r} is already registered")
    _REGISTRY[name] = factory


def get_phi(phi: str | dict | FeatureMap, **params) -> FeatureMap:
    """A feature map from a name (``"elu"``), a config dict or an instance."""
    if isinstance(phi, FeatureMap):
        return phi
    if isinstance(phi, dict):
        params = {**{k: v for k, v in phi.items() if k != "name"}, **params}
        phi = phi["name"]
    elif ":" in phi:  # "learned:path/to/phi.safetensors" or "random:256", so string-only configs can name them
        phi, arg = phi.split(":", 1)
        params = {**({"path": arg} if phi == "learned" else {"n_features": int(arg)} if phi == "random" else {}), **params}
    if phi not in _REGISTRY:
        raise ValueError(f"unknown feature map {phi!r}. Available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[phi](**params)


def for_layer(phi: FeatureMap, layer: int) -> FeatureMap:
    """The map to use at ``layer``: per-layer maps (a learned phi) expose ``for_layer``; others are global.

    A per-layer map already pinned to one layer (``phi.layer`` set) is used as given, e.g. to test
    how one layer's learned map transfers to other layers.
    """
    pick = getattr(phi, "for_layer", None)
    if not callable(pick) or getattr(phi, "layer", None) is not None:
        return phi
    return pick(layer)
