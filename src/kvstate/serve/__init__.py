"""The monitor where models are served: an OpenAI-compatible streaming endpoint on Ray Serve.

``protocol`` (the wire format, plain Python), ``engine`` (a batch of requests through
:class:`kvstate.monitor.Monitor`, as per-token events) and ``app`` (the Ray Serve deployments;
needs ``pip install 'kvstate[serve]'``). See docs/serving.md.
"""

from .engine import RowState, check_prompt, run_batch
from .protocol import ChatRequest, RequestError, parse_chat_request


def build_app(*args, **kwargs):
    """The Ray Serve application; see :func:`kvstate.serve.app.build_app`."""
    try:
        from .app import build_app as build
    except ImportError as e:
        raise ImportError(f"serving needs Ray Serve ({e.name} is missing): pip install 'kvstate[serve]'") from None
    return build(*args, **kwargs)


__all__ = ["ChatRequest", "RequestError", "RowState", "build_app", "check_prompt", "parse_chat_request", "run_batch"]
