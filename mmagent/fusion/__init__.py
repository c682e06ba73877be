"""Fusion modules, built by name: ``concat``, ``gated``, ``cross_attention``."""

from mmagent.fusion import concat, cross_attention, gated  # noqa: F401  (registration)
from mmagent.fusion.base import Fusion, FusionOutput, available_fusions, build_fusion, register_fusion

__all__ = ["Fusion", "FusionOutput", "available_fusions", "build_fusion", "register_fusion"]
