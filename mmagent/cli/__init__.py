"""The ``mmagent`` command line: ``main.py`` holds the app and the core commands (fit, train,
evaluate, predict, serve, export, tune, demo); each further area registers its commands from its
own file (``report.py``, ``explain.py``, ``lifecycle.py``, ``drift.py``); ``support.py`` maps
errors to exit codes and reads records and devices."""

from mmagent.cli.main import app, main

__all__ = ["app", "main"]
