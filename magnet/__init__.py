"""MagNet Studio: referring image segmentation with MagNet (Mask Grounding, CVPR 2024)."""
from .config import GroundingConfig, MagNetConfig, PRESETS, get_config

__all__ = ["GroundingConfig", "MagNetConfig", "PRESETS", "get_config"]
