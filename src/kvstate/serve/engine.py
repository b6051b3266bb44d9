"""One batch of chat requests generated together, as per-step events per request (no Ray here).

:func:`run_batch` runs :class:`kvstate.monitor.Monitor` (or, for a baseline, plain greedy
``generate`` without the state) over a left-padded batch and turns its ``on_step`` callback into
events: one ``token`` event per generated token with that step's score, then one ``end`` event per
request with its finish reason and aggregate. Each request keeps its own ``max_tokens``; the
batch runs to the longest and a request's events stop at its own limit.

Score semantics are the monitor's: the score at step ``t`` is the detector's score of the state
when token ``t`` was produced (prompt + tokens before ``t``); with the stop policy the flagged
token is still returned and generation ends after it with ``finish_reason="content_filter"``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from ..capture import encode_all, input_device, make_batch
from ..models import LoadedModel
from ..monitor import Monitor, MonitorSpec

__all__ = ["RowState", "check_prompt", "eos_ids", "run_batch"]

Emit = Callable[[list[list[dict]]], None]  # one list of new events per row, once per step


def eos_ids(lm: LoadedModel) -> set[int]:
    """The end-of-sequence token ids of the model's generation config."""
    eos = lm.model.generation_config.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])


def check_prompt(lm: LoadedModel, messages: list[dict], max_tokens: int | None, default_max_tokens: int) -> tuple[int, int]:
    """(prompt tokens, completion budget) for a request, or ``ValueError`` with a one-line fix.

    Parameters
    ----------
    lm : LoadedModel
    messages : list of dict
        Chat messages as the chat template takes them.
    max_tokens : int or None
        Requested completion length; None takes ``default_max_tokens`` capped by the context.
    default_max_tokens : int
    """
    from ..capture.engine import context_length

    enc = encode_all(lm, [messages])[0]  # the monitor's own encoding: same template, same errors
    n, ctx = len(enc), context_length(lm.model)
    if not ctx:
        return n, max_tokens or default_max_tokens
    if n >= ctx:
        raise ValueError(f"the prompt has {n} tokens, which fills {lm.name}'s context of {ctx}; shorten the messages")
    if max_tokens is None:
        return n, min(default_max_tokens, ctx - n)
    if n + max_tokens > ctx:
        raise ValueError(f"prompt ({n} tokens) + max_tokens ({max_tokens}) exceeds {lm.name}'s context of {ctx} tokens; "
                         f"ask for at most {ctx - n} tokens")
    return n, max_tokens


