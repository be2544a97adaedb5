"""MagNet Studio: referring image segmentation with MagNet (Mask Grounding, CVPR 2024).

from magnet import load_model, MagNetPredictor
predictor = MagNetPredictor(load_model("checkpoints/magnet-synthetic-cpu.safetensors"))
masks = [p.mask for p in predictor.predict("photo.jpg", ["the dog on the left"])]
"""

from .checkpoint import CheckpointError, load_model, save_checkpoint
from .config import PRESETS, GroundingConfig, MagNetConfig, get_config
from .modeling import MagNet, MagNetOutput
from .predictor import MagNetPredictor, Prediction

__all__ = [
    "CheckpointError",
    "GroundingConfig",
    "MagNet",
    "MagNetConfig",
    "MagNetOutput",
    "MagNetPredictor",
    "PRESETS",
    "Prediction",
    "get_config",
    "load_model",
    "save_checkpoint",
]
