"""One self-contained HTML report (plus results.json) from a study's results dict.

The page carries its figures as base64 PNGs and loads nothing: it can be mailed or archived as is.
Prompts, replies, ids and even suite names come from datasets and models and may be adversarial
(jailbreaks), so the template is rendered with autoescaping on, the page has no JavaScript, and a
Content-Security-Policy forbids scripts, so an escaping bug cannot execute anything either.

Every section is optional; what is absent from ``results`` is simply not rendered. The verdict of
each task is computed from its numbers by :func:`verdict` unless the task supplies one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from .._io import atomic_write, dumps, to_jsonable
from .._version import __version__
from .figures import forest_figure, heatmap_figure, hist_figure, lines_figure, roc_figure, transfer_figure
from .verdict import CONFOUND_MARGIN, LENGTH_WARN, _fmt, _num, summary, verdict

__all__ = ["render_html", "write_report"]

EXCERPT_CHARS = 400
MAX_EXAMPLES = 6


# --------------------------------------------------------------------------------------------
# View model: results -> what the template shows
# --------------------------------------------------------------------------------------------

def _excerpt(x: Any, limit: int = EXCERPT_CHARS) -> str:
    """Prompt/reply as plain text, truncated; message lists become 'role: content' lines."""
    if x is None:
        return ""
    if isinstance(x, list):
        x = "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" if isinstance(m, Mapping) else str(m)
                      for m in x)
    elif isinstance(x, Mapping):
        x = _excerpt(x.get("messages"), limit) + ("\n→ " + str(x["response"]) if x.get("response") else "")
    s = str(x)
    return s if len(s) <= limit else s[:limit] + " …"


def _table_rows(table: Sequence[Mapping[str, Any]], supervised: bool) -> list[dict[str, Any]]:
    """Rows of one (un)supervised table, best AUROC first, best kv-state/activation rows marked."""
    rows = [{**r, "css": ""} for r in table if bool(r.get("supervised")) == supervised]
    rows.sort(key=lambda r: -(_num(r.get("auroc")) if _num(r.get("auroc")) is not None else -math.inf))
    for family, css in (("kv-state", "best-kv"), ("activation", "best-act")):
        scored = [i for i, r in enumerate(rows) if r.get("family") == family and _num(r.get("auroc")) is not None]
        if scored:
            rows[scored[0]]["css"] = css  # sorted: the first is the best
    return rows


def _controls(task: Mapping[str, Any]) -> dict[str, Any] | None:
    """Length-only and shuffled-label controls; a warning when length alone is a good detector."""
    lc = dict(task.get("length_control") or {})
    shuffled = _num(task.get("shuffled_label_auroc"))
    if not lc and shuffled is None:
        return None
    length = _num(lc.get("length_auroc"))
    warning = lc.get("warning")
    if not warning and length is not None and length > LENGTH_WARN:
        warning = (f"Length alone separates the classes (AUROC {length:.2f} > {LENGTH_WARN}): "
                   "any representation that encodes length looks good here.")
    return {"length_auroc": length, "warning": warning, "length_matched_n": lc.get("length_matched_n"),
            "shuffled": shuffled}


def _task_view(i: int, key: str, task: Mapping[str, Any]) -> dict[str, Any]:
    table = task.get("table") or []
    curves = task.get("curves") or {}
    sweep = task.get("layer_sweep") or {}
    return {
        "anchor": f"task-{i}",
        "key": key,
        "model": task.get("model"), "suite": task.get("suite"), "n": task.get("n"),
        "label_counts": task.get("label_counts") or {},
        "description": task.get("description"),
        "verdict": task.get("verdict") or verdict(task),
        "unsupervised": _table_rows(table, False),
        "supervised": _table_rows(table, True),
        "has_lm": any(_num(r.get("length_matched_auroc")) is not None for r in table),
        "roc_png": roc_figure(curves) if any(c.get("fpr") for c in curves.values()) else None,
        "hist_png": hist_figure(curves) if any(c.get("scores_normal") or c.get("scores_anomalous")
                                                for c in curves.values()) else None,
        "sweep_png": (lines_figure(sweep["layers"], sweep["series"], "AUROC", "AUROC per layer", chance=0.5)
                      if sweep.get("layers") and sweep.get("series") else None),
        "controls": _controls(task),
        "examples": [{"id": e.get("id"), "label": e.get("label"), "score": e.get("score"),
                      "text": _excerpt(e.get("text")), "response": _excerpt(e.get("response"))}
                     for e in (task.get("examples") or [])[:MAX_EXAMPLES]],
    }


def _generic_table(obj: Any) -> dict[str, Any]:
    """Any JSON-ish mapping as (columns, rows): dict of dicts -> one row per key; else key/value."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Mapping) for v in obj.values()):
        cols = list(dict.fromkeys(c for v in obj.values() for c in v))
        return {"columns": ["", *cols], "rows": [[k, *[v.get(c) for c in cols]] for k, v in obj.items()]}
    if isinstance(obj, Sequence) and obj and all(isinstance(v, Mapping) for v in obj):
        cols = list(dict.fromkeys(c for v in obj for c in v))
        return {"columns": cols, "rows": [[v.get(c) for c in cols] for v in obj]}
    if isinstance(obj, Mapping):
        return {"columns": ["", "value"], "rows": [[k, v] for k, v in obj.items()]}
    return {"columns": ["value"], "rows": [[obj]]}


