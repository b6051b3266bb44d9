"""``python -m kvstate.cli`` runs the command line."""

from . import app

app()
