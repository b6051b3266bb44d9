"""One mask algebra for every place kvstate needs to know which keys a query may attend to.

Masks are built from transformers' own mask primitives (``transformers.masking_utils``:
``causal_mask_function``, ``padding_mask_function``, ``sliding_window_overlay``, ``and_masks``),
evaluated on a broadcast index grid, so kvstate and the model agree on what "causal", "padding"
and "sliding window" mean. All results are boolean, ``True`` = may attend, shaped
(B or 1, 1, q_len, T_kv); queries sit at the last ``q_len`` key positions (decoding with a cache).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers.masking_utils import and_masks, causal_mask_function, padding_mask_function, sliding_window_overlay

__all__ = ["allowed_keys", "causal_mask", "mask_grid"]


def mask_grid(mask_function: Callable, batch: int, q_len: int, kv_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Evaluate a transformers mask function on every (batch, query, key): bool (batch, 1, q_len, kv_len)."""
    b = torch.arange(batch, device=device)[:, None, None, None]
    h = torch.zeros((), dtype=torch.long, device=device)
    q = (torch.arange(q_len, device=device) + (kv_len - q_len))[None, None, :, None]
    kv = torch.arange(kv_len, device=device)[None, None, None, :]
    return mask_function(b, h, q, kv).expand(batch, 1, q_len, kv_len)


def causal_mask(q_len: int, kv_len: int | None = None, *, valid: torch.Tensor | None = None,
                sliding_window: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Causal mask (optionally within a sliding window) over real tokens.

    ``valid`` (B, T) marks real tokens (``attention_mask``); keys and queries that are padding are
    masked out, so a padded query row is all ``False``.
    """
    kv_len = q_len if kv_len is None else kv_len
    fns = [causal_mask_function]
    if sliding_window:
        fns.append(sliding_window_overlay(int(sliding_window)))
    batch = 1
    if valid is not None:
        valid = valid.to(device=device, dtype=torch.bool)
        batch = valid.shape[0]
        fns.append(padding_mask_function(valid))
        fns.append(lambda b, h, q, kv: valid[b, q])  # the query must be a real token too
    return mask_grid(and_masks(*fns), batch, q_len, kv_len, device)


def allowed_keys(mask: torch.Tensor | None, q_len: int, kv_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """What the attention function was given, as booleans (B|1, 1|H, q_len, kv_len).

    ``None`` (sdpa's "causal, no padding" shortcut) is the causal mask; a boolean mask is sliced to
    the last ``q_len`` queries; an additive float mask allows the entries above half the dtype's
    minimum (transformers writes ``finfo.min`` where attention is masked).
    """
    if mask is None:
        return causal_mask(q_len, kv_len, device=device)
    m = mask[..., -q_len:, :kv_len]
    if m.dtype == torch.bool:
        return m
    return m.float() > torch.finfo(torch.float32).min / 2
