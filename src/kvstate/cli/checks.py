"""The CLI's checks: one-line errors (:func:`fail`, usage errors too), output locations, model
folders and prompt files, all checked before any model work."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from .._paths import CacheError

try:  # typer >= 0.24 carries its own copy of click
    from typer._click import exceptions as _click_errors
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as _click_errors


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a wrong type, an unknown option) as the same one red line as :func:`fail`."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _click_errors.NoArgsIsHelpError as e:  # `kvstate` or `kvstate models` alone: the help
            typer.echo(e.ctx.get_help())
            sys.exit(e.exit_code)
        except _click_errors.ClickException as e:
            where = f"`{e.ctx.command_path} --help`" if getattr(e, "ctx", None) else "`kvstate --help`"
            err.print(f"[bold red]error:[/] {escape(first_line(e.format_message()))} (see {where})")
            sys.exit(e.exit_code)
        except typer.Abort:
            err.print("[bold red]error:[/] aborted")
            sys.exit(1)
        except (CacheError, OSError) as e:  # the environment (cache, disk, permissions), not the input: one line too
            what = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else first_line(e)
            err.print(f"[bold red]error:[/] {escape(what)}")
            sys.exit(2)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """One red line on stderr and a non-zero exit: bad input never ends in a traceback."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def first_line(e: Exception) -> str:
    """An exception as a one-line error message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def write_error(e: Exception) -> str:
    """What stopped a write, in a few words (safetensors wraps the OS error in its own text)."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    text = first_line(e)
    return "No space left on device" if "StorageFull" in text or "No space" in text else text


def writable_path(path: Path, folder: bool | None = None) -> Path:
    """Fail early (before model work) when the output location cannot be written. Nothing is
    created: the nearest existing folder must accept a new file (tried, then removed)."""
    folder = not path.suffix if folder is None else folder
    if folder and path.exists() and not path.is_dir():
        fail(f"{path} is a file, not a folder; choose another --out")
    if not folder and path.is_dir():
        fail(f"{path} is a folder; pass a file name, e.g. --out {path / 'states.safetensors'}")
    parent = path if folder else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        fail(f"cannot create output directory under {parent}: it is a file; choose another --out")
    from .._io import temp_path

    probe = temp_path(parent / "probe")
    try:
        probe.open("wb").close()
        probe.unlink()
    except OSError as e:
        fail(f"output directory {parent} is not writable ({e.strerror or e}); choose another --out")
    return path


def at_least(option: str, value, low) -> None:
    """A numeric option below its minimum is a one-line error, before any work."""
    if value is not None and value < low:
        fail(f"{option} must be >= {low}; got {value}")


def check_model(model: str) -> Optional[int]:
    """Check a model folder without loading it (config, tokenizer, complete weights); its layer count.

    A registered model not yet built is checked when it is built."""
    from ..models import built_folder, check_model_folder, model_layers

    try:
        folder = built_folder(model)
        return None if folder is None else model_layers(check_model_folder(folder))
    except ValueError as e:
        fail(first_line(e))


def check_spec_layers(layers: list[int], n_layers: Optional[int], folder: Path, model: str) -> None:
    """The monitored layers exist in the model (known from its config.json, before it loads)."""
    bad = [l for l in layers if n_layers and not -n_layers <= l < n_layers]
    if bad:
        fail(f"{folder}: layers {bad} do not exist in {model} ({n_layers} layers); pass the model the monitor was "
             "trained on, or re-create the folder")


def read_prompts(prompts: list[str], file: Optional[Path]) -> list:
    items: list = list(prompts)
    if file is not None:
        if not file.exists():
            fail(f"prompt file {file} does not exist")
        if file.is_dir():
            fail(f"prompt file {file} is a folder; pass a .jsonl or text file")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            fail(f"{file} is not UTF-8 text (byte {e.start}); save it as UTF-8")
        except OSError as e:
            fail(f"cannot read prompt file {file} ({e.strerror or e})")
        if file.suffix == ".jsonl":
            for i, line in enumerate(text.splitlines()):
                if line.strip():
                    try:
                        items.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        fail(f"{file}:{i + 1} is not valid JSON ({e.msg}); write one JSON object per line")
        else:
            items.extend(line for line in text.splitlines() if line.strip())
    if not items:
        fail("no prompts: pass PROMPT arguments or --file prompts.jsonl")
    return items


def check_outputs(out: Path, phi: list[str], force: bool) -> None:
    """--out ends in .safetensors, can be written, and overwrites only kvstate state files (or --force)."""
    if out.is_dir():
        fail(f"{out} is a folder; pass a file name, e.g. --out {out / 'states.safetensors'}")
    if out.suffix != ".safetensors":
        fail(f"--out {out}: states are written as .safetensors; pass a name ending in .safetensors")
    writable_path(out, folder=False)
    paths = [out] if len(phi) == 1 else [out.with_name(f"{out.stem}.{p}{out.suffix}") for p in phi]
    for path in paths:
        if path.is_dir():
            fail(f"{path} is a folder; choose another --out")
        if path.exists() and not force and not _is_state_file(path):
            fail(f"{path} exists and is not a kvstate state file; choose another --out or pass --force")


def _is_state_file(path: Path) -> bool:
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            return "kvstate" in (f.metadata() or {})
    except Exception:  # noqa: BLE001 - any unreadable file is "not a state file"
        return False


def study_config(config: Optional[Path], quick: bool, **flags):
    from dataclasses import fields

    from ..study import StudyConfig

    values: dict = {}
    if config is not None:
        if not config.is_file():
            fail(f"config file {config} {'is a folder' if config.is_dir() else 'does not exist'}; pass a TOML file")
        try:
            import tomllib
        except ImportError:  # Python 3.10
            fail("reading TOML needs Python >= 3.11 or `pip install tomli`")
        try:
            doc = tomllib.loads(config.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            fail(f"{config} is not valid TOML ({e}); see README for the [study] table")
        except (UnicodeDecodeError, OSError) as e:
            fail(f"cannot read {config} as UTF-8 text ({type(e).__name__}); save it as UTF-8 TOML")
        extra = sorted(set(doc) - {"study"})
        if extra:
            fail(f"{config}: unknown table(s) or key(s) {extra} outside [study]; put every setting in a [study] table")
        values = doc.get("study", {})
        if not isinstance(values, dict):
            fail(f"{config}: study must be a [study] table, not a value")
        known = {f.name for f in fields(StudyConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            fail(f"{config}: unknown study settings {unknown}. Available: {', '.join(sorted(known))}")
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        return StudyConfig.quick(**values) if quick else StudyConfig(**values)
    except (ValueError, KeyError) as e:
        fail(f"{config or 'study settings'}: {first_line(e)}")


def split(x: Optional[str]) -> Optional[list[str]]:
    """A comma list; None when the option is not given (an empty string is an empty list: an error later)."""
    return None if x is None else [p.strip() for p in x.split(",") if p.strip()]
