"""Small helpers shared by the suite builders."""

from __future__ import annotations

import hashlib
import re


def chat(user: str, system: str | None = None) -> list[dict[str, str]]:
    """Messages for one user turn, optionally preceded by a system prompt."""
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": user}]


def slug(text: str, n: int = 10) -> str:
    """Short stable id fragment for a piece of text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def pick(seed: str, options: list, k: int = 1) -> list:
    """``k`` options chosen by hashing ``seed`` (stable across runs and Python versions)."""
    ranked = sorted(options, key=lambda o: hashlib.sha256(f"{seed}|{o}".encode()).hexdigest())
    return ranked[:k]


def truncate_sentences(text: str, max_chars: int) -> str:
    """Cut at the last sentence end before ``max_chars`` so templates stay readable."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    ends = [m.end() for m in re.finditer(r"[.!?](\s|$)", head)]
    return head[: ends[-1]].rstrip() if ends else head.rstrip()
