"""``python -m kvstate`` runs the command line."""

from .cli import app

app()
