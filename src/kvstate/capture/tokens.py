"""Prompts -> token ids, with the spans that token selections and read points refer to.

A prompt is chat messages (system / user / assistant history) plus an optional response that is
teacher-forced after the generation prompt. We render the chat template, tokenize the text with
offsets, and label each token as system / user / assistant content, response, or template. That
lets a state skip the attention-sink token and template tokens, or cover one role only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

SPANS = ("all", "content", "prompt", "response", "system", "user")
ROLES = ("system", "user", "assistant")


@dataclass
class Prompt:
    """Messages (without the reply) and the reply to teacher-force, if any."""

    messages: list[dict]
    response: str | None = None
    id: str | None = None


def as_prompt(x: Any) -> Prompt:
    """Accept a string, a list of messages, a dict, a :class:`Prompt` or any object with ``messages``."""
    if isinstance(x, Prompt):
        p = x
    elif isinstance(x, str):
        p = Prompt([{"role": "user", "content": x}])
    elif isinstance(x, dict):
        if "messages" in x:
            p = Prompt(list(x["messages"]), x.get("response"), x.get("id"))
        elif "text" in x:
            msgs = ([{"role": "system", "content": x["system"]}] if x.get("system") else []) + [{"role": "user", "content": x["text"]}]
            p = Prompt(msgs, x.get("response"), x.get("id"))
        else:
            raise ValueError("a prompt dict needs 'messages' or 'text'")
    elif isinstance(x, Sequence) and all(isinstance(m, dict) for m in x):
        p = Prompt(list(x))
    elif hasattr(x, "messages"):
        p = Prompt(list(x.messages), getattr(x, "response", None), getattr(x, "id", None))
    else:
        raise TypeError(f"cannot read a prompt from {type(x).__name__}; pass a string, messages or a dict")
    for m in p.messages:
        if m.get("role") not in ROLES:
            raise ValueError(f"message role must be one of {ROLES}, got {m.get('role')!r}")
    if not any(str(m.get("content", "")).strip() for m in p.messages) and not (p.response or "").strip():
        raise ValueError("empty prompt: every message is empty; give the prompt some text")
    return p


@dataclass
class Encoded:
    """Token ids of prompt + response and a span label per token."""

    ids: list[int]
    prompt_len: int  # tokens up to and including the generation prompt
    labels: list[str] = field(default_factory=list)  # system/user/assistant/response/template per token
    text: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, span: str = "all", skip_first: int = 0) -> list[bool]:
        """Which tokens enter the state: a span (see ``SPANS``) minus the first ``skip_first`` tokens."""
        n = len(self.ids)
        if span == "all":
            keep = [True] * n
        elif span == "content":
            keep = [lab != "template" for lab in self.labels]
        elif span == "prompt":
            keep = [i < self.prompt_len for i in range(n)]
        elif span == "response":
            keep = [i >= self.prompt_len for i in range(n)]
        elif span in ("system", "user"):
            keep = [lab == span for lab in self.labels]
        else:
            raise ValueError(f"unknown span {span!r}. Available: {', '.join(SPANS)}")
        return [k and i >= skip_first for i, k in enumerate(keep)]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, prompt: Prompt, chat: bool | None = None) -> tuple[str, str, list[tuple[str, str]]]:
    """(prompt text, full text, [(role, content)]) for a prompt; raw text when there is no template."""
    use_chat = has_chat_template(tokenizer) if chat is None else chat
    if use_chat and not has_chat_template(tokenizer):
        raise ValueError("the tokenizer has no chat template; pass chat=False to use raw text")
    contents = [(m["role"], str(m.get("content", ""))) for m in prompt.messages]
    if use_chat:
        prompt_text = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
        full = prompt_text + (prompt.response or "")
    else:
        prompt_text = "\n\n".join(c for _, c in contents)
        resp = prompt.response or ""
        full = prompt_text + (resp if not resp or resp[0].isspace() else " " + resp)
    return prompt_text, full, contents


def encode(tokenizer, prompt: Prompt, chat: bool | None = None) -> Encoded:
    """Tokenize a prompt; label tokens by the message whose content they overlap."""
    prompt_text, full, contents = render(tokenizer, prompt, chat)
    use_chat = has_chat_template(tokenizer) if chat is None else chat
    enc = tokenizer(full, add_special_tokens=not use_chat, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    # character ranges of each message's content, found in order in the rendered text
    ranges, cursor = [], 0
    for role, content in contents:
        start = full.find(content, cursor) if content else -1
        if start >= 0:
            ranges.append((role, start, start + len(content)))
            cursor = start + len(content)
    resp_start = len(prompt_text)
    labels = []
    for s, e in offsets:
        lab = "template"
        if s >= resp_start and e > s:
            lab = "response"
        else:
            for role, a, b in ranges:
                if s < b and e > a and e > s:
                    lab = role
                    break
        labels.append(lab)
    # tokens starting before the response (special tokens have offset (0, 0)) belong to the prompt
    prompt_len = sum(1 for (s, e), lab in zip(offsets, labels) if lab != "response" and s < resp_start)
    return Encoded(list(ids), max(prompt_len, 1), labels, full)


def fit_context(lm, items: list, max_tokens: int) -> tuple[list, int]:
    """The items (anything :func:`as_prompt` takes) whose prompt + reply fit ``max_tokens`` tokens
    of ``lm``'s tokenizer, and how many were dropped."""
    keep = [it for it in items if len(encode(lm.tokenizer, as_prompt(it))) <= max_tokens]
    return keep, len(items) - len(keep)
