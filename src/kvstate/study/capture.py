"""Stage 2, capture: one forward pass per item records every representation into the resumable
(model, suite) store; the local engine or Ray Data fills the same store."""

from __future__ import annotations

from ..data import Item
from ..models import LoadedModel
from ..representations import RepresentationSettings
from ..store import Store, StudyLayout, item_content, store_settings
from ..store.chunks import capture_chunk, item_record
from .config import StudyConfig
from .progress import Stage, log
from .ray import run_ray_extraction
from .types import SuiteData

__all__ = ["capture_suite"]


def capture_suite(lm: LoadedModel, items: list[Item], layout: StudyLayout, cfg: StudyConfig,
                  settings: RepresentationSettings, suite_name: str) -> SuiteData:
    """Capture missing items into the (model, suite) store chunk by chunk; return every item's states."""
    store = Store.open(layout.store(lm.name, suite_name), store_settings(lm.name, lm.dtype, settings))
    keys = [store.key(lm.name, it.id, item_content(it)) for it in items]
    by_key = dict(zip(keys, items))
    todo = store.missing(keys)
    if todo and cfg.engine == "ray":
        res = run_ray_extraction(lm.source, [by_key[k] for k in todo], store.root,
                                 settings, num_workers=cfg.ray_workers, batch_size=cfg.batch_size,
                                 address=cfg.ray_address, chunk=cfg.chunk, dtype=lm.dtype)
        log(f"  ray: {res.computed} items in {res.seconds:.0f} s with {cfg.ray_workers} workers")
        store = Store.open(store.root, store.settings)
        todo = store.missing(keys)
    with Stage(f"capture {suite_name}", len(todo)) as stage:
        for s in range(0, len(todo), cfg.chunk):
            part = todo[s : s + cfg.chunk]
            rows, arrays = capture_chunk(lm, [item_record(k, by_key[k]) for k in part], settings,
                                         batch_size=cfg.batch_size)
            store.put(rows, arrays)
            stage.advance(len(part))
    index, arrays = store.load(keys=keys)
    return SuiteData.from_store(suite_name, index, arrays, list(items))
