"""The OpenAI chat-completions wire format, with kvstate's extension field: parsing and building.

Pure Python (no Ray, no model): the gateway parses and checks each request here before any model
work, and builds the chunks and responses that standard OpenAI clients read. kvstate's own numbers
travel in a top-level ``"kvstate"`` object that those clients ignore (and expose as an extra field).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..capture.tokens import ROLES

__all__ = ["ChatRequest", "RequestError", "chunk", "completion", "error_body", "parse_chat_request", "sse"]


class RequestError(ValueError):
    """A bad request: an HTTP status and a one-line message in the OpenAI error shape.

    Parameters
    ----------
    message : str
        One line naming the problem and the fix.
    status : int
        HTTP status code (4xx for the client's mistakes).
    kind : str
        OpenAI error ``type``.
    param : str, optional
        The request field at fault.
    """

    def __init__(self, message: str, status: int = 400, kind: str = "invalid_request_error", param: str | None = None):
        super().__init__(message)
        self.message, self.status, self.kind, self.param = message, status, kind, param

    def body(self) -> dict:
        return error_body(self.message, self.kind, self.param)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None) -> dict:
    """``{"error": {"message", "type", "param", "code"}}``, the shape OpenAI clients parse."""
    return {"error": {"message": message.splitlines()[0] if message else kind, "type": kind, "param": param, "code": None}}


@dataclass
class ChatRequest:
    """A checked chat-completions request.

    Attributes
    ----------
    messages : list of dict
        ``{"role", "content"}`` with string content.
    max_tokens : int or None
        Requested completion length (None: the server's default, capped by the context).
    stream : bool
        Server-sent events instead of one JSON response.
    include_usage : bool
        ``stream_options.include_usage``: a last chunk with token counts.
    id : str
        The completion id (``chatcmpl-...``).
    """

    messages: list[dict]
    max_tokens: int | None = None
    stream: bool = False
    include_usage: bool = False
    id: str = field(default_factory=lambda: f"chatcmpl-{uuid.uuid4().hex[:24]}")
    created: int = field(default_factory=lambda: int(time.time()))

    def to_dict(self) -> dict:
        return {"messages": self.messages, "max_tokens": self.max_tokens, "stream": self.stream,
                "include_usage": self.include_usage, "id": self.id, "created": self.created}


def _content(m: dict, i: int) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in c):
        return "".join(p["text"] for p in c)
    raise RequestError(f"messages[{i}].content must be a string (or a list of text parts); got {type(c).__name__}",
                       param=f"messages[{i}].content")


def _positive_int(doc: dict, name: str) -> int | None:
    v = doc.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise RequestError(f"{name} must be a positive integer, got {v!r}; ask for at least 1 token", param=name)
    return v


def parse_chat_request(body: bytes | str, served_model: str) -> ChatRequest:
    """Check a ``POST /v1/chat/completions`` body and return the request, or raise :class:`RequestError`.

    Parameters
    ----------
    body : bytes or str
        The raw request body.
    served_model : str
        The model this server runs; a request naming another one gets a 404.

    Returns
    -------
    ChatRequest

    Notes
    -----
    Decoding is greedy: sampling fields (``temperature``, ``top_p``, ``seed``, ...) are accepted and
    ignored, so that a stream's monitor scores are reproducible. ``n`` other than 1 is refused.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(f"the request body is not valid JSON ({str(e).splitlines()[0]}); send a JSON object") from None
    if not isinstance(doc, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(doc).__name__}; send {{\"messages\": [...]}}")
    model = doc.get("model")
    if model is not None and model != served_model:
        raise RequestError(f"model {model!r} is not served here; use {served_model!r} (GET /v1/models)", status=404,
                           kind="not_found_error", param="model")
    msgs = doc.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("'messages' is required: a non-empty list of {\"role\", \"content\"} objects", param="messages")
    messages = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise RequestError(f"messages[{i}] must be an object with 'role' and 'content', got {type(m).__name__}",
                               param=f"messages[{i}]")
        role = m.get("role")
        if role == "developer":  # OpenAI's newer name for the system role
            role = "system"
        if role not in ROLES:
            raise RequestError(f"messages[{i}].role {role!r} is not supported; use one of {', '.join(ROLES)}",
                               param=f"messages[{i}].role")
        messages.append({"role": role, "content": _content(m, i)})
    max_tokens = _positive_int(doc, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _positive_int(doc, "max_tokens")
    n = doc.get("n", 1)
    if n != 1:
        raise RequestError(f"n must be 1 (greedy decoding gives one reply), got {n!r}; send n=1 or leave it out", param="n")
    stream = doc.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(f"stream must be true or false, got {stream!r}", param="stream")
    opts = doc.get("stream_options") or {}
    include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
    return ChatRequest(messages, max_tokens, stream, include_usage)


def _num(x: Any) -> float | None:
    """A float for JSON: nan/None -> None."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def chunk(req: dict, model: str, *, delta: dict, finish_reason: str | None = None, kvstate: dict | None = None,
          usage: dict | None = None, choices: bool = True) -> dict:
    """One ``chat.completion.chunk`` (streamed), with an optional ``kvstate`` extension."""
    out = {"id": req["id"], "object": "chat.completion.chunk", "created": req["created"], "model": model,
           "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}] if choices else []}
    if kvstate is not None:
        out["kvstate"] = kvstate
    if usage is not None:
        out["usage"] = usage
    return out


def completion(req: dict, model: str, text: str, end: dict, threshold: float | None) -> dict:
    """The non-streamed ``chat.completion`` with ``kvstate: {scores, aggregate, flagged, threshold, ...}``."""
    return {
        "id": req["id"], "object": "chat.completion", "created": req["created"], "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": end["finish_reason"]}],
        "usage": usage(end),
        "kvstate": {"scores": [_num(s) for s in end["scores"]], **final_fields(end, threshold)},
    }


def final_fields(end: dict, threshold: float | None) -> dict:
    """The per-sequence monitor fields of a finished reply."""
    return {"aggregate": _num(end["aggregate"]), "flagged": bool(end["flagged"]), "threshold": _num(threshold),
            "stopped_at": end["stopped_at"], "batch_size": end["batch_size"]}


def usage(end: dict) -> dict:
    p, c = int(end["prompt_tokens"]), int(end["completion_tokens"])
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def score_fields(ev: dict) -> dict:
    """The per-token monitor fields of a streamed token."""
    return {"score": _num(ev["score"]), "step": int(ev["step"])}


def sse(obj: dict | str) -> str:
    """One server-sent event: ``data: {...}\\n\\n`` (or ``data: [DONE]``)."""
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, allow_nan=False)}\n\n"
