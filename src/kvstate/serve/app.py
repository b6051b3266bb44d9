"""The monitor where the model is served: an OpenAI-compatible gateway over batched model replicas.

Two Ray Serve deployments:

* ``MonitorModel`` (``num_replicas`` of them): loads the model and the monitor once, checks each
  request against the context, and generates concurrent requests together (``@serve.batch``: a
  batch is one left-padded ``Monitor.generate``), streaming per-token events back.
* ``Gateway`` (FastAPI ingress): parses and checks requests (:mod:`.protocol`), calls a model
  replica through a streaming handle, and writes OpenAI JSON or server-sent events. It holds no
  model, so when a model replica dies mid-stream the gateway is still there to end that stream
  with an error event; Ray Serve restarts the replica.
"""


import asyncio  # (no `from __future__ import annotations`: FastAPI reads the Request annotation at runtime)
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from . import protocol as P
from .engine import check_prompt, run_batch

__all__ = ["Gateway", "MonitorModel", "build_app", "run_server"]

log = logging.getLogger(__name__)
api = FastAPI(title="kvstate monitor", docs_url=None, redoc_url=None)
_END = object()


@serve.deployment(max_ongoing_requests=64, health_check_period_s=2, graceful_shutdown_timeout_s=2)
class MonitorModel:
    """A model replica: the model and monitor loaded once, concurrent requests generated in batches.

    Parameters
    ----------
    monitor_dir : str
        A monitor folder (``kvstate train-monitor``).
    model : str or None
        Registered model name or local HF folder; None takes the monitor's own model.
    stop : bool
        End a reply at its first flagged token (``finish_reason="content_filter"``).
    max_batch_size : int
        Most concurrent requests generated together.
    batch_wait_s : float
        How long a batch waits for more requests before it starts.
    default_max_tokens : int
        Completion length when a request gives none (capped by the context).
    monitor : bool
        False serves the model without the state (a baseline for benchmarks).
    threads : int or None
        torch intra-op threads in this replica.
    every : int
        Score every n-th token (cheaper; the others carry ``score: null``).
    """

    def __init__(self, monitor_dir: str, model: str | None = None, *, stop: bool = True, max_batch_size: int = 8,
                 batch_wait_s: float = 0.02, default_max_tokens: int = 64, monitor: bool = True, threads: int | None = None,
                 every: int = 1):
        import torch

        from ..models import load_model
        from ..monitor import Monitor, load_monitor

        if threads:
            torch.set_num_threads(threads)
        self.spec, self.detector = load_monitor(monitor_dir)
        self.lm = load_model(model or self.spec.model or "smollm2-135m")
        self.stop = bool(stop and self.spec.threshold is not None and monitor)
        self.monitor, self.default_max_tokens, self.every = monitor, default_max_tokens, every
        # one monitor per replica: its fold (or non-affine check) is built at the first batch, not at every one
        self._live = Monitor(self.lm, self.spec, self.detector, every=every, stop=self.stop) if monitor else None
        self._batched.set_max_batch_size(max_batch_size)
        self._batched.set_batch_wait_timeout_s(batch_wait_s)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvstate-generate")

    def info(self) -> dict:
        """What this replica serves (and its process id, for fault tests)."""
        from ..capture.engine import context_length

        return {"model": self.lm.name, "context": context_length(self.lm.model), "threshold": self.spec.threshold,
                "representation": self.spec.representation, "stop": self.stop, "monitor": self.monitor, "pid": os.getpid()}

    async def generate(self, req: dict):
        """Events for one request: ``error`` (a bad prompt), or ``token`` events then one ``end``."""
        try:
            n, budget = check_prompt(self.lm, req["messages"], req["max_tokens"], self.default_max_tokens)
        except ValueError as e:
            yield {"type": "error", "status": 400, "message": str(e).splitlines()[0]}
            return
        async for events in self._batched({**req, "prompt_tokens": n, "max_tokens": budget}):
            for ev in events:
                yield ev

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def _batched(self, reqs: list[dict]):
        """One ``Monitor.generate`` over the batch; yields each step's new events per request."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(per_row: list[list[dict]]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, per_row)

        def work() -> None:
            try:
                run_batch(self.lm, self.spec, self.detector, reqs, emit, stop=self.stop, monitor=self.monitor,
                          every=self.every, live=self._live)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _END)

        fut = loop.run_in_executor(self._pool, work)
        done = [False] * len(reqs)
        while True:
            item = await queue.get()
            if item is _END:
                break
            out = []
            for i, events in enumerate(item):
                if done[i]:
                    out.append(StopIteration)
                    continue
                out.append(events)
                done[i] = any(ev["type"] == "end" for ev in events)
            yield out
        await fut  # re-raises a failed generation for every request of the batch


def _error(e: P.RequestError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _server_error(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
    return f"the model replica failed ({type(e).__name__}: {first}); retry the request"


@serve.deployment(max_ongoing_requests=512, ray_actor_options={"num_cpus": 0}, graceful_shutdown_timeout_s=2)
@serve.ingress(api)
class Gateway:
    """FastAPI ingress: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``."""

    def __init__(self, model: DeploymentHandle, model_name: str):
        self.model, self.model_name = model, model_name
        self.threshold, self._known = None, False  # the replicas' threshold, asked once

    @api.get("/health")
    async def health(self) -> JSONResponse:
        try:
            info = await asyncio.wait_for(self.model.info.remote(), timeout=10)
        except Exception as e:  # noqa: BLE001  (a dead or restarting replica: not healthy yet)
            return JSONResponse(P.error_body(f"no model replica answers ({type(e).__name__}); wait for Ray to restart it",
                                             "server_error"), status_code=503)
        return JSONResponse({"status": "ok", **info})

    @api.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0, "owned_by": "kvstate"}]}

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        try:
            req = P.parse_chat_request(await request.body(), self.model_name).to_dict()
        except P.RequestError as e:
            return _error(e)
        try:
            if not self._known:
                self.threshold, self._known = (await self.model.info.remote())["threshold"], True
            gen = self.model.generate.options(stream=True).remote(req)
            first = await gen.__anext__()
        except StopAsyncIteration:
            return JSONResponse(P.error_body("the model replica returned nothing; retry the request", "server_error"), 500)
        except Exception as e:  # noqa: BLE001  (the replica died before the first token)
            return JSONResponse(P.error_body(_server_error(e), "server_error"), status_code=503)
        if first["type"] == "error":
            return _error(P.RequestError(first["message"], first.get("status", 400)))
        if req["stream"]:
            return StreamingResponse(self._sse(req, first, gen), media_type="text/event-stream")
        return await self._collect(req, first, gen)

    async def _events(self, first: dict, gen):
        yield first
        async for ev in gen:
            yield ev

    async def _collect(self, req: dict, first: dict, gen) -> JSONResponse:
        text = []
        try:
            async for ev in self._events(first, gen):
                text.append(ev["text"])
                if ev["type"] == "end":
                    return JSONResponse(P.completion(req, self.model_name, "".join(text), ev, self.threshold))
        except Exception as e:  # noqa: BLE001
            return JSONResponse(P.error_body(_server_error(e), "server_error"), status_code=503)
        return JSONResponse(P.error_body("the reply ended without a finish; retry the request", "server_error"), 500)

    async def _sse(self, req: dict, first: dict, gen):
        name = self.model_name
        yield P.sse(P.chunk(req, name, delta={"role": "assistant", "content": ""}))
        try:
            async for ev in self._events(first, gen):
                if ev["type"] == "token":
                    yield P.sse(P.chunk(req, name, delta={"content": ev["text"]}, kvstate=P.score_fields(ev)))
                    continue
                if ev["text"]:
                    yield P.sse(P.chunk(req, name, delta={"content": ev["text"]}))
                yield P.sse(P.chunk(req, name, delta={}, finish_reason=ev["finish_reason"],
                                    kvstate=P.final_fields(ev, self.threshold)))
                if req["include_usage"]:
                    yield P.sse(P.chunk(req, name, delta={}, usage=P.usage(ev), choices=False))
                yield P.sse("[DONE]")
                return
        except Exception as e:  # noqa: BLE001  (the replica died mid-stream: end this stream with an error event)
            log.warning("stream %s failed: %s", req["id"], e)
            yield P.sse(P.error_body(_server_error(e), "server_error"))
            return
        yield P.sse(P.error_body("the reply ended without a finish; retry the request", "server_error"))


def build_app(monitor_dir: str | Path, model: str | None = None, *, replicas: int = 1, stop: bool = True,
              max_batch_size: int = 8, batch_wait_s: float = 0.02, default_max_tokens: int = 64,
              cpus_per_replica: float = 1.0, threads: int | None = None, monitor: bool = True, every: int = 1):
    """The Serve application (gateway + model replicas), ready for ``serve.run``.

    Parameters
    ----------
    monitor_dir : path
        A monitor folder; checked here, before any replica starts.
    model : str, optional
        Model name or folder (default: the monitor's model, else smollm2-135m).
    replicas : int
        Model replicas (Serve's ``num_replicas``).
    stop, max_batch_size, batch_wait_s, default_max_tokens, threads, monitor, every
        See :class:`MonitorModel`.
    cpus_per_replica : float
        Ray CPUs each model replica reserves.
    """
    from ..models import model_name
    from ..monitor import load_monitor

    if replicas < 1:
        raise ValueError(f"replicas must be at least 1, got {replicas}")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    spec, _ = load_monitor(monitor_dir)  # a bad folder fails here in one line, not in a replica's log
    name = model_name(model or spec.model or "smollm2-135m")
    if spec.model and model and spec.model != name:
        raise ValueError(f"the monitor was trained on {spec.model}, not {name}; pass --model {spec.model}")
    replica = MonitorModel.options(num_replicas=replicas, max_ongoing_requests=max(2 * max_batch_size, 16),
                                   ray_actor_options={"num_cpus": cpus_per_replica})
    inner = replica.bind(str(Path(monitor_dir).resolve()), model, stop=stop, max_batch_size=max_batch_size,
                         batch_wait_s=batch_wait_s, default_max_tokens=default_max_tokens, monitor=monitor, threads=threads,
                         every=every)
    return Gateway.bind(inner, name)


def run_server(app, *, host: str = "127.0.0.1", port: int = 8000, name: str = "kvstate", route_prefix: str = "/",
               blocking: bool = False):
    """Start Serve's HTTP proxy on ``host:port`` and deploy ``app`` (returns the gateway's handle)."""
    serve.start(http_options={"host": host, "port": port})
    return serve.run(app, name=name, route_prefix=route_prefix, blocking=blocking)
