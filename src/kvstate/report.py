"""One self-contained HTML report (plus results.json) from a study's results dict.

The page carries its figures as base64 PNGs and loads nothing: it can be mailed or archived as is.
Prompts, replies, ids and even suite names come from datasets and models and may be adversarial
(jailbreaks), so the template is rendered with autoescaping on, the page has no JavaScript, and a
Content-Security-Policy forbids scripts, so an escaping bug cannot execute anything either.

Every section is optional; what is absent from ``results`` is simply not rendered. The verdict of
each task is computed from its numbers by :func:`verdict` unless the task supplies one.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from jinja2 import Environment, PackageLoader, Undefined, select_autoescape
from matplotlib.figure import Figure

__all__ = ["CONFOUND_MARGIN", "LENGTH_WARN", "TIE_EPS", "Comparison", "best_row", "compare", "render_html",
           "summary", "verdict", "write_report"]

LENGTH_WARN = 0.7       # length-only AUROC above this gets a warning box
CONFOUND_MARGIN = 0.02  # length within this of the best representation: the task is confounded
TIE_EPS = 0.005         # AUROC differences below this are reported as a tie
EXCERPT_CHARS = 400
MAX_EXAMPLES = 6
MAX_CURVES = 4

Outcome = Literal["wins", "loses", "ties", "kv-only", "activation-only", "none"]


# --------------------------------------------------------------------------------------------
# Verdict: numbers -> sentence
# --------------------------------------------------------------------------------------------

def _num(x: Any) -> float | None:
    """A finite float or None (missing, null and NaN all mean 'not available')."""
    if x is None or isinstance(x, (Undefined, bool)):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def best_row(table: Sequence[Mapping[str, Any]], family: str, supervised: bool = False) -> dict[str, Any] | None:
    """Highest-AUROC row of a family (ties: first listed), or None if there is none."""
    rows = [r for r in table if r.get("family") == family and bool(r.get("supervised")) == supervised
            and _num(r.get("auroc")) is not None]
    return dict(max(rows, key=lambda r: _num(r["auroc"]))) if rows else None


@dataclass(frozen=True)
class Comparison:
    """Best unsupervised kv-state row vs best unsupervised activation row, and the length control."""

    kv: dict[str, Any] | None
    act: dict[str, Any] | None
    outcome: Outcome
    overlap: bool | None      # do the 95% CIs overlap? None if a CI is missing
    length_auroc: float | None
    confounded: bool          # length alone does as well as the best representation

    @property
    def best_auroc(self) -> float | None:
        vals = [_num(r["auroc"]) for r in (self.kv, self.act) if r is not None]
        return max(vals) if vals else None


def _ci(row: Mapping[str, Any]) -> tuple[float, float] | None:
    lo, hi = _num(row.get("auroc_lo")), _num(row.get("auroc_hi"))
    return (lo, hi) if lo is not None and hi is not None else None


def compare(task: Mapping[str, Any]) -> Comparison:
    """The comparison :func:`verdict` puts into words (also used by the summary table)."""
    table = task.get("table") or []
    kv, act = best_row(table, "kv-state"), best_row(table, "activation")
    length = _num((task.get("length_control") or {}).get("length_auroc"))
    overlap: bool | None = None
    if kv and act:
        diff = _num(kv["auroc"]) - _num(act["auroc"])
        outcome: Outcome = "ties" if abs(diff) < TIE_EPS else "wins" if diff > 0 else "loses"
        a, b = _ci(kv), _ci(act)
        overlap = None if a is None or b is None else a[0] <= b[1] and b[0] <= a[1]
    else:
        outcome = "kv-only" if kv else "activation-only" if act else "none"
    best = max((_num(r["auroc"]) for r in (kv, act) if r), default=None)
    confounded = length is not None and best is not None and length >= best - CONFOUND_MARGIN
    return Comparison(kv, act, outcome, overlap, length, confounded)


def _fmt(x: Any, digits: int = 2) -> str:
    v = _num(x)
    return "–" if v is None else f"{v:.{digits}f}"


def _describe(row: Mapping[str, Any]) -> str:
    ci = _ci(row)
    ci_txt = f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else " (no CI)"
    return f"({row.get('representation')}, {row.get('detector')}) AUROC {_fmt(row['auroc'])}{ci_txt}"


def _length_sentence(c: Comparison) -> str:
    if c.length_auroc is None:
        return "No length control was run."
    if c.confounded:
        return (f"Length alone reaches {_fmt(c.length_auroc)}, as well as the best representation "
                f"({_fmt(c.best_auroc)}): this task is confounded.")
    if c.length_auroc > LENGTH_WARN:
        return (f"Length alone reaches {_fmt(c.length_auroc)} (> {LENGTH_WARN}): part of the signal may be length; "
                "see the length-matched AUROC.")
    return f"Length alone reaches only {_fmt(c.length_auroc)}."


def verdict(task: Mapping[str, Any]) -> str:
    """One paragraph comparing the best unsupervised KV-state and activation rows, then the length control.

    >>> t = {"table": [{"representation": "S/n", "family": "kv-state", "detector": "knn", "supervised": False,
    ...                 "auroc": 0.9, "auroc_lo": 0.85, "auroc_hi": 0.95},
    ...                {"representation": "resid", "family": "activation", "detector": "knn", "supervised": False,
    ...                 "auroc": 0.7, "auroc_lo": 0.6, "auroc_hi": 0.8}],
    ...      "length_control": {"length_auroc": 0.52}}
    >>> verdict(t)
    'KV state (S/n, knn) AUROC 0.90 [0.85, 0.95] beats the best activation baseline (resid, knn) AUROC 0.70 [0.60, 0.80]; CIs do not overlap. Length alone reaches only 0.52.'
    """
    c = compare(task)
    verbs = {"wins": "beats", "loses": "loses to", "ties": "ties with"}
    if c.outcome in verbs:
        head = f"KV state {_describe(c.kv)} {verbs[c.outcome]} the best activation baseline {_describe(c.act)}"
        if c.overlap is None:
            head += "; a CI is missing, so significance is unknown."
        elif c.overlap:
            head += "; CIs overlap: the difference is not significant at this n."
        else:
            head += "; CIs do not overlap."
    elif c.outcome == "kv-only":
        head = f"KV state {_describe(c.kv)}; no unsupervised activation baseline to compare with."
    elif c.outcome == "activation-only":
        head = f"Best activation baseline {_describe(c.act)}; no unsupervised KV-state result to compare with."
    else:
        head = "No unsupervised KV-state or activation result for this task."
    return " ".join(filter(None, [head, _selection_sentence(task), _length_sentence(c)]))


def _selection_sentence(task: Mapping[str, Any]) -> str:
    """The best-of-many comparison again, with the choice made on other items than the score."""
    sel = task.get("selection_corrected") or {}
    fams = sel.get("families") or {}
    kv, act = fams.get("kv-state"), fams.get("activation")
    if not (kv and act):
        return ""
    ahead = ((sel.get("wins") or {}).get("kv-state") or {}).get("activation")
    return (f"Chosen on half the groups and scored on the other half ({sel.get('n_repeats')} random halvings), "
            f"the best KV state reaches {_fmt(kv['auroc'])} [{_fmt(kv['lo'])}, {_fmt(kv['hi'])}] and the best "
            f"activation {_fmt(act['auroc'])} [{_fmt(act['lo'])}, {_fmt(act['hi'])}]"
            + (f"; KV state is ahead in {ahead:.0%} of the halves." if ahead is not None else "."))


def summary(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per task: best kv-state vs best activation vs length, and who wins (the top table)."""
    out = []
    for key, task in (results.get("tasks") or {}).items():
        c = compare(task)
        if c.confounded:
            winner = "confounded (length)"
        elif c.outcome in ("wins", "loses", "ties"):
            side = {"wins": "KV state", "loses": "activation", "ties": "tie"}[c.outcome]
            winner = side if side == "tie" or c.overlap is False else f"{side} (CIs overlap)"
        else:
            winner = "–"
        sel = (task.get("selection_corrected") or {}).get("families") or {}
        out.append({"key": key, "n": task.get("n"), "kv": c.kv, "act": c.act, "length_auroc": c.length_auroc,
                    "winner": winner, "sel_kv": sel.get("kv-state"), "sel_act": sel.get("activation")})
    return out


