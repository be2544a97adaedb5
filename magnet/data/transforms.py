"""Image and mask preprocessing as the official pipeline does it."""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_image(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> normalised (3, size, size) float tensor: bilinear resize to a square
    (aspect ratio not kept), to_tensor, ImageNet normalisation (the official pipeline)."""
    image = TF.resize(image.convert("RGB"), [size, size], interpolation=TF.InterpolationMode.BILINEAR)
    return TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) mask to (size, size), as the official benchmark does."""
    pil = Image.fromarray(mask.astype(np.uint8))
    return np.asarray(TF.resize(pil, [size, size], interpolation=TF.InterpolationMode.NEAREST))
