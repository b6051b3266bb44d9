"""The capture engine: encode prompts, pad them into batches, run the model once per batch with
every :class:`Recorder` listening to the same attention calls.

All representations of one prompt come from one forward pass; what a recorder keeps (states,
activations, fidelity errors) is its own business (:mod:`kvstate.state`, :mod:`kvstate.representations`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from ..models import LoadedModel
from .hook import AttentionCall, KVCapture
from .layers import select_layers
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

    Recorders receive batches in sorted order; the returned order lets the caller undo the sort.
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