class RowState:
    """One request inside a batch: its tokens, incremental text, scores and how it ended.

    Parameters
    ----------
    tokenizer
        Decodes the reply incrementally (bytes of one character may span tokens).
    max_tokens, prompt_tokens : int
    eos : set of int
    threshold : float or None
        The monitor's threshold (``score > threshold`` flags).
    stop : bool
        End the reply at the first flagged token.
    batch_size : int
        Rows generated together (reported in the end event).
    """

    def __init__(self, tokenizer, max_tokens: int, prompt_tokens: int, eos: set[int], threshold: float | None,
                 stop: bool, batch_size: int):
        self.tok, self.max_tokens, self.prompt_tokens, self.eos = tokenizer, max_tokens, prompt_tokens, eos
        self.threshold, self.stop, self.batch_size = threshold, stop, batch_size
        self.ids: list[int] = []
        self.scores: list[float | None] = []
        self.sent = ""  # text already sent
        self.ended = False
        self.first_flag: int | None = None

    def _delta(self, final: bool = False) -> str:
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for its next byte
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def step(self, step: int, token_id: int, score: float | None) -> list[dict]:
        """Events for this row after generation step ``step`` (empty once it has ended)."""
        if self.ended:
            return []
        s = None if score is None or math.isnan(score) else float(score)
        over = s is not None and self.threshold is not None and s > self.threshold
        if over and self.first_flag is None:
            self.first_flag = step
        is_eos = token_id in self.eos
        if is_eos and not (over and self.stop):
            return [self.end("stop")]
        if not is_eos:
            self.ids.append(token_id)
        self.scores.append(s)
        events = [{"type": "token", "step": step, "token_id": token_id, "text": self._delta(), "score": s}]
        if over and self.stop:
            events.append(self.end("content_filter"))
        elif len(self.scores) >= self.max_tokens:
            events.append(self.end("length"))
        return events

    def end(self, reason: str) -> dict:
        """The row's last event: finish reason, remaining text, aggregate (max score) and flag."""
        self.ended = True
        finite = [s for s in self.scores if s is not None]
        return {"type": "end", "finish_reason": reason, "text": self._delta(final=True), "scores": list(self.scores),
                "aggregate": max(finite) if finite else None, "flagged": self.first_flag is not None,
                "stopped_at": self.first_flag, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": len(self.scores), "batch_size": self.batch_size}


class _Plain:
    """A StoppingCriteria that only reports each step (the baseline without the monitor)."""

    def __init__(self, on_step):
        self.on_step, self.step = on_step, 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.on_step(self.step, input_ids[:, -1], None)
        self.step += 1
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def _plain_generate(lm: LoadedModel, prompts: Sequence[list[dict]], max_new_tokens: int, on_step) -> None:
    from transformers import StoppingCriteriaList

    batch = make_batch(encode_all(lm, prompts), ["end"], "all", 0, lm.tokenizer.pad_token_id, "left")
    device = input_device(lm.model)
    lm.model.generate(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                      max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id,
                      stopping_criteria=StoppingCriteriaList([_Plain(on_step)]))


def run_batch(lm: LoadedModel, spec: MonitorSpec, detector, requests: Sequence[dict], emit: Emit, *,
              stop: bool = False, monitor: bool = True, every: int = 1, live: Monitor | None = None) -> None:
    """Generate a batch of requests together and ``emit`` each step's new events, per row.

    Parameters
    ----------
    lm : LoadedModel
    spec, detector
        The monitor (from :func:`kvstate.monitor.load_monitor`).
    requests : sequence of dict
        Each with ``messages``, ``max_tokens`` (the checked budget) and ``prompt_tokens``.
    emit : callable
        ``emit(events_per_row)``, called from this thread once per step and once at the end.
    stop : bool
        End a row at its first flagged token (needs ``spec.threshold``).
    monitor : bool
        False: plain greedy generation without the state, for a baseline (scores are None).
    every : int
        Score every n-th token (the state is still updated every token; other tokens' scores are None).
    live : Monitor or None, default=None
        A monitor to reuse across batches (a serving replica keeps one), so that what it builds once
        per detector (the folded read-out, or the check that the detector is not affine: seconds on
        a 2048-d state) is not rebuilt per batch. It must be built from ``spec`` and ``detector``
        with this ``every`` and ``stop``; None builds a new one.
    """
    B = len(requests)
    eos = eos_ids(lm)
    thr = spec.threshold if monitor else None
    rows = [RowState(lm.tokenizer, r["max_tokens"], r["prompt_tokens"], eos, thr, stop, B) for r in requests]

    def on_step(step: int, token_ids: torch.Tensor, scores: np.ndarray | None) -> None:
        ids = token_ids.tolist()  # the step's device-to-host copy: the new tokens go to the client
        emit([row.step(step, int(ids[i]), None if scores is None else float(scores[i])) for i, row in enumerate(rows)])

    prompts = [r["messages"] for r in requests]
    longest = max(r["max_tokens"] for r in requests)
    if monitor:
        halts = stop and thr is not None  # the monitor itself ends a flagged row's generation
        mon = live or Monitor(lm, spec, detector, every=every, stop=halts)
        if mon.detector is not detector or (mon.every, mon.stop) != (every, halts):
            raise ValueError("live monitor was built for another detector, every or stop; build it from this spec, "
                             "detector, every and stop")
        mon.on_step = on_step
        mon.generate(prompts, max_new_tokens=longest, final_state=False)  # only the per-step scores are served
    else:
        _plain_generate(lm, prompts, longest, on_step)
    emit([[] if row.ended else [row.end("length")] for row in rows])  # generation may end before a row's own limit
