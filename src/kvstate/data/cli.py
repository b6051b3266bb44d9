"""``kvstate data``: list the built-in suites and show items of a suite or a user file.

Dataset text (jailbreaks in particular) is adversarial, so it is always printed with rich markup
escaped and truncated.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .registry import list_suites, load_suite

data_app = typer.Typer(help="Labelled prompt suites.", no_args_is_help=True)
MAX_CHARS = 400


def _clip(text: str, n: int = MAX_CHARS) -> str:
    text = " ".join(text.split())
    return escape(text if len(text) <= n else text[: n - 1] + "…")


@data_app.command("list")
def list_cmd(build: bool = typer.Option(True, help="Build suites not yet cached (first run "
                                                   "downloads archives).")) -> None:
    """Table of suites: size, label counts, source packages."""
    table = Table()
    table.add_column("suite", no_wrap=True)
    table.add_column("n", justify="right")
    for col in ("labels", "sources", "description"):
        table.add_column(col)
    for row in list_suites(build=build):
        labels = row["labels"]
        lab = ", ".join(f"{k}: {v}" for k, v in labels.items()) if labels else escape(
            row.get("error", "not built"))
        table.add_row(escape(row["name"]), "" if row["n"] is None else str(row["n"]), lab,
                      escape(", ".join(row["sources"])), escape(row["description"]))
    Console().print(table)


@data_app.command("show")
def show_cmd(suite: str = typer.Argument(..., help="Suite name or .jsonl/.csv/.parquet file."),
             n: int = typer.Option(5, "--n", help="Items to show."),
             limit: int | None = typer.Option(None, help="Cap the suite first (whole groups)."),
             seed: int = typer.Option(0, help="Seed for splits and the cap.")) -> None:
    """Print a few items of a suite with labels, splits and provenance."""
    console = Console(soft_wrap=True)
    try:
        if n < 0:
            raise ValueError(f"--n must be >= 0; got {n}")
        s = load_suite(suite, limit=limit, seed=seed)
    except ValueError as exc:
        Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(str(exc).strip().splitlines()[0])}")
        raise typer.Exit(2) from None
    console.print(f"[bold]{escape(s.name)}[/bold]: {len(s)} items, labels {s.label_counts()}, "
                  f"train {len(s.split('train'))} / test {len(s.split('test'))}")
    console.print(escape(s.description))
    if s.generation:
        console.print(f"generation: {escape(str(s.generation))}")
    for it in s.items[:n]:
        console.print(f"\n[bold]{escape(it.id)}[/bold] label={it.label} split={it.split} "
                      f"group={escape(it.group)} source={escape(it.source)}")
        for m in it.messages:
            console.print(f"  [cyan]{m['role']}[/cyan]: {_clip(m['content'])}")
        if it.response is not None:
            console.print(f"  [green]response[/green]: {_clip(it.response)}")
        if it.meta:
            console.print(f"  meta: {_clip(str(it.meta), 200)}")
    console.print("\nsources: " + escape("; ".join(
        f"{p['package']}=={p['version']}:{p['path']} ({p['licence']}, n={p['n_used']})"
        for p in s.provenance)))
