"""Resumable, content-addressed on-disk store of per-item representations.

A study computes, per (model, suite item, capture settings), a few 1-D float32 vectors
(``{name: vector}``) plus metadata. Extraction is the slow part, so results are written as they
come and a rerun only computes what is missing::

    root/store.json                   format, settings, settings hash, created
    root/index.parquet                one row per item: item_key, shard, row, shard_sha256, metadata...
    root/shards/<hash>.safetensors    several items: one (rows, D) array per name + JSON header

* Content addressing: ``item_key = sha256(model, settings_hash, item id, item content)``, so
  reruns skip finished items and a store never mixes settings (:class:`StoreMismatchError`).
* Crash safety: every file is written to a temp file in the same directory, fsynced and
  ``os.replace``-d; a shard is written before the index row that references it. A process killed
  at any moment leaves either a complete shard that is not indexed yet (an orphan, removed on
  the next open) or nothing; the index is always consistent.
* Integrity: each shard's sha256 is kept in the index and checked on load; damaged or foreign
  files raise :class:`StoreCorruptError` naming the file and the fix.
* One writer at a time is enforced with an advisory ``flock`` held only during writes, so
  concurrent writers serialise instead of clobbering the index.

No pickle anywhere: safetensors, parquet and JSON only.

Why this module is long: writes, integrity checks, orphan clean-up and the lock serve one invariant
(a shard is complete before the index row that names it, under one lock), kept in one file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors.numpy import load as st_load
from safetensors.numpy import save_file as st_save

from .._io import atomic_write, write_json

try:  # POSIX advisory locks; elsewhere the single-writer rule is only documented
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["FORMAT", "SHARD_FORMAT", "Store", "StoreCorruptError", "StoreMismatchError", "item_key",
           "settings_hash"]

FORMAT = "kvstate.store"
SHARD_FORMAT = "kvstate.store.shard"
VERSION = 1
_TMP = ".tmp"
_FIX = "delete it and rerun: only the items it held are recomputed"
# Columns the store itself owns; callers' row dicts may not set them.
_OWN = ("shard", "row", "shard_sha256", "settings_hash", "shapes")


class StoreMismatchError(ValueError):
    """The store on disk was built with other settings than the ones requested."""


class StoreCorruptError(ValueError):
    """A file in the store is truncated, modified, or not one of this store's files."""


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------

