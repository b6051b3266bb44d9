"""Report: ``verdict`` (numbers -> sentences), ``figures`` (PNG figures) and ``html`` (one
self-contained, escaped HTML page plus results.json)."""

from .html import render_html, write_report
from .verdict import CONFOUND_MARGIN, LENGTH_WARN, TIE_EPS, Comparison, best_row, compare, summary, verdict

__all__ = ["CONFOUND_MARGIN", "LENGTH_WARN", "TIE_EPS", "Comparison", "best_row", "compare", "render_html", "summary",
           "verdict", "write_report"]
