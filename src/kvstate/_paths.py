"""Where kvstate keeps converted models, downloaded archives and built suites."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CacheError", "cache_dir"]


class CacheError(RuntimeError):
    """The cache cannot serve a request: ``KVSTATE_CACHE`` is a file, cannot be created or written,
    or lacks an archive that cannot be downloaded (no network). Its message is one line with the fix."""


def cache_dir() -> Path:
    """Root of kvstate's cache: ``$KVSTATE_CACHE`` or ``~/.cache/kvstate`` (created if missing).

    Raises
    ------
    CacheError
        When the root is a file or cannot be created (one line naming it and the fix).
    """
    env = os.environ.get("KVSTATE_CACHE")
    path = Path(env or Path.home() / ".cache" / "kvstate").expanduser()
    where = f"KVSTATE_CACHE={path}" if env else f"the kvstate cache {path}"
    if path.exists() and not path.is_dir():
        raise CacheError(f"{where} is a file, not a folder; point KVSTATE_CACHE at a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CacheError(f"cannot create {where} ({e.strerror or e}); point KVSTATE_CACHE at a writable folder") from None
    return path


def cache_write_error(path: Path, e: OSError) -> CacheError:
    """A failed write under the cache as one line: where, why, and the fix."""
    return CacheError(f"cannot write to the kvstate cache at {path} ({e.strerror or e}); point KVSTATE_CACHE at a "
                      "writable folder with free space")
