"""MagNet modules, split by role: backbone (Swin), text (BERT), fusion, head, grounding."""
from .magnet import MagNet, MagNetOutput

__all__ = ["MagNet", "MagNetOutput"]
