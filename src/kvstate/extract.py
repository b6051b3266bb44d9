"""Prompts -> KVState: batch, pad, run the model once, reduce every selected layer's K, V.

All representations of one prompt come from one forward pass: recorders (see :class:`Recorder`)
listen to the same attention calls and see the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from .capture import AttentionCall, KVCapture, UnsupportedModelError, check_supported
from .layers import select_layers
from .models import LoadedModel
from .phi import FeatureMap, get_phi
from .result import KVState
from .state import parallel_state
from .tokens import Encoded, as_prompt, encode


@dataclass
class Batch:
    """A padded batch as the recorders see it."""

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    weights: torch.Tensor  # (B, R, T) token weights of each read point
    ends: torch.Tensor  # (B, R) padded index of each read point's last token
    encoded: list[Encoded]
    offsets: list[int]  # padding before each item's first token
    reads: list[str]

    def weights_for(self, span: str = "all", skip_first: int = 0) -> torch.Tensor:
        """(B, R, T) weights of another token selection on the same batch."""
        w = torch.zeros_like(self.weights)
        for b, e in enumerate(self.encoded):
            sel = torch.tensor(e.select(span, skip_first), dtype=w.dtype)
            off = self.offsets[b]
            for r in range(len(self.reads)):
                end = int(self.ends[b, r]) - off
                w[b, r, off : off + end + 1] = sel[: end + 1]
        return w


class Recorder:
    """Listens to one forward pass per batch; subclasses reduce what they need."""

    def begin(self, batch: Batch) -> None:
        self.batch = batch

    def __call__(self, call: AttentionCall) -> None:  # pragma: no cover - interface
        pass

    def end(self, outputs: Any) -> None:
        pass


def key_name(phi: FeatureMap) -> str:
    """A short unique name for a feature map and its parameters, e.g. ``random64``."""
    cfg = phi.config()
    if cfg["name"] == "random":
        return f"random{cfg['n_features']}" + (f"s{cfg['seed']}" if cfg["seed"] else "")
    if cfg["name"] == "learned":
        return "learned"
    return cfg["name"]


class StateRecorder(Recorder):
    """Reduce each selected layer's new K, V to (S, z, n) per read point, for several phi at once."""

    def __init__(self, layers: Sequence[int], phis: Sequence[FeatureMap], rope: str = "post", window: str = "full"):
        self.layers, self.phis, self.rope, self.window = list(layers), list(phis), rope, window
        self.out: dict[str, list] = {key_name(p): [] for p in self.phis}

    def begin(self, batch: Batch) -> None:
        super().begin(batch)
        self._cur = {key_name(p): {} for p in self.phis}

    def __call__(self, call: AttentionCall) -> None:
        if call.layer not in self.layers:
            return
        k, v = call.new_keys(self.rope), call.new_values()
        w = self.batch.weights.to(k.device)
        if self.window == "layer" and call.sliding_window:
            pos = torch.arange(w.shape[-1], device=w.device)
            w = w * (pos[None, None, :] > self.batch.ends.to(w.device)[..., None] - call.sliding_window)
        for phi in self.phis:
            phi_l = phi.for_layer(call.layer) if hasattr(phi, "for_layer") else phi  # learned maps are per layer
            S, z, n = parallel_state(k, v, phi_l, w)
            self._cur[key_name(phi)][call.layer] = (S.cpu(), z.cpu(), n.cpu())

    def end(self, outputs: Any) -> None:
        for key, per_layer in self._cur.items():
            missing = [l for l in self.layers if l not in per_layer]
            if missing:
                raise UnsupportedModelError(f"layers {missing} never called the attention interface; cannot capture them")
            S = torch.stack([per_layer[l][0] for l in self.layers], dim=2)
            z = torch.stack([per_layer[l][1] for l in self.layers], dim=2)
            n = torch.stack([per_layer[l][2] for l in self.layers], dim=2)
            self.out[key].append((S, z, n))


def check_layers(lm: LoadedModel, layers) -> list[int]:
    """Validate a layer selection: indices, a comma list or a scheme name (see :mod:`kvstate.layers`)."""
    if isinstance(layers, int):
        layers = [layers]
    try:
        return select_layers(layers, lm.num_layers)
    except ValueError as e:
        raise ValueError(f"{e} ({lm.name})") from None


def context_length(model: torch.nn.Module) -> int | None:
    cfg = model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def has_rope(model: torch.nn.Module) -> bool:
    return any("rotary" in type(m).__name__.lower() for m in model.modules())


def make_batch(encoded: list[Encoded], reads: Sequence[str], span: str, skip_first: int, pad_id: int,
               padding_side: str) -> Batch:
    """Pad token lists and build the per-read token weights."""
    T = max(len(e) for e in encoded)
    B, R = len(encoded), len(reads)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    ends = torch.zeros(B, R, dtype=torch.long)
    offsets = []
    for b, e in enumerate(encoded):
        n = len(e)
        off = T - n if padding_side == "left" else 0
        offsets.append(off)
        ids[b, off : off + n] = torch.tensor(e.ids)
        mask[b, off : off + n] = 1
        for r, read in enumerate(reads):
            ends[b, r] = off + (e.prompt_len - 1 if read == "prompt_end" else n - 1)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    batch = Batch(ids, mask, pos, torch.zeros(B, R, T), ends, encoded, offsets, list(reads))
    batch.weights = batch.weights_for(span, skip_first)
    return batch


