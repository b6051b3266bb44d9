"""Hugging Face datasets as suites: ``hf:owner/name[:config][@split][?text=COL&label=COL...]``.

The part after ``?`` maps the dataset's columns onto a suite's fields (URL query syntax):

========  ============================================================  ===========
key       meaning                                                       default
========  ============================================================  ===========
text      column with the user prompt                                   ``text``
label     column with 0/1 (or booleans), or a constant ``0`` / ``1``    ``label``
pos       the label column's value that means 1 (e.g. ``unsafe``)       none
group     column tying rows that must share a split                     the row
response  column with an assistant reply to teacher-force               none
system    column with a system prompt                                   none
id        column with a unique row id                                   the row
========  ============================================================  ===========

Example: ``hf:owner/prompts@test?text=prompt&label=is_harmful``. The same mapping can be given
as ``columns={"text": "prompt", "label": "is_harmful"}`` to :func:`load`. The reference may also
be a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
(``hf:/data/my_set@test?...``), which loads without the hub. Hub datasets load through the
``datasets`` library and its cache (so ``HF_DATASETS_OFFLINE=1`` works once they are cached);
``trust_remote_code`` is never set. Every problem is one ``ValueError`` line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from .byo import _item
from .schema import Suite

PREFIX = "hf:"
KEYS = ("text", "label", "pos", "group", "response", "system", "id")
FIX = "write hf:owner/name[:config][@split]?text=COL&label=COL (see kvstate.data.hf)"


@dataclass(frozen=True)
class HFRef:
    """A parsed ``hf:`` suite name."""

    ref: str  # owner/name on the hub, or a local folder
    config: str | None = None
    split: str | None = None
    columns: dict[str, str] = field(default_factory=dict)

    @property
    def local(self) -> bool:
        return self.ref.startswith(("/", ".", "~")) or Path(self.ref).expanduser().is_dir()

    @property
    def name(self) -> str:
        base = "-".join(p for p in (self.ref.strip("/~."), self.config, self.split) if p)
        return "hf-" + re.sub(r"[^A-Za-z0-9._]+", "-", base).strip("-")


def parse(spec: str, columns: Mapping[str, str] | None = None) -> HFRef:
    """``hf:owner/name[:config][@split][?key=COL&...]`` → :class:`HFRef`; ``columns`` override the query."""
    if not spec.startswith(PREFIX):
        raise ValueError(f"{spec!r} is not an hf: suite name; {FIX}")
    body, _, query = spec[len(PREFIX):].partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"{spec!r}: cannot read the column mapping {query!r}; {FIX}") from None
    cols = {**dict(pairs), **dict(columns or {})}
    unknown = sorted(set(cols) - set(KEYS))
    if unknown:
        raise ValueError(f"{spec!r}: unknown mapping key {unknown[0]!r}; use {', '.join(KEYS)}")
    if any(not str(v) for v in cols.values()):
        raise ValueError(f"{spec!r}: an empty column name in the mapping; {FIX}")
    body, _, split = body.partition("@") if "@" in body else (body, "", "")
    config = None
    if not body.startswith(("/", ".", "~")) and ":" in body:
        body, _, config = body.partition(":")
    if not body:
        raise ValueError(f"{spec!r}: no dataset named; {FIX}")
    return HFRef(body, config or None, split or None, {k: str(v) for k, v in cols.items()})


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dataset(ref: HFRef) -> Any:
    try:
        import datasets
    except ImportError:
        raise ValueError("hf: suites need the datasets library; pip install 'kvstate[hf]'") from None

    if ref.local:
        path = Path(ref.ref).expanduser()
        if not path.is_dir():
            raise ValueError(f"hf:{ref.ref}: no such folder; pass a folder written by Dataset.save_to_disk")
        try:
            obj = datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - any reader failure is "not a saved dataset"
            raise ValueError(f"hf:{ref.ref}: not a dataset saved with save_to_disk ({_first(exc)})") from None
        if isinstance(obj, datasets.DatasetDict):
            splits = list(obj)
            split = ref.split or (splits[0] if len(splits) == 1 else None)
            if split not in obj:
                raise ValueError(f"hf:{ref.ref}: choose a split with @SPLIT, one of {', '.join(splits)}")
            return obj[split]
        return obj
    try:
        return datasets.load_dataset(ref.ref, ref.config, split=ref.split or "train")
    except Exception as exc:  # noqa: BLE001 - hub, cache and parsing errors all mean "cannot load"
        raise ValueError(f"cannot load hf:{ref.ref} ({_first(exc)}); check the name and split, load it "
                         "once online so the datasets cache holds it, or pass a folder saved with "
                         "Dataset.save_to_disk") from None


def _label(value: Any, pos: str | None, at: str) -> Any:
    if pos is not None:
        return int(str(value) == pos)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return int(value.strip().lower() == "true")
    try:
        if float(value) in (0.0, 1.0):
            return int(float(value))
    except (TypeError, ValueError):
        pass
    raise ValueError(f"{at}: label is {value!r}, not 0/1; add &pos=VALUE to mark the value that means 1")


def load(spec: str, columns: Mapping[str, str] | None = None) -> Suite:
    """A Hugging Face dataset as a :class:`Suite` (see the module docstring for the mapping).

    Parameters
    ----------
    spec : str
        ``hf:owner/name[:config][@split][?text=COL&label=COL...]``, or ``hf:FOLDER[@split]``.
    columns : mapping, optional
        Column mapping (keys as in the query); overrides the query's keys.

    Returns
    -------
    Suite
        One item per row; ``source`` is ``hf:REF``, ids are prefixed by the suite name.
    """
    ref = parse(spec, columns)
    ds = _dataset(ref)
    cols = {"text": "text", "label": "label", **ref.columns}
    names = list(ds.column_names)
    const = cols["label"] if cols["label"] in ("0", "1") and cols["label"] not in names else None
    for key in ("text", "label", "group", "response", "system", "id"):
        col = cols.get(key)
        if col is not None and col not in names and not (key == "label" and const is not None):
            raise ValueError(f"hf:{ref.ref}: no column {col!r} for {key} (columns: {', '.join(names)}); "
                             f"map it with ?{key}=COLUMN")
    if len(ds) == 0:
        raise ValueError(f"hf:{ref.ref}: the split has no rows; choose another with @SPLIT")
    items = []
    for i, row in enumerate(ds):
        at = f"{ref.name} row {i + 1}"
        rec = {k: row[c] for k, c in cols.items() if k in ("text", "group", "response", "system", "id")}
        rec["label"] = int(const) if const is not None else _label(row[cols["label"]], cols.get("pos"), at)
        it = _item(ref.name, i, rec)
        items.append(replace(it, id=f"{ref.name}-{it.id}", group=f"{ref.name}-{it.group}", source=f"hf:{ref.ref}"))
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"hf:{ref.ref}: the id column {cols.get('id')!r} repeats values; map a unique one")
    info = getattr(ds, "info", None)
    prov = [{"package": f"hf:{ref.ref}", "version": str(getattr(ds, "_fingerprint", "") or "")[:16],
             "path": f"{ref.config or 'default'}/{ref.split or 'train'}",
             "licence": (getattr(info, "license", None) or "see the dataset card"), "n_used": len(items),
             "columns": cols}]
    return Suite(ref.name, items, prov, f"Hugging Face dataset {ref.ref} ({prov[0]['path']})")
