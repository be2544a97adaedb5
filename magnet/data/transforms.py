"""Image and mask preprocessing as the official pipeline does it."""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


SIDE_MULTIPLE = 32  # the Swin's overall stride: every stage's map holds whole tokens
MAX_ASPECT = 2.0  # with keep_aspect, the longer side is at most this times `size`


def input_shape(height: int, width: int, size: int, keep_aspect: bool = False) -> tuple[int, int]:
    """(h, w) of the model input for an image of (height, width). The official pipeline stretches
    every image to (size, size). With `keep_aspect`, the shorter side becomes `size` and the longer
    keeps the aspect ratio up to MAX_ASPECT times `size` (a longer panorama shrinks as a whole), each
    side rounded to a multiple of SIDE_MULTIPLE."""
    if not keep_aspect:
        return size, size
    scale = min(size / min(height, width), MAX_ASPECT * size / max(height, width))
    h, w = (max(SIDE_MULTIPLE, round(side * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE) for side in (height, width))
    return h, w


def preprocess_image(image: Image.Image, size: int, keep_aspect: bool = False) -> torch.Tensor:
    """RGB PIL image -> normalised (3, h, w) float tensor: bilinear resize to `input_shape` ((size,
    size) unless `keep_aspect`), to_tensor, ImageNet normalisation (the official pipeline)."""
    shape = input_shape(image.height, image.width, size, keep_aspect)
    image = TF.resize(image.convert("RGB"), list(shape), interpolation=TF.InterpolationMode.BILINEAR)
    return TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)


def resize_mask(mask: np.ndarray, size: int, keep_aspect: bool = False) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) mask to `input_shape` ((size, size) unless
    `keep_aspect`), as the official benchmark does."""
    shape = input_shape(*mask.shape, size, keep_aspect)
    pil = Image.fromarray(mask.astype(np.uint8))
    return np.asarray(TF.resize(pil, list(shape), interpolation=TF.InterpolationMode.NEAREST))
