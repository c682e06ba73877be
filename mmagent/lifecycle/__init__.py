"""Keeping an agent current: warm-start updates (update.py), comparing and promoting runs, the
model registry and drift. Deliberately imports nothing: serving imports ``lifecycle.registry`` and
``lifecycle.drift``, which must never pull in training (which ``lifecycle.update`` needs)."""