# --------------------------------------------------------------------------------------------
# Figures (matplotlib Figure objects, no pyplot: no global state, no GUI backend)
# --------------------------------------------------------------------------------------------

def _label(text: Any, limit: int = 60) -> str:
    """Figure text from data: truncated, and '$' escaped so mathtext never parses it."""
    s = str(text)
    s = s if len(s) <= limit else s[:limit - 1] + "…"
    return s.replace("$", r"\$")


def _curve_label(key: str) -> str:
    """'<representation>|<detector>' -> 'representation, detector' (representations may contain '|')."""
    return ", ".join(key.rsplit("|", 1))


def _png(fig: Figure) -> str:
    """Figure -> base64 PNG (metadata stripped so equal figures give equal bytes)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _roc_figure(curves: Mapping[str, Mapping[str, Any]]) -> str:
    fig = Figure(figsize=(5, 4.2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
    for name, c in list(curves.items())[:MAX_CURVES]:
        if c.get("fpr") and c.get("tpr"):
            ax.plot(c["fpr"], c["tpr"], lw=1.6, label=_label(_curve_label(name)))
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01), title="ROC")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def _hist_figure(curves: Mapping[str, Mapping[str, Any]]) -> str:
    items = [(k, c) for k, c in curves.items() if c.get("scores_normal") or c.get("scores_anomalous")][:MAX_CURVES]
    cols = min(2, len(items))
    rows = math.ceil(len(items) / cols)
    fig = Figure(figsize=(5 * cols, 2.8 * rows))
    for i, (name, c) in enumerate(items):
        ax = fig.add_subplot(rows, cols, i + 1)
        normal = np.asarray(c.get("scores_normal") or [], float)
        anom = np.asarray(c.get("scores_anomalous") or [], float)
        both = np.concatenate([normal, anom])
        both = both[np.isfinite(both)]
        bins = np.histogram_bin_edges(both, bins=30) if both.size else 10
        ax.hist(normal, bins=bins, alpha=0.6, density=True, label="normal (0)", color="#4477aa")
        ax.hist(anom, bins=bins, alpha=0.6, density=True, label="anomalous (1)", color="#cc6677")
        ax.set_title(_label(_curve_label(name)), fontsize=9)
        ax.set_xlabel("score (higher = more anomalous)", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _lines_figure(x: Sequence[Any], series: Mapping[str, Sequence[Any]], ylabel: str, title: str,
                  chance: float | None = None) -> str:
    fig = Figure(figsize=(6, 3.6))
    ax = fig.add_subplot()
    for name, ys in series.items():
        k = min(len(x), len(ys))
        ax.plot(list(x)[:k], [_num(y) if _num(y) is not None else np.nan for y in list(ys)[:k]], marker="o", ms=3,
                label=_label(name))
    if chance is not None:
        ax.axhline(chance, ls="--", c="0.6", lw=1)
    ax.set(xlabel="layer", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)
    return _png(fig)


def _heatmap_figure(suites: Sequence[str], auroc: Sequence[Sequence[Any]], title: str) -> str:
    m = np.array([[_num(v) if _num(v) is not None else np.nan for v in row] for row in auroc], float)
    m = np.atleast_2d(m)
    k = max(m.shape)
    fig = Figure(figsize=(1.2 * k + 2.5, 1.0 * k + 1.8))
    ax = fig.add_subplot()
    im = ax.imshow(m, vmin=0.3, vmax=1.0, cmap="viridis")
    labels = [_label(s, 24) for s in suites] + ["?"] * k
    ax.set_xticks(range(m.shape[1]), labels[:m.shape[1]], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(m.shape[0]), labels[:m.shape[0]], fontsize=8)
    ax.set(xlabel="scored on", ylabel="fit on", title=_label(title, 70))
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] < 0.7 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="AUROC")
    return _png(fig)


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
        "roc_png": _roc_figure(curves) if any(c.get("fpr") for c in curves.values()) else None,
        "hist_png": _hist_figure(curves) if any(c.get("scores_normal") or c.get("scores_anomalous")
                                                for c in curves.values()) else None,
        "sweep_png": (_lines_figure(sweep["layers"], sweep["series"], "AUROC", "AUROC per layer", chance=0.5)
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
                    "png": _lines_figure(layers, series, "relative error", f"{model}: state fidelity")
                    if layers and series else None})
    return out


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
                      "png": _heatmap_figure(t["suites"], t["auroc"], f"{m}: fit on row, score on column")}
                     for m, t in transfer.items() if t.get("suites") and t.get("auroc")],
        "monitor": _generic_table(results["monitor"]) if results.get("monitor") else None,
        "fidelity": _fidelity_view(results["fidelity"]) if results.get("fidelity") else [],
        "thresholds": {"length_warn": LENGTH_WARN, "confound": CONFOUND_MARGIN},
    }


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def _environment() -> Environment:
    env = Environment(loader=PackageLoader("kvstate", "templates"),
                      autoescape=select_autoescape(enabled_extensions=("html",), default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["cell"] = _cell
    return env


def render_html(results: Mapping[str, Any]) -> str:
    """The report as one HTML string (figures inline; all data text escaped)."""
    return _environment().get_template("report.html").render(**_context(results))


def _jsonable(obj: Any) -> Any:
    """Plain JSON: numpy -> Python, tuples -> lists, NaN/inf -> null, paths -> str."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def _write_text(path: Path, text: str) -> None:
    """Atomic: a reader never sees half a report."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_report(results: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``out_dir/results.json`` and ``out_dir/report.html``; return the report's path.

    results.json holds ``results`` as given (NaN written as null, ``meta.kvstate_version`` and
    ``meta.created`` filled in if absent); verdicts are derived on render, not stored.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = _jsonable(results)
    data.setdefault("meta", {})
    meta = data["meta"]
    if "kvstate_version" not in meta or "created" not in meta:
        from . import __version__

        meta.setdefault("kvstate_version", __version__)
        meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    _write_text(out / "results.json", json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False) + "\n")
    path = out / "report.html"
    _write_text(path, render_html(data))
    return path
