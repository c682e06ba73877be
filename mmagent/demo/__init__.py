"""Offline demos of the main job: built-in data -> fine-tune zoo encoders -> evaluate -> agent."""

from mmagent.demo.runner import DEMOS, run_demo

__all__ = ["DEMOS", "run_demo"]
