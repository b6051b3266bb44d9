"""Where kvstate keeps converted models, downloaded archives and built suites."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of kvstate's cache: ``$KVSTATE_CACHE`` or ``~/.cache/kvstate``."""
    root = os.environ.get("KVSTATE_CACHE") or Path.home() / ".cache" / "kvstate"
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path