def _fidelity_view(fid: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for model, f in fid.items():
        layers, series = f.get("layers") or [], f.get("series") or {}
        rows = [[layer, *[(s[j] if j < len(s) else None) for s in series.values()]] for j, layer in enumerate(layers)]
        out.append({"model": model, "columns": ["layer", *series], "rows": rows,
                    "png": lines_figure(layers, series, "relative error", f"{model}: state fidelity")
                    if layers and series else None})
    return out


def _ci_text(ci: Any) -> str:
    """"[lo, hi]" to two digits, or "" when there is no interval."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or _num(ci[0]) is None or _num(ci[1]) is None:
        return ""
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _cell(x: Any) -> str:
    """Table cell text: floats to 3 digits, lists shortened, everything else str()."""
    if isinstance(x, bool) or x is None:
        return "–" if x is None else str(x)
    if isinstance(x, (float, np.floating)):
        return _fmt(x, 3)
    if isinstance(x, (list, tuple)):
        s = ", ".join(_cell(v) for v in x[:8])
        return s + (", …" if len(x) > 8 else "")
    return _excerpt(x, 200)


def _transfer_model(key: str, block: Mapping[str, Any]) -> str:
    """The model a transfer block belongs to: its "model" field, else its key up to ' | '."""
    return str(block.get("model") or key.split(" | ")[0])


def _forest(results: Mapping[str, Any]) -> str | None:
    """Every task's headline at a glance: KV vs activation (held-out choice), controls, transfer."""
    rows = []
    for key, task in (results.get("tasks") or {}).items():
        sel = (task.get("selection_corrected") or {}).get("families") or {}
        for fam, name in (("kv-state", "KV state"), ("activation", "activation")):
            if fam in sel:
                rows.append((key, f"{name} (held-out choice, unsup.)", sel[fam]["auroc"], sel[fam]["lo"], sel[fam]["hi"]))
        bow = next((r for r in task.get("table") or [] if r["representation"].startswith("ctl-bow") and r["supervised"]), None)
        if bow is not None:
            rows.append((key, "control: BoW probe", bow["auroc"], bow["auroc_lo"], bow["auroc_hi"]))
        length = (task.get("length_control") or {}).get("length_auroc")
        if length is not None:
            rows.append((key, "control: length only", length, None, None))
    for key, block in (results.get("heldout") or {}).items():
        for r in block.get("rows") or []:
            if r["supervised"]:
                name = {"kv-state": "KV state", "activation": "activation", "control": "control"}[r["family"]]
                ci = r.get("auroc_ci") or [None, None]
                rows.append((key, f"{name} probe, transfer", r["auroc"], ci[0], ci[1]))
    return forest_figure(rows, "Headline AUROC per task") if rows else None


def _ablation_view(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each option's change against the plain state, and whether any kv option beats it beyond its CI."""
    plain = next((r for r in rows if r["option"] == "plain S/n"), None)
    if plain is None:
        return {"deltas": ["–"] * len(rows), "no_gain": False}
    deltas = ["–" if r["auroc"] is None else f"{r['auroc'] - plain['auroc']:+.2f}" for r in rows]
    gain = any(r["auroc"] is not None and (r.get("auroc_ci") or [None])[0] is not None
               and r["auroc_ci"][0] > plain["auroc"] for r in rows
               if not r["option"].startswith(("activation", "control")) and r is not plain)
    return {"deltas": deltas, "no_gain": not gain}


def _heldout_view(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, block in (results.get("heldout") or {}).items():
        rows = block.get("rows") or []
        out.append({"key": key, "block": block, "rows": rows, "png": transfer_figure(rows, key) if rows else None,
                    **_ablation_view(block.get("ablation") or [])})
    return out


def _monitor_view(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "mon": mon} for key, mon in (results.get("monitor") or {}).items() if "rows" in mon]


def _context(results: Mapping[str, Any]) -> dict[str, Any]:
    meta = dict(results.get("meta") or {})
    tasks = results.get("tasks") or {}
    transfer = results.get("transfer") or {}
    transfer_anchor = {m: f"transfer-{j}" for j, m in enumerate(transfer)}
    views = [{**_task_view(i, k, t),
              "transfer_links": [(key, transfer_anchor[key]) for key, block in transfer.items()
                                 if _transfer_model(key, block) == t.get("model")]}
             for i, (k, t) in enumerate(tasks.items())]
    anchors = {v["key"]: v["anchor"] for v in views}
    return {
        "meta": meta,
        "title": meta.get("title") or "kvstate report",
        "summary": [{**s, "anchor": anchors[s["key"]]} for s in summary(results)],
        "tasks": views,
        "transfer": [{"model": m, "anchor": transfer_anchor[m], "representation": t.get("representation"),
                      "detector": t.get("detector"),
                      "png": heatmap_figure(t["suites"], t["auroc"], f"{m}: fit on row, score on column")}
                     for m, t in transfer.items() if t.get("suites") and t.get("auroc")],
        "monitor": _generic_table({k: v for k, v in results["monitor"].items() if "rows" not in v})
        if any("rows" not in v for v in (results.get("monitor") or {}).values()) else None,
        "monitors": _monitor_view(results),
        "heldout": _heldout_view(results),
        "forest": _forest(results),
        "fidelity": _fidelity_view(results["fidelity"]) if results.get("fidelity") else [],
        "thresholds": {"length_warn": LENGTH_WARN, "confound": CONFOUND_MARGIN},
    }


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def _environment() -> Environment:
    env = Environment(loader=PackageLoader("kvstate.report", "templates"),
                      autoescape=select_autoescape(enabled_extensions=("html",), default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["cell"] = _cell
    env.filters["ci"] = _ci_text
    return env


def render_html(results: Mapping[str, Any]) -> str:
    """The report as one HTML string (figures inline; all data text escaped)."""
    return _environment().get_template("report.html").render(**_context(results))


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/results.json`` and ``out_dir/report.html``; return the report's path.

    results.json holds ``results`` as given (NaN written as null, ``meta.kvstate_version`` and
    ``meta.created`` filled in if absent); verdicts are derived on render, not stored.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = to_jsonable(results)
    data.setdefault("meta", {})
    meta = data["meta"]
    if "kvstate_version" not in meta or "created" not in meta:
        meta.setdefault("kvstate_version", __version__)
        meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    atomic_write(out / "results.json", dumps(data))
    path = out / "report.html"
    atomic_write(path, render_html(data))
    return path
