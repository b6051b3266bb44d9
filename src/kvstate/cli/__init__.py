"""The command line: thin typer shells over the library (``kvstate --help``)."""

from . import benchmark, deploy, monitor, serve  # noqa: F401  (register benchmark, fit, score, train-monitor, monitor, serve)
from .app import app

__all__ = ["app"]
