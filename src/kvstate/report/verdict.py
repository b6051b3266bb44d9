"""Verdicts: a task's numbers -> which family wins, whether the CIs overlap, whether length alone
does as well, and the sentence the report prints."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jinja2 import Undefined

__all__ = ["CONFOUND_MARGIN", "LENGTH_WARN", "TIE_EPS", "Comparison", "best_row", "compare", "summary", "verdict"]

LENGTH_WARN = 0.7       # length-only AUROC above this gets a warning box
CONFOUND_MARGIN = 0.02  # length within this of the best representation: the task is confounded
TIE_EPS = 0.005         # AUROC differences below this are reported as a tie

Outcome = Literal["wins", "loses", "ties", "kv-only", "activation-only", "none"]


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
