"""The command line: thin typer shells over the library (``kvstate --help``)."""

from .app import app

__all__ = ["app"]
