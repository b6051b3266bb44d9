"""`kvstate benchmark`: the public-benchmark protocol (tasks of sources, leave-one-source-out,
paired verdicts)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app, console
from .checks import check_model, fail
from .checks import first_line as _first_line
from .checks import split as _split

bench_app = typer.Typer(help="Public benchmarks: tasks as sets of sources, leave-one-source-out, paired verdicts.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="benchmark")


def _toml(path: Path) -> dict:
    import tomllib

    if not path.is_file():
        fail(f"config file {path} does not exist; pass a TOML file with a [benchmark] table")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        fail(f"{path} is not valid UTF-8 TOML ({_first_line(e)})")
    extra = sorted(set(doc) - {"benchmark"})
    if extra or not isinstance(doc.get("benchmark", {}), dict):
        fail(f"{path}: put every setting in a [benchmark] table (found {extra or 'benchmark as a value'})")
    return dict(doc.get("benchmark", {}))


@bench_app.command("run")
def run(
    out: Path = typer.Option(..., "--out", "-o", help="output folder (results.json, benchmark.md, store/); re-running resumes"),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="built-in task: harmful-request or truth"),
    models: Optional[str] = typer.Option(None, "--models", "-m", help="comma list of model names or HF folders"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML with a [benchmark] table (and [benchmark.task])"),
    max_per_source: Optional[int] = typer.Option(None, help="cap every source per label (quick runs)"),
    dtype: Optional[str] = typer.Option(None, help="bfloat16 (default) or float32"),
) -> None:
    """Run a task for each model: LOSO choices, thresholds on calibration traffic, paired verdicts per test.

    Examples:
      kvstate benchmark run -t harmful-request -m qwen2.5-0.5b -o runs/bench-harm
      kvstate benchmark run -t truth -m smollm2-135m,qwen2.5-0.5b -o runs/bench-truth
    """
    from dataclasses import fields

    from ..benchmark import TASKS, BenchmarkConfig, run_benchmark, task_from_dict, write_tables

    values = _toml(config) if config else {}
    task_table = values.pop("task", None)
    known = {f.name for f in fields(BenchmarkConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        fail(f"{config}: unknown benchmark settings {unknown}. Available: {', '.join(sorted(known))}")
    flags = {"task": task, "models": _split(models), "max_per_source": max_per_source, "dtype": dtype}
    values.update({k: v for k, v in flags.items() if v is not None})
    try:
        if isinstance(task_table, dict):
            spec = task_from_dict(task_table)
            values["task"] = spec.name
        else:
            name = values.get("task", "harmful-request") if task_table is None else task_table
            if name not in TASKS:
                fail(f"unknown task {name!r}; choose one of {', '.join(TASKS)} or give a [benchmark.task] table")
            spec = TASKS[name]
        cfg = BenchmarkConfig(**values)
    except (ValueError, TypeError) as e:
        fail(f"benchmark settings: {_first_line(e)}")
    for m in cfg.models:
        check_model(m)
    try:
        res = run_benchmark(cfg, out, spec)
    except ValueError as e:
        fail(_first_line(e))
    console.print(f"wrote {write_tables(res, out)}")


@bench_app.command("table")
def table(out: Path = typer.Option(..., "--out", "-o", help="a benchmark output folder")) -> None:
    """Re-render benchmark.md and benchmark.png from results.json (no model)."""
    from .._io import read_json
    from ..benchmark import write_tables

    path = out / "results.json"
    if not path.is_file():
        fail(f"{path} does not exist; run `kvstate benchmark run -o {out}` first")
    try:
        console.print(f"wrote {write_tables(read_json(path), out)}")
    except (ValueError, KeyError) as e:
        fail(f"{path}: {_first_line(e)}")


@bench_app.command("tasks")
def tasks() -> None:
    """The built-in tasks: their sources with roles and their test benchmarks."""
    from ..benchmark import TASKS

    for t in TASKS.values():
        typer.echo(f"{t.name}: {t.description}")
        for s in t.sources:
            roles = ", ".join(f"{r} {f:.0%}" for r, f in s.roles.items())
            typer.echo(f"  {s.suite:<26} {roles}" + (f" (limit {s.limit})" if s.limit else ""))
        for x in t.tests:
            typer.echo(f"  test {x.name}: {' + '.join(x.sources)}")