def run(lm: LoadedModel, encoded: list[Encoded], recorders: Sequence[Recorder], *, reads: Sequence[str],
        span: str = "all", skip_first: int = 0, batch_size: int = 8, padding_side: str | None = None,
        progress: bool | None = None, forward_kwargs: dict | None = None) -> None:
    """One forward pass per batch with every recorder listening (items sorted by length to cut padding).

    Recorders receive batches in sorted order; :func:`extract` undoes the sort.
    """
    model, tok = lm.model, lm.tokenizer
    side = padding_side or getattr(tok, "padding_side", "right") or "right"
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    starts = range(0, len(order), batch_size)
    show = progress if progress is not None else len(starts) > 4
    device = input_device(model)

    def listen(call: AttentionCall) -> None:
        for rec in recorders:
            rec(call)

    with KVCapture(model, listen), torch.inference_mode():
        for s in tqdm(starts, desc=f"capture {lm.name}", unit="batch", disable=not show):
            batch = make_batch([encoded[i] for i in order[s : s + batch_size]], reads, span, skip_first, pad_id, side)
            for rec in recorders:
                rec.begin(batch)
            out = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                        position_ids=batch.position_ids.to(device), use_cache=False, **(forward_kwargs or {}))
            for rec in recorders:
                rec.end(out)
    return order


def input_device(model: torch.nn.Module) -> torch.device:
    """Where inputs go: the input embedding's execution device (accelerate may offload its weight)."""
    emb = model.get_input_embeddings()
    dev = getattr(getattr(emb, "_hf_hook", None), "execution_device", None)
    return torch.device(dev) if dev is not None else emb.weight.device


def encode_all(lm: LoadedModel, prompts: Sequence[Any], chat: bool | None = None) -> list[Encoded]:
    """Encode and validate prompts (empty, too long) before any model work."""
    if isinstance(prompts, (str, dict)) or not isinstance(prompts, Sequence):
        prompts = [prompts]
    if len(prompts) == 0:
        raise ValueError("no prompts given; pass at least one prompt")
    limit = context_length(lm.model)
    encoded = []
    for i, p in enumerate(prompts):
        e = encode(lm.tokenizer, as_prompt(p), chat)
        if len(e) == 0:
            raise ValueError(f"prompt {i} has no tokens; give it some text")
        if limit and len(e) > limit:
            raise ValueError(f"prompt {i} has {len(e)} tokens, more than {lm.name}'s context of {limit}; shorten it")
        encoded.append(e)
    return encoded


def extract(
    lm: LoadedModel,
    prompts: Sequence[Any] | Any,
    *,
    layers: Sequence[int] | int | str | None = None,
    phi: str | FeatureMap | Sequence[str | FeatureMap] = "identity",
    rope: str = "post",
    window: str = "full",
    span: str = "all",
    skip_first: int = 0,
    reads: Sequence[str] | None = None,
    chat: bool | None = None,
    batch_size: int = 8,
    padding_side: str | None = None,
    progress: bool | None = None,
) -> KVState | dict[str, KVState]:
    """Linear-attention states of ``prompts`` for the selected layers, per KV head.

    Args:
        prompts: strings, chat message lists, dicts with ``messages``/``response`` or suite items.
            A ``response`` is teacher-forced after the generation prompt.
        layers: layer indices (default all). phi: one feature map or several (then a dict is
            returned, keyed ``identity``, ``elu``, ``random64``, ...), all from the same pass.
        rope: ``"post"`` keys as attention uses them, or ``"pre"`` with the rotary embedding undone.
        window: ``"full"`` sums every token; ``"layer"`` only the tokens a sliding-window layer
            attends to at the read point.
        span, skip_first: which tokens enter the state (see :mod:`kvstate.tokens`); e.g.
            ``span="content", skip_first=1`` drops template tokens and the attention sink.
        reads: read points, ``"prompt_end"`` and/or ``"end"``; default ``["end"]``, or both when a
            prompt has a response.
    """
    check_supported(lm.model)
    if rope not in ("post", "pre"):
        raise ValueError(f"rope must be 'post' or 'pre', got {rope!r}")
    if rope == "pre" and not has_rope(lm.model):
        raise UnsupportedModelError(f"{lm.name} has no rotary embedding, so its keys carry no RoPE: use rope='post'")
    if window not in ("full", "layer"):
        raise ValueError(f"window must be 'full' or 'layer', got {window!r}")
    layer_list = check_layers(lm, layers)
    single = isinstance(phi, (str, FeatureMap, dict))
    phis = [get_phi(p) for p in ([phi] if single else phi)]
    encoded = encode_all(lm, prompts, chat)
    if reads is None:
        reads = ["prompt_end", "end"] if any(e.prompt_len < len(e) for e in encoded) else ["end"]
    for r in reads:
        if r not in ("prompt_end", "end"):
            raise ValueError(f"unknown read point {r!r}. Available: prompt_end, end")
    rec = StateRecorder(layer_list, phis, rope, window)
    order = run(lm, encoded, [rec], reads=reads, span=span, skip_first=skip_first, batch_size=batch_size,
                padding_side=padding_side, progress=progress)
    inverse = torch.argsort(torch.tensor(order))
    meta = {
        "model": lm.name, "dtype": lm.dtype, "rope": rope, "window": window, "span": span,
        "skip_first": skip_first, "chat": chat, "n_tokens": [len(e) for e in encoded],
        "prompt_tokens": [e.prompt_len for e in encoded],
    }
    ids = [getattr(p, "id", None) or (p.get("id") if isinstance(p, dict) else None) for p in
           (prompts if isinstance(prompts, Sequence) and not isinstance(prompts, (str, dict)) else [prompts])]
    if any(i is not None for i in ids):
        meta["ids"] = [str(i) for i in ids]
    states = {}
    for p in phis:
        parts = rec.out[key_name(p)]
        S, z, n = (torch.cat([x[j] for x in parts])[inverse] for j in range(3))
        states[key_name(p)] = KVState(S, z, n, layer_list, list(reads), p.config(), meta)
    return next(iter(states.values())) if single else states
