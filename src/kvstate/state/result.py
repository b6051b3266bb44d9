"""KVState: the per-layer, per-KV-head states of a batch of prompts, saved without pickle."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .._io import atomic_write
from .core import compress_state, compression_matrices, linear_attention, readout
from .phi import for_layer, get_phi

FORMAT = "kvstate.KVState/1"


@dataclass
class KVState:
    """States for N items, R read points, L layers, H KV heads.

    Attributes:
        S: (N, R, L, H, d_phi, d_v) float32, sum of phi(k)^T v over the selected tokens.
        z: (N, R, L, H, d_phi), sum of phi(k).
        n: (N, R, L) number of tokens summed (layers may differ when restricted to a window).
        layers: model layer index of each L slot. reads: name of each R slot, e.g. "prompt_end".
        phi: the feature map's config (see :func:`kvstate.phi.get_phi`).
        meta: model, dtype, rope, token selection, per-item token counts, ...
    """

    S: torch.Tensor
    z: torch.Tensor
    n: torch.Tensor
    layers: list[int]
    reads: list[str]
    phi: dict
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.S.shape[0]

    def __repr__(self) -> str:
        return (f"KVState(items={len(self)}, reads={self.reads}, layers={len(self.layers)}, heads={self.S.shape[3]}, "
                f"d_phi={self.S.shape[4]}, d_v={self.S.shape[5]}, phi={self.phi.get('name')})")

    def _read_index(self, read: str | int | None) -> int:
        if read is None:
            return len(self.reads) - 1
        if isinstance(read, int):
            return read
        if read not in self.reads:
            raise ValueError(f"unknown read point {read!r}. Available: {', '.join(self.reads)}")
        return self.reads.index(read)

    def _layer_index(self, layers) -> list[int]:
        if layers is None:
            return list(range(len(self.layers)))
        missing = [l for l in layers if l not in self.layers]
        if missing:
            raise ValueError(f"layers {missing} were not captured. Available: {self.layers}")
        return [self.layers.index(l) for l in layers]

    def readout(self, kind: str = "S/n", read: str | int | None = None, layers=None, normalize: str | None = None) -> torch.Tensor:
        """(N, L', H, ...) view of the state; ``normalize="head"`` divides each head by its norm.

        Per-head scale differs by orders of magnitude across heads, which lets a few heads dominate
        any distance; per-head normalisation makes each head count equally.
        """
        r, li = self._read_index(read), self._layer_index(layers)
        out = readout(self.S[:, r][:, li], self.z[:, r][:, li], self.n[:, r][:, li], kind)
        if normalize == "head":
            flat = out.flatten(3) if out.ndim > 3 else out
            norms = flat.norm(dim=-1).clamp_min(1e-12)
            out = out / norms.reshape(*norms.shape, *([1] * (out.ndim - norms.ndim)))
        elif normalize is not None:
            raise ValueError(f"unknown normalize {normalize!r}. Available: head, None")
        return out

    def features(self, kind: str = "S/n", read: str | int | None = None, layers=None, normalize: str | None = None) -> np.ndarray:
        """(N, D) float32 matrix for detectors: the read-out flattened over layers and heads."""
        return self.readout(kind, read, layers, normalize).flatten(1).numpy().astype(np.float32)

    def attend(self, q: torch.Tensor, read: str | int | None = None, layer: int | None = None) -> torch.Tensor:
        """Linear-attention output of queries q (N, H_q, t, d) against one layer's state."""
        if "compress" in self.meta:
            raise ValueError("attend needs the uncompressed state; call it before KVState.compress")
        r = self._read_index(read)
        li = self._layer_index([layer if layer is not None else self.layers[-1]])[0]
        S, z = self.S[:, r, li], self.z[:, r, li]
        rep = q.shape[1] // S.shape[1]
        phi = for_layer(get_phi(self.phi), self.layers[li])  # learned maps are per layer
        return linear_attention(q, S.repeat_interleave(rep, 1), z.repeat_interleave(rep, 1), phi)

    def delta(self, start: str = "prompt_end", stop: str = "end") -> "KVState":
        """The state of the tokens between two read points: S(stop) - S(start), one read ``"delta"``.

        With the default reads this is the state of the reply tokens alone (what the reply added);
        ``readout("S/n", "delta")`` is their mean outer product. With a decay (``meta["gamma"]``)
        the difference is no longer the reply's own decayed state (the prompt's part decays too), so
        it is refused.
        """
        if self.meta.get("gamma") not in (None, 1.0):
            raise ValueError("delta of decayed states is not the reply's state; extract without gamma for deltas")
        a, b = self._read_index(start), self._read_index(stop)
        meta = {**self.meta, "delta": [self.reads[a], self.reads[b]]}
        return KVState((self.S[:, b] - self.S[:, a])[:, None], (self.z[:, b] - self.z[:, a])[:, None],
                       (self.n[:, b] - self.n[:, a])[:, None], list(self.layers), ["delta"], dict(self.phi), meta)

    def compress(self, a: int, b: int, seed: int = 0) -> "KVState":
        """A S B^T (N, R, L, H, a, b) and A z with seeded per-head A (a x d_phi), B (b x d_v).

        Identical to compressing in the forward pass (the map is linear), see
        :func:`kvstate.state.compression_matrices`; ``meta["compress"]`` records (a, b, seed), and
        :meth:`attend` is refused on the result (queries live in the uncompressed space).
        """
        H, f, e = self.S.shape[3:]
        A, B = compression_matrices(H, f, e, a, b, seed)
        S, z = compress_state(self.S, self.z, A, B)
        return KVState(S, z, self.n.clone(), list(self.layers), list(self.reads), dict(self.phi),
                       {**self.meta, "compress": [a, b, seed]})

    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file; metadata as JSON in its header. Written atomically."""
        header = {"format": FORMAT, "layers": self.layers, "reads": self.reads, "phi": self.phi, "meta": self.meta}
        tensors = {"S": self.S.contiguous(), "z": self.z.contiguous(), "n": self.n.contiguous()}
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"kvstate": json.dumps(header)}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "KVState":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                raw = (f.metadata() or {}).get("kvstate")
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type and OSError
            raise ValueError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]}); "
                             "it may be truncated, re-create it with `kvstate extract`") from None
        if raw is None:
            raise ValueError(f"{path} is not a kvstate file (no kvstate header); save states with KVState.save")
        header = json.loads(raw)
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} has format {header.get('format')!r}, this kvstate reads {FORMAT!r}")
        t = load_file(str(path))
        return cls(t["S"], t["z"], t["n"], header["layers"], header["reads"], header["phi"], header["meta"])

    @staticmethod
    def concat(states: list["KVState"]) -> "KVState":
        """Join states of disjoint item batches taken with the same settings."""
        first = states[0]
        for s in states[1:]:
            if (s.layers, s.reads, s.phi) != (first.layers, first.reads, first.phi):
                raise ValueError("cannot concatenate states taken with different layers, reads or phi")
        meta = dict(first.meta)
        for key in ("n_tokens", "prompt_tokens", "ids"):
            if all(key in s.meta for s in states):
                meta[key] = [x for s in states for x in s.meta[key]]
        return KVState(torch.cat([s.S for s in states]), torch.cat([s.z for s in states]),
                       torch.cat([s.n for s in states]), first.layers, first.reads, first.phi, meta)
