"""The model's own replies, for suites whose label depends on what the model actually says."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..models import LoadedModel
from .tokens import as_prompt, render


@torch.inference_mode()
def generate_replies(lm: LoadedModel, prompts: Sequence, *, max_new_tokens: int = 48, batch_size: int = 8,
                     chat: bool | None = None, progress: bool | None = None) -> list[str]:
    """Greedy, bounded replies (deterministic), batched with left padding."""
    tok, model = lm.tokenizer, lm.model
    texts = [render(tok, as_prompt(p), chat)[0] for p in prompts]
    use_chat = bool(getattr(tok, "chat_template", None)) if chat is None else chat
    device = next(model.parameters()).device
    side = tok.padding_side
    tok.padding_side = "left"
    replies: list[str] = [""] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    starts = range(0, len(order), batch_size)
    try:
        for s in tqdm(starts, desc=f"generate {lm.name}", unit="batch", disable=not (progress or (progress is None and len(starts) > 4))):
            idx = order[s : s + batch_size]
            enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=not use_chat).to(device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            for j, i in enumerate(idx):
                replies[i] = tok.decode(out[j, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    finally:
        tok.padding_side = side
    return replies
