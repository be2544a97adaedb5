"""Image preprocessing as the official pipeline does it, and mapping outputs back to the photo."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_image(image: Image.Image, size: int) -> torch.Tensor:
    """RGB PIL image -> normalised (3, size, size) float tensor: bilinear resize to a square
    (aspect ratio not kept), to_tensor, ImageNet normalisation (the official pipeline)."""
    image = TF.resize(image.convert("RGB"), [size, size], interpolation=TF.InterpolationMode.BILINEAR)
    return TF.normalize(TF.to_tensor(image), IMAGENET_MEAN, IMAGENET_STD)


def denormalize(images: torch.Tensor) -> torch.Tensor:
    """Inverse of the normalisation: (..., 3, H, W) -> values in [0, 1]."""
    mean = images.new_tensor(IMAGENET_MEAN)[:, None, None]
    std = images.new_tensor(IMAGENET_STD)[:, None, None]
    return (images * std + mean).clamp(0, 1)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) mask to (size, size), as the official benchmark does."""
    pil = Image.fromarray(mask.astype(np.uint8))
    return np.asarray(TF.resize(pil, [size, size], interpolation=TF.InterpolationMode.NEAREST))


def logits_to_probability(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Official post-processing: (B, 1, h, w) mask logits -> (B, 1, H, W) probabilities,
    bilinear upsampling with align_corners=True then sigmoid."""
    return F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=True).sigmoid()
