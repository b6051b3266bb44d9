"""Folders that travel: the files a representation's settings name (a learned φ, ``learned:<path>``,
and benign reference queries, ``ref_queries``) are copied into the folder and named relative to it.

A study records its learned map as ``runs/<study>/phi/<model>.learned.safetensors``, a path relative
to the study's working directory; a detector or monitor folder that kept that path would load only
from there. :func:`bundle` copies each named file to ``DIR/phi/<file name>`` and returns settings
that say ``learned:phi/<file name>``; :func:`resolve` turns those back into absolute paths inside the
folder when it is loaded, wherever it was copied and whatever the working directory.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from .._io import atomic_write

__all__ = ["PHI_DIR", "bundle", "check_settings_types", "resolve"]

PHI_DIR = "phi"  #: the folder's sub-folder holding the carried files
_LEARNED = "learned:"


def _copy(src: str, folder: Path) -> str:
    """Copy ``src`` to ``folder/phi/<name>`` (unless it is that file already); the relative name."""
    source = Path(src)
    if not source.is_file():
        raise ValueError(f"{src}: the file the capture settings name (a learned phi or reference queries) does not "
                         "exist; run from the study's folder or re-run the study")
    rel = f"{PHI_DIR}/{source.name}"
    target = folder / rel
    if not (target.exists() and target.samefile(source)):
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))
    return rel


def bundle(settings: dict, folder: str | Path) -> dict:
    """Copy every file ``settings`` names into ``folder/phi/``; the settings naming the copies.

    Parameters
    ----------
    settings : dict
        ``RepresentationSettings.to_dict()``.
    folder : path
        The detector or monitor folder being written.

    Returns
    -------
    dict
        ``settings`` with ``learned:<path>`` φs and ``ref_queries`` relative to ``folder``.
    """
    folder, out = Path(folder), dict(settings)
    out["phis"] = [_LEARNED + _copy(p[len(_LEARNED):], folder) if isinstance(p, str) and p.startswith(_LEARNED) else p
                   for p in out.get("phis", [])]
    if out.get("ref_queries"):
        out["ref_queries"] = _copy(out["ref_queries"], folder)
    return out


def _find(name: str, folder: Path, where: Path) -> str:
    inside = folder / name
    if not Path(name).is_absolute() and inside.is_file():
        return str(inside.resolve())
    if Path(name).is_file():  # a folder written before files travelled with it, used from the study's folder
        return str(Path(name).resolve())
    raise ValueError(f"{where}: the file {name!r} its capture settings name (a learned phi or reference queries) is "
                     f"neither in {folder} nor at that path; copy the whole folder, or refit it")


def resolve(settings: dict, folder: str | Path, where: str | Path) -> dict:
    """Inverse of :func:`bundle`: carried files as absolute paths inside ``folder`` (one-line error
    naming ``where`` when a named file is in neither the folder nor at its path)."""
    folder, out = Path(folder), dict(settings)
    out["phis"] = [_LEARNED + _find(p[len(_LEARNED):], folder, Path(where))
                   if isinstance(p, str) and p.startswith(_LEARNED) else p for p in out.get("phis", [])]
    if out.get("ref_queries"):
        out["ref_queries"] = _find(out["ref_queries"], folder, Path(where))
    return out


#: the JSON type of each RepresentationSettings field
_TYPES = {"layers": "ints", "phis": "strs", "ablation_phis": "strs", "sweep": bool, "svd_k": int, "prune_k": int,
          "segments": int, "hier_dim": int, "max_dim": int, "seed": int, "projection": str, "decays": "numbers",
          "compress": "ints", "deltas": bool, "query_states": bool, "ref_queries": str}
_WANT = {"ints": "a list of integers", "strs": "a list of strings", "numbers": "a list of numbers", bool: "true or false",
         int: "an integer", str: "a string"}


def _is(value, kind) -> bool:
    if kind in ("ints", "strs", "numbers"):
        inner = {"ints": int, "strs": str, "numbers": (int, float)}[kind]
        return isinstance(value, list) and all(isinstance(v, inner) and not isinstance(v, bool) for v in value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_settings_types(settings, where: str | Path) -> None:
    """One-line ``ValueError`` unless ``settings`` is an object of known capture settings, each of its type."""
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: settings must be an object of capture settings; got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(_TYPES))
    if unknown:
        raise ValueError(f"{where}: unknown capture settings {unknown}. Known: {', '.join(_TYPES)}")
    for key, value in settings.items():
        if not _is(value, _TYPES[key]):
            raise ValueError(f"{where}: settings.{key} must be {_WANT[_TYPES[key]]}; got {value!r}")
