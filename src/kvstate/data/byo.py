"""Bring your own suite: a .jsonl/.json/.csv/.parquet file validated before any model work.

Required: ``text`` (the user prompt) or ``messages`` (list of {role, content}, JSON-encoded in CSV),
and ``label`` (0 normal / 1 anomalous). Optional: ``id``, ``group``, ``system``, ``response``.
Every problem is reported as a one-line ``ValueError`` that names the problem and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from .schema import ROLES, Item, Suite

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def looks_like_file(name: str) -> bool:
    return name.lower().endswith(SUFFIXES) or Path(name).exists()


def read_table(path: Path) -> pd.DataFrame:
    """The file as a DataFrame, or a ValueError saying why it could not be read."""
    hint = "expected a .jsonl, .json, .csv or .parquet file with a text/messages and a label column"
    if not path.is_file():
        raise ValueError(f"cannot read {path}: no such file; {hint}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype=False)
        if suffix == ".json":
            return pd.read_json(path, dtype=False)
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any parser failure means "unreadable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read {path} as {suffix[1:]}: {first}; {hint}") from None
    raise ValueError(f"cannot read {path}: unknown file type {suffix!r}; {hint}")


def load(path: str | Path) -> Suite:
    path = Path(path)
    df = read_table(path)
    where = path.name
    if "text" not in df.columns and "messages" not in df.columns:
        raise ValueError(f"{where}: no 'text' or 'messages' column (found {list(df.columns)}); "
                         "add 'text' with the prompt, or 'messages' as [{role, content}, ...]")
    if "label" not in df.columns:
        raise ValueError(f"{where}: no 'label' column; add one with 0 (normal) or 1 (anomalous)")
    if len(df) == 0:
        raise ValueError(f"{where}: the file has no rows; add labelled rows")
    items = [_item(where, i, row) for i, row in enumerate(df.to_dict("records"))]
    labels = {it.label for it in items}
    if labels == {1}:  # all-normal files are benign calibration sets; all-anomalous ones are a mistake
        raise ValueError(f"{where}: every row has label 1; a suite needs both 0 and 1 rows "
                         "(or only 0 rows, for a benign calibration file)")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{where}: id {dup!r} occurs more than once; make the 'id' column unique")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    prov = [{"package": "user file", "version": digest[:12], "path": str(path.resolve()),
             "licence": "as declared by the file's owner", "n_used": len(items)}]
    return Suite(path.stem, items, prov, f"User suite from {path.name}")


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and
                                                                      not v.strip())


def _item(where: str, i: int, row: dict[str, Any]) -> Item:
    at = f"{where} row {i + 1}"
    label = _label(at, row["label"])
    system = None if _missing(row.get("system")) else str(row["system"])
    if "messages" in row and not _missing(row["messages"]):
        messages = _messages(at, row["messages"])
        if system:
            messages = [{"role": "system", "content": system}] + messages
    else:
        text = row.get("text")
        if _missing(text):
            raise ValueError(f"{at}: empty text; fill it in or drop the row")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": str(text)}]
    rid = str(row["id"]) if not _missing(row.get("id")) else f"row-{i + 1}"
    group = str(row["group"]) if not _missing(row.get("group")) else rid
    response = None if _missing(row.get("response")) else str(row["response"])
    return Item(rid, group, messages, response, label, "user")


def _label(at: str, value: Any) -> int:
    try:
        num = float(value)
    except (TypeError, ValueError):
        num = math.nan
    if num not in (0.0, 1.0):
        raise ValueError(f"{at}: label is {value!r}, not 0 or 1; map your labels to 0 (normal) "
                         "and 1 (anomalous)")
    return int(num)


def _messages(at: str, value: Any) -> list[dict[str, str]]:
    fix = "use a list of {\"role\": system|user|assistant, \"content\": str}"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError(f"{at}: messages is not valid JSON; {fix}") from None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise ValueError(f"{at}: messages must be a non-empty list; {fix}")
    out = []
    for m in value:
        if not isinstance(m, dict) or m.get("role") not in ROLES or _missing(m.get("content")):
            raise ValueError(f"{at}: bad message {m!r}; {fix}")
        out.append({"role": m["role"], "content": str(m["content"])})
    return out
