"""One chunk of items -> the store's index rows and arrays: the unit of work of both engines."""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

import numpy as np

from ..representations import capture_representations

__all__ = ["capture_chunk", "item_record"]


def item_record(key: str, it: Any) -> dict:
    """What a worker needs of a suite item (plain JSON types, so Arrow and the wire stay simple)."""
    return {"item_key": key, "id": str(it.id), "label": int(it.label), "group": str(it.group),
            "split": str(it.split), "messages": it.messages, "response": it.response}


def capture_chunk(lm, records: Sequence[Mapping[str, Any]], settings, *, batch_size: int,
                  reads: Sequence[str] = ("prompt_end", "end")) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Index rows and arrays of one chunk of :func:`item_record` dicts, as both engines store them."""
    prompts = [{"messages": r["messages"], "response": r["response"], "id": r["id"]} for r in records]
    cap = capture_representations(lm, prompts, settings, reads=list(reads), batch_size=batch_size, progress=False)
    names = sorted(cap.rows[0])
    arrays = {n: np.stack([row[n] for row in cap.rows]) for n in names}
    rows = [{"item_key": r["item_key"], "id": r["id"], "label": r["label"], "group": r["group"],
             "split": r["split"], "n_tokens": int(n), "time_ms": 1000 * cap.seconds_per_item,
             "dims": json.dumps({n: cap.dims[n] for n in names})}
            for r, n in zip(records, cap.n_tokens)]
    return rows, arrays
