"""``python -m kvstate.cli`` runs the command line."""

from .app import app

app()
