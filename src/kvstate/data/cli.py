"""``kvstate data``: list the built-in suites, show items of a suite or a user file, and fetch
the public benchmark files into the data directory.

Dataset text (jailbreaks in particular) is adversarial, so it is always printed with rich markup
escaped and truncated in ``show``. Listings (``data list``, and ``models list`` through
:func:`print_listing`) print as a table, CSV or JSON; a table is never truncated when stdout is not
a terminal.
"""

from __future__ import annotations

import csv
import io
import json
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .confounds import confounds
from .public import data_dir, fetch, present
from .registry import SUITES, _cached, list_suites, load_suite, suite_path

data_app = typer.Typer(help="Labelled prompt suites.", no_args_is_help=True)
MAX_CHARS = 400
FORMATS = ("table", "csv", "json")


def check_format(fmt: str) -> None:
    """--format is one of :data:`FORMATS`: a one-line error otherwise."""
    if fmt not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}; got {fmt!r}")


def _cell(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return "; ".join(map(str, v))
    return "" if v is None else str(v)


def print_listing(fmt: str, records: list[dict], table: Table) -> None:
    """Print a listing as ``table`` (rich; at its full width when stdout is not a terminal, so a pipe
    or a narrow terminal never truncates a cell), ``csv`` (the columns of ``records``) or ``json``
    (a list: one object per row with every column, raw values, NaN as null)."""
    from .._io import dumps

    if fmt == "json":
        typer.echo(dumps(records), nl=False)
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(records[0]) if records else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in records)
        typer.echo(buf.getvalue(), nl=False)
    else:
        piped = not sys.stdout.isatty()
        Console(width=1_000_000 if piped else None, soft_wrap=piped).print(table)


def _fail(message: str) -> None:
    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {escape(message.strip().splitlines()[0])}")
    raise typer.Exit(2)


def _clip(text: str, n: int = MAX_CHARS) -> str:
    text = " ".join(text.split())
    return escape(text if len(text) <= n else text[: n - 1] + "…")


def _num(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:.2f}"


def _stats_cells(stats: dict) -> list[str]:
    flag = {True: "[red]confounded[/red]", False: "", None: "needs replies"}[stats["confounded"]]
    return [_num(stats["balance"]), _num(stats["length_auroc"]), _num(stats["bow_prompt"]),
            _num(stats["bow_prompt_reply"]), flag]


def _cached_stats(name: str, seed: int) -> dict:
    """confounds() of a built suite, cached beside its parquet (the jailbreak fits take a while)."""
    path = suite_path(name).with_suffix(f".stats-s{seed}.json")
    if path.exists() and path.stat().st_mtime >= suite_path(name).stat().st_mtime:
        return json.loads(path.read_text())
    stats = confounds(_cached(name), seed=seed)
    path.write_text(json.dumps({**stats, "labels": {str(k): v for k, v in stats["labels"].items()}}))
    return stats


@data_app.command("list")
def list_cmd(build: bool = typer.Option(True, help="Build suites not yet cached (first run "
                                                   "downloads archives)."),
             stats: bool = typer.Option(True, help="Balance, length AUROC and BoW AUROCs "
                                                   "(prompt; prompt + reply) per suite."),
             seed: int = typer.Option(0, help="Seed of the BoW cross-validation folds."),
             fmt: str = typer.Option("table", "--format", help="table, csv or json (one object per suite)")) -> None:
    """Table of suites: size, labels, balance, length and BoW AUROCs, confound flag, sources.

    balance = share of label 1; BoW = grouped 5-fold logistic regression on hashed word 1-2-grams
    (kvstate.data.bow_auroc); a prompt-only BoW AUROC > 0.8 marks the suite confounded.
    Generation suites have no labels until replies are judged, so they show "needs replies".
    """
    check_format(fmt)
    if seed < 0:
        _fail(f"--seed must be >= 0; got {seed}")
    table = Table()
    records = []
    table.add_column("suite", no_wrap=True)
    table.add_column("n", justify="right")
    table.add_column("labels")
    if stats:
        for col in ("bal", "len", "bow", "bow+r", "flag"):
            table.add_column(col, justify="right")
    for col in ("sources", "description"):
        table.add_column(col)
    for row in list_suites(build=build):
        labels = row["labels"]
        lab = ", ".join(f"{k}: {v}" for k, v in labels.items()) if labels else escape(
            row.get("error", "not built"))
        cells = [escape(row["name"]), "" if row["n"] is None else str(row["n"]), lab]
        rec = {"suite": row["name"], "n": row["n"], "labels": labels, "error": row.get("error")}
        if stats:
            st = None
            if labels and suite_path(row["name"]).exists():
                st = _cached_stats(row["name"], seed)
            cells += _stats_cells(st) if st else [""] * 5
            rec.update({k: (st or {}).get(k) for k in ("balance", "length_auroc", "bow_prompt", "bow_prompt_reply",
                                                       "confounded")})
        table.add_row(*cells, escape(", ".join(row["sources"])), escape(row["description"]))
        records.append({**rec, "sources": list(row["sources"]), "description": row["description"]})
    print_listing(fmt, records, table)
    if fmt == "table":
        _public_table(Console(width=1_000_000 if not sys.stdout.isatty() else None, soft_wrap=not sys.stdout.isatty()))


def _public_table(console: Console) -> None:
    """The data directory and, per public suite, whether its files are there."""
    console.print(f"data directory (KVSTATE_DATA): {escape(str(data_dir()))}")
    table = Table("public suite", "files", "present")
    for name, spec in SUITES.items():
        if spec.files:
            missing = [f for f in spec.files if not present(f)]
            table.add_row(escape(name), escape(", ".join(spec.files)),
                          "yes" if not missing else f"[red]missing {len(missing)}[/red] (kvstate data fetch {escape(name)})")
    console.print(table)


@data_app.command("fetch")
def fetch_cmd(names: list[str] = typer.Argument(..., help="Public suite names (see `kvstate data list`).")) -> None:
    """Download public suites' files into the data directory, each checked against its pinned sha256.

    Files come from raw.githubusercontent.com at pinned commits. Offline, copy them by hand into
    the data directory (KVSTATE_DATA, shown by `kvstate data list`) with the same layout.

    Example: kvstate data fetch xstest got-cities
    """
    public = [n for n, s in SUITES.items() if s.files]
    files: list[str] = []
    for name in names:
        if name not in public:
            _fail(f"{name!r} is not a public suite with data files; choose from {', '.join(public)}")
        files += SUITES[name].files
    try:
        paths = fetch(dict.fromkeys(files))
    except (ConnectionError, ValueError, OSError) as exc:
        _fail(str(exc))
    for path in paths:
        Console().print(f"ok {escape(str(path))}")


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
        if seed < 0:
            raise ValueError(f"--seed must be >= 0; got {seed}")
        s = load_suite(suite, limit=limit, seed=seed)
    except ValueError as exc:
        _fail(str(exc))
    console.print(f"[bold]{escape(s.name)}[/bold]: {len(s)} items, labels {s.label_counts()}, "
                  f"train {len(s.split('train'))} / test {len(s.split('test'))}")
    console.print(escape(s.description))
    st = confounds(s, seed=seed)
    bal, ln, bp, br, flag = _stats_cells(st)
    console.print(f"balance (share of 1) {bal}, length AUROC {ln}, BoW AUROC prompt {bp}, "
                  f"prompt + reply {br}, form {_num(st['bow_form'])} {flag}")
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
