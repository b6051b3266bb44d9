"""Capture a suite on a Ray cluster into the same resumable Store the local engine writes.

Why Ray Data: an actor pool keeps one model replica per worker (loaded once, not per batch),
streams chunks of items to whichever replica is free, and restarts a dead replica and retries
its chunk. The driver is the only writer: it filters out keys already stored (resume), sends the
rest as chunks, and ``Store.put``-s each returned chunk as one shard, so a retried chunk can never
be stored twice (``put`` skips stored keys under the store's flock) and no shared filesystem is
needed between nodes.

Chunks are formed exactly like :func:`kvstate.study.capture.capture_suite` (both call
:func:`.chunks.capture_chunk`: ``chunk`` consecutive missing
items, then ``capture_representations`` with ``batch_size``), so a chunk is padded and batched the
same way and the stored arrays are identical to the local engine's; the two can even fill one store.

Ray is an optional dependency (``pip install 'kvstate[ray]'``). Results travel from actors to the
driver as JSON + safetensors bytes; kvstate's own storage stays pickle-free.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..capture import select_layers
from ..models import load_model, model_name, resolve
from ..representations import RepresentationSettings
from ..store import Store, item_content, store_settings
from ..store.chunks import capture_chunk, item_record


def _require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("distributed extraction needs Ray Data: pip install 'kvstate[ray]' "
                          "(or pip install 'ray[data]')") from None
    return ray


def num_layers(model_name_or_path: str | Path) -> int:
    """Decoder layers of a model, from its config.json (no weights loaded)."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(str(resolve(model_name_or_path))).num_hidden_layers)


def resolve_settings(model_name_or_path: str | Path, settings: Any = None, layers: str | None = None):
    """RepresentationSettings with explicit layer indices, as ``run_study`` stores them.

    ``layers`` (a scheme such as ``"upper3"``) overrides ``settings.layers``; empty means all layers.
    """
    if settings is None:
        settings = RepresentationSettings()
    elif isinstance(settings, Mapping):
        settings = RepresentationSettings.from_dict(dict(settings))
    spec = layers if layers is not None else (list(settings.layers) or None)
    chosen = tuple(select_layers(spec, num_layers(model_name_or_path)))
    return RepresentationSettings(**{**settings.to_dict(), "layers": chosen})


def _chunk_rows(keys: Sequence[str], by_key: Mapping[str, Any], chunk: int) -> list[dict]:
    """One dataset row per chunk of consecutive missing items (the unit of work and of resumption)."""
    return [{"chunk": i // chunk,
             "payload": json.dumps([item_record(k, by_key[k]) for k in keys[i: i + chunk]])}
            for i in range(0, len(keys), chunk)]


class CaptureActor:
    """A model replica: loads the model once, then captures one chunk per call.

    ``crash_marker`` is for fault-injection tests: the first replica to see a chunk while the
    file is absent creates it and dies hard (``os._exit``), as a preempted node would.
    """

    def __init__(self, model: str, dtype: str, settings: dict, batch_size: int, reads: Sequence[str],
                 load_kwargs: dict, threads: int, crash_marker: str | None = None):
        import torch


        torch.set_num_threads(max(1, threads))
        torch.manual_seed(int(settings.get("seed", 0)))
        self.lm = load_model(model, dtype=dtype, **load_kwargs)
        self.settings = RepresentationSettings.from_dict(settings)
        self.batch_size, self.reads, self.crash_marker = batch_size, list(reads), crash_marker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from safetensors.numpy import save

        if self.crash_marker and not os.path.exists(self.crash_marker):
            Path(self.crash_marker).write_text(str(os.getpid()))
            os._exit(1)
        rows_out, blobs = [], []
        for payload in batch["payload"]:
            rows, arrays = capture_chunk(self.lm, json.loads(payload), self.settings, batch_size=self.batch_size,
                                         reads=self.reads)
            rows_out.append(json.dumps(rows))
            blobs.append(save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}))
        return {"chunk": np.asarray(batch["chunk"]), "rows": np.array(rows_out, dtype=object),
                "tensors": np.array(blobs, dtype=object)}


@dataclass
class RayRunResult:
    """What a run did: items asked for, found already stored, computed now; wall time."""

    store: str
    items: int
    already_stored: int
    computed: int
    chunks: int
    seconds: float

    @property
    def items_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def run_ray_extraction(model_name_or_path: str | Path, suite_items: Sequence[Any], out_store_root: str | Path,
                       settings: Any = None, *, num_workers: int = 2, batch_size: int = 8,
                       address: str | None = None, chunk: int = 32, dtype: str = "float32",
                       reads: Sequence[str] = ("prompt_end", "end"), cpus_per_worker: float = 1.0,
                       gpus_per_worker: float = 0.0, max_restarts: int = 3, load_kwargs: dict | None = None,
                       crash_marker: str | None = None) -> RayRunResult:
    """Capture every representation of ``suite_items`` with ``num_workers`` model replicas on Ray.

    Writes to the Store at ``out_store_root`` (same format and settings as the local engine, so
    ``study.capture_suite`` and this function resume each other). ``address``: an existing cluster
    (``"auto"``, ``"ray://head:10001"``); None starts a local one (or uses ``ray.init`` already
    done). ``load_kwargs`` go to :func:`kvstate.load_model` on each worker (``device_map``, ...).
    A replica that dies is restarted up to ``max_restarts`` times and its chunk retried.
    """
    from safetensors.numpy import load as st_load

    ray = _require_ray()
    if num_workers < 1 or batch_size < 1 or chunk < 1:
        raise ValueError("num_workers, batch_size and chunk must be >= 1")
    if "dtype" in (load_kwargs or {}):
        raise ValueError("pass dtype=... to run_ray_extraction itself (it is part of the store's settings), "
                         "not in load_kwargs")
    t0 = time.perf_counter()
    name = model_name(model_name_or_path)
    settings = resolve_settings(model_name_or_path, settings)
    store = Store.open(out_store_root, store_settings(name, dtype, settings))
    keys = [store.key(name, it.id, item_content(it)) for it in suite_items]
    by_key = dict(zip(keys, suite_items))
    todo = store.missing(keys)
    result = RayRunResult(str(out_store_root), len(set(keys)), len(set(keys)) - len(todo), 0, 0, 0.0)
    if not todo:
        return result
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    try:
        rows = _chunk_rows(todo, by_key, chunk)
        with warnings.catch_warnings():  # restart limits have no named parameter yet (Ray 2.60)
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
            ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
                CaptureActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=num_workers),
                num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                fn_constructor_kwargs=dict(model=str(model_name_or_path), dtype=dtype, settings=settings.to_dict(),
                                           batch_size=batch_size, reads=list(reads), load_kwargs=load_kwargs or {},
                                           threads=max(1, int(cpus_per_worker)), crash_marker=crash_marker),
                max_restarts=max_restarts, max_task_retries=max_restarts)
        for out in ds.iter_rows():
            part = json.loads(out["rows"])
            if store.put(part, st_load(bytes(out["tensors"]))) is not None:
                result.computed += len(part)
            result.chunks += 1
    finally:
        if started:
            ray.shutdown()
    result.seconds = time.perf_counter() - t0
    return result
