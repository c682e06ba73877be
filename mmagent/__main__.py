"""``python -m mmagent ...`` (also what ``accelerate launch -m mmagent train ...`` runs)."""

from mmagent.cli import app

app()