def _canonical(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal settings hash equally."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def _normalise(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings as they will read back from JSON (tuples -> lists, paths -> str)."""
    return json.loads(_canonical(dict(settings)))


def settings_hash(settings: Mapping[str, Any]) -> str:
    """16 hex digits of sha256 over the canonical JSON of ``settings``."""
    return hashlib.sha256(_canonical(_normalise(settings)).encode()).hexdigest()[:16]


def item_key(model: str, settings_hash: str, item_id: str, content: Any) -> str:
    """sha256 naming one item's result: model, settings, id and the text/messages/response.

    ``content`` is anything JSON-able (a prompt string, a message list, ``{"messages", "response"}``);
    hashing the content and not only the id means an edited prompt is recomputed.
    """
    payload = _canonical([str(model), str(settings_hash), str(item_id), content])
    return hashlib.sha256(payload.encode()).hexdigest()


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_temp(name: str) -> bool:
    """A writer's temporary file: ours (``.<name>.<pid>.<id>.tmp``) or the one safetensors itself
    writes before renaming onto our temporary name (``.tmpXXXXXX``, Rust's tempfile crate)."""
    return name.startswith(".") and (name.endswith(_TMP) or name.startswith(_TMP))


def _read_shard_header(data: bytes) -> dict[str, Any] | None:
    """The kvstate JSON from a safetensors header, or None if the bytes are not a kvstate shard."""
    try:
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n])
        meta = json.loads(header["__metadata__"]["kvstate"])
    except (struct.error, ValueError, KeyError, TypeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == SHARD_FORMAT else None


# --------------------------------------------------------------------------------------------
# Store
# --------------------------------------------------------------------------------------------

def _settings_diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two settings dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            name = f"{prefix}{key}"
            if key not in old or key not in new:
                out.append(f"{name} ({'absent' if key not in old else repr(old[key])} != "
                           f"{'absent' if key not in new else repr(new[key])})")
            else:
                out.extend(_settings_diff(old[key], new[key], name + "."))
        return out
    return [] if old == new else [f"{prefix.rstrip('.')} ({old!r} != {new!r})"]


class Store:
    """A directory of representations for one settings dict; see the module docstring.

    Use :meth:`open`; ``Store(root)`` alone opens an existing store with whatever settings it has.
    The index is cached in memory and re-read from disk under the lock before each write.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.info: dict[str, Any] = json.loads((self.root / "store.json").read_text())
        self._index = self._read_index()

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike, settings: Mapping[str, Any], create: bool = True) -> Store:
        """Open (or create) the store at ``root`` for ``settings``.

        Raises StoreMismatchError, before touching anything, if the store holds other settings.
        On open, leftovers of a killed writer are cleaned: temp files, orphan shards, and index
        rows whose shard was deleted by the user (those items become missing again).
        """
        root = Path(root)
        wanted = _normalise(settings)
        meta_path = root / "store.json"
        if meta_path.exists():
            cls._check_settings(root, meta_path, wanted)
        elif not create:
            raise FileNotFoundError(f"{root}: no kvstate store here (store.json missing); open it with create=True")
        elif (root / "index.parquet").exists() or (root / "shards").exists():
            raise StoreCorruptError(f"{root}: has index.parquet or shards/ but no store.json; "
                                    "use another --out or delete the folder")
        root.mkdir(parents=True, exist_ok=True)
        with _lock(root):
            if not meta_path.exists():
                write_json(meta_path, indent=2, sort_keys=True, obj={"format": FORMAT, "version": VERSION, "settings": wanted,
                                        "settings_hash": settings_hash(wanted),
                                        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
            else:  # another process may have created it between the check and the lock
                cls._check_settings(root, meta_path, wanted)
            (root / "shards").mkdir(exist_ok=True)
            store = cls(root)
            store._recover()
        return store

    @staticmethod
    def _check_settings(root: Path, meta_path: Path, wanted: dict[str, Any]) -> None:
        try:
            info = json.loads(meta_path.read_text())
        except ValueError as exc:
            raise StoreCorruptError(f"{meta_path}: unreadable store.json ({exc}); use another --out") from None
        if info.get("format") != FORMAT:
            raise StoreCorruptError(f"{meta_path}: not a kvstate store (format {info.get('format')!r}); "
                                    "use another --out")
        if info.get("version") != VERSION:
            raise StoreMismatchError(f"{root}: store format version {info.get('version')} != {VERSION}; "
                                     "use another --out")
        diff = _settings_diff(info.get("settings"), wanted)
        if diff:
            raise StoreMismatchError(
                f"{root} was built with other settings: {'; '.join(diff)} (stored != requested); "
                "use another --out or the same settings")

    # -- properties ---------------------------------------------------------------------------

    @property
    def settings(self) -> dict[str, Any]:
        return self.info["settings"]

    @property
    def settings_hash(self) -> str:
        return self.info["settings_hash"]

    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r}, items={len(self)}, settings_hash={self.settings_hash!r})"

    def key(self, model: str, item_id: str, content: Any) -> str:
        """:func:`item_key` with this store's settings hash."""
        return item_key(model, self.settings_hash, item_id, content)

    def index(self) -> pd.DataFrame:
        """A copy of the index: one row per stored item, in insertion order."""
        return self._index.copy()

    def names(self) -> list[str]:
        """Representation names stored for every item (all items share them)."""
        return list(self._shapes()) if len(self._index) else []

    def missing(self, keys: Iterable[str]) -> list[str]:
        """The keys not stored yet, in the given order (duplicates dropped)."""
        done = set(self._index["item_key"])
        return list(dict.fromkeys(k for k in keys if k not in done))

    # -- writing ------------------------------------------------------------------------------

    def put(self, rows: Sequence[Mapping[str, Any]], arrays: Mapping[str, np.ndarray]) -> str | None:
        """Store one batch as one shard; return its file name (None if every key was already stored).

        ``rows[i]`` needs ``item_key`` (from :meth:`key`) and may hold any scalar metadata (id,
        label, group, split, n_tokens, time_ms, text, ...); ``arrays[name]`` is (len(rows), D),
        stored as float32. Keys already in the store are skipped: same key, same result.
        """
        rows, arrays = self._validate(rows, arrays)
        with _lock(self.root):
            self._index = self._read_index()  # another writer may have added rows
            done = set(self._index["item_key"])
            keep = [i for i, r in enumerate(rows) if r["item_key"] not in done]
            if not keep:
                return None
            rows = [rows[i] for i in keep]
            arrays = {name: a[keep] for name, a in arrays.items()}
            self._check_shapes(arrays)
            keys = [r["item_key"] for r in rows]
            name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:32] + ".safetensors"
            header = {"kvstate": _canonical({"format": SHARD_FORMAT, "version": VERSION,
                                             "settings_hash": self.settings_hash, "keys": keys})}
            atomic_write(self.shard_dir / name, lambda p: st_save(dict(arrays), str(p), metadata=header))
            digest = _sha256_bytes((self.shard_dir / name).read_bytes())
            shapes = _canonical({k: int(a.shape[1]) for k, a in arrays.items()})
            new = pd.DataFrame([{**r, "shard": name, "row": i, "shard_sha256": digest,
                                 "settings_hash": self.settings_hash, "shapes": shapes} for i, r in enumerate(rows)])
            self._write_index(pd.concat([self._index, new], ignore_index=True) if len(self._index) else new)
        return name

    def _validate(self, rows: Sequence[Mapping[str, Any]], arrays: Mapping[str, np.ndarray]
                  ) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        """Rows as dicts and arrays as contiguous (n, D) float32; a clear error for anything else."""
        rows = [dict(r) for r in rows]
        if not rows:
            raise ValueError("put() needs at least one row")
        if not arrays:
            raise ValueError("put() needs at least one array")
        for r in rows:
            if "item_key" not in r:
                raise ValueError("every row needs an 'item_key' (use Store.key(model, id, content))")
            clash = sorted(set(_OWN) & set(r))
            if clash:
                raise ValueError(f"row fields {clash} are reserved by the store")
        keys = [r["item_key"] for r in rows]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate item_key in one put() call")
        out: dict[str, np.ndarray] = {}
        for name, a in arrays.items():
            a = np.ascontiguousarray(a, dtype=np.float32)
            if a.ndim != 2 or a.shape[0] != len(rows):
                raise ValueError(f"array {name!r} has shape {a.shape}; expected ({len(rows)}, D)")
            out[str(name)] = a
        return rows, out

    def _shapes(self) -> dict[str, int]:
        return json.loads(self._index["shapes"].iloc[0])

    def _check_shapes(self, arrays: Mapping[str, np.ndarray]) -> None:
        """All items share names and dims, so ``load`` can stack them."""
        if not len(self._index):
            return
        have = self._shapes()
        got = {k: int(a.shape[1]) for k, a in arrays.items()}
        if got != have:
            raise ValueError(f"arrays {got} do not match the store's {have}: every item needs the same "
                             "representations; use another --out for other representations")

    # -- reading ------------------------------------------------------------------------------

    def load(self, names: Sequence[str] | None = None, keys: Sequence[str] | None = None
             ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
        """Index rows and ``{name: (n, D) float32}`` for ``keys`` (in that order) or all items.

        Every shard read is checked against its recorded sha256 and header first.
        """
        rows = self._select(keys)
        shapes = self._shapes() if len(self._index) else {}
        names = list(shapes) if names is None else list(names)
        unknown = [n for n in names if n not in shapes]
        if unknown and len(self._index):
            raise KeyError(f"unknown representation(s) {unknown}. Available: {', '.join(shapes)}")
        out = {n: np.empty((len(rows), shapes.get(n, 0)), dtype=np.float32) for n in names}
        for shard, group in rows.groupby("shard", sort=True):
            data = self._read_shard(str(shard), group)
            for n in names:
                out[n][group.index.to_numpy()] = data[n][group["row"].to_numpy()]
        return rows.reset_index(drop=True), out

    def _select(self, keys: Sequence[str] | None) -> pd.DataFrame:
        """Index rows in the requested order, positionally indexed 0..n-1."""
        if keys is None:
            return self._index.reset_index(drop=True)
        pos = pd.Series(np.arange(len(self._index)), index=self._index["item_key"])
        absent = [k for k in keys if k not in pos.index]
        if absent:
            raise KeyError(f"{len(absent)} key(s) not in the store (e.g. {absent[0]}); "
                           "compute them first (see Store.missing)")
        return self._index.iloc[pos[list(keys)].to_numpy()].reset_index(drop=True)

    def _read_shard(self, shard: str, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        """Arrays of one shard after checking header, settings hash, sha256 and keys."""
        path = self.shard_dir / shard
        if not path.exists():
            raise StoreCorruptError(f"{path}: shard missing; reopen the store and rerun: "
                                    "only its items are recomputed")
        data = path.read_bytes()
        meta = _read_shard_header(data)
        if meta is None:
            raise StoreCorruptError(f"{path}: not a kvstate store shard (foreign or truncated file); {_FIX}")
        if meta.get("settings_hash") != self.settings_hash:
            raise StoreCorruptError(f"{path}: shard from other settings ({meta.get('settings_hash')} != "
                                    f"{self.settings_hash}); {_FIX}")
        if _sha256_bytes(data) != rows["shard_sha256"].iloc[0]:
            raise StoreCorruptError(f"{path}: checksum mismatch (corrupted or modified); {_FIX}")
        keys = meta.get("keys", [])
        if any(row >= len(keys) or keys[row] != key for key, row in zip(rows["item_key"], rows["row"])):
            raise StoreCorruptError(f"{path}: shard keys do not match the index; {_FIX}")
        return st_load(data)

    # -- index and recovery -------------------------------------------------------------------

    def _read_index(self) -> pd.DataFrame:
        path = self.root / "index.parquet"
        if not path.exists():
            return pd.DataFrame({"item_key": pd.Series(dtype=str), "shard": pd.Series(dtype=str),
                                 "row": pd.Series(dtype="int64")})
        try:
            return pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for bad files
            raise StoreCorruptError(f"{path}: unreadable index ({type(exc).__name__}); delete index.parquet and "
                                    "shards/ and rerun") from None

    def _write_index(self, df: pd.DataFrame) -> None:
        atomic_write(self.root / "index.parquet", lambda p: df.to_parquet(p, index=False))
        self._index = df.reset_index(drop=True)

    def _recover(self) -> None:
        """Remove a killed writer's temp files and orphan shards; forget rows of deleted shards.

        Called under the lock, so no live writer owns any of these files.
        """
        for folder in (self.root, self.shard_dir):
            for tmp in folder.iterdir():
                if _is_temp(tmp.name):
                    tmp.unlink(missing_ok=True)
        indexed = set(self._index["shard"])
        orphans = []
        for path in sorted(self.shard_dir.iterdir()):
            if path.name in indexed:
                continue
            meta = _read_shard_header(path.read_bytes()) if path.is_file() else None
            if meta is None or meta.get("settings_hash") != self.settings_hash:
                raise StoreCorruptError(f"{path}: not a shard of this store (foreign file); delete it and rerun")
            orphans.append(path)
        if len(orphans) > 1 or (orphans and not (self.root / "index.parquet").exists()):
            # one orphan is a killed writer's last shard; more (or no index at all) means the index was lost
            warnings.warn(f"{self.root}: {len(orphans)} shard(s) are not in index.parquet"
                          f"{' (the index is missing)' if not (self.root / 'index.parquet').exists() else ''}; "
                          "they are deleted and their items recomputed", stacklevel=3)
        for path in orphans:
            path.unlink()  # orphan: written, but the writer died before indexing it
        gone = sorted(s for s in indexed if not (self.shard_dir / s).exists())
        if gone:
            lost = int(self._index["shard"].isin(gone).sum())
            warnings.warn(f"{self.root}: {len(gone)} shard(s) deleted; their {lost} item(s) will be recomputed",
                          stacklevel=3)
            self._write_index(self._index[~self._index["shard"].isin(gone)].reset_index(drop=True))


@contextlib.contextmanager
def _lock(root: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``root/.lock`` (released by the kernel if the process dies)."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(root / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
