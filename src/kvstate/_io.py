"""Files, written so that nothing already written is lost: one helper each for atomic writes, JSON
with NaN -> null, and reading JSON with a one-line error that names the file.

Every write goes to a temporary file next to the target (same file system), is flushed and fsync-ed,
then ``os.replace``-d onto the target, so a reader sees the old file or the new one, never half of
one, and a killed writer leaves the old file intact. The result gets ordinary permissions (0666
minus the umask), whatever wrote the temporary file: ``tempfile.mkstemp`` and safetensors'
``save_file`` would leave it 0600.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_dir", "atomic_write", "read_json", "to_jsonable", "write_json"]


def _fsync_dir(path: Path) -> None:
    """Persist a rename: the directory entry must reach the disk too."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_path(path: Path) -> Path:
    """A unique hidden name next to ``path`` (what :func:`atomic_write` writes first)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[Path], None], *, fsync: bool = True) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a callable that writes the file it is given) to
    ``path`` atomically; return the path. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as fh:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.chmod(tmp, 0o666 & ~_umask())
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    if fsync:
        _fsync_dir(path.parent)
    return path


def atomic_dir(path: str | os.PathLike, write: Callable[[Path], None], *, keep_others: bool = True) -> Path:
    """Build a folder whole beside ``path`` (``write`` fills the folder it is given), then swap it in.

    A failed ``write`` (a full disk) leaves the old folder as it was and removes the new one; a crash
    between the two renames of the swap leaves the old folder whole under a hidden name, never a
    mixed one. With ``keep_others``, files of the old folder that ``write`` did not write are copied
    over. Errors are raised as they come (``OSError`` for the disk).
    """
    import shutil

    path = Path(path)
    tmp = temp_path(path)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        if keep_others and path.is_dir():
            for f in path.iterdir():
                if not (tmp / f.name).exists() and not f.name.startswith("."):
                    (shutil.copytree if f.is_dir() else shutil.copy2)(f, tmp / f.name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = temp_path(path) if path.exists() else None
    if old is not None:
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old, path)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


def to_jsonable(obj: Any) -> Any:
    """Plain JSON values: numpy -> Python, tuples -> lists, NaN/inf -> None, paths and others -> str."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def dumps(obj: Any, *, indent: int | None = 1, sort_keys: bool = False) -> str:
    """JSON text of ``obj`` after :func:`to_jsonable` (never NaN: strict JSON readers accept it)."""
    return json.dumps(to_jsonable(obj), indent=indent, sort_keys=sort_keys, ensure_ascii=False, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """Atomically write ``obj`` as strict JSON (NaN and inf become null)."""
    return atomic_write(path, dumps(obj, indent=indent, sort_keys=sort_keys))


def read_json(path: str | os.PathLike, what: str = "file") -> Any:
    """Parse a JSON file; any failure is a one-line ``ValueError`` naming the file and what it is."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a folder, expected a {what}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: {what} is not valid JSON ({str(e).splitlines()[0]}); it may be truncated, "
                         "re-create it") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
