"""Edge refinement: snaps a mask's probability map to the colour edges of its image with a guided
filter (He, Sun and Tang, "Guided Image Filtering", 2010/2013), in its fast form (He and Sun, 2015):
the filter's linear coefficients are fitted at the model's input size and applied to the photo at
its own size, so the mask's edges follow the photo's edges instead of the 4-pixel cells of the
model's mask logits.

Opt-in per checkpoint (`MagNetConfig.edge_refine_radius`, 0 = off, the official pipeline) and per
call (the predictor's and `evaluate`'s switches). Measured on the default checkpoint in the README
("Evaluation")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
from .modeling import resize_probabilities

DEFAULT_EPS = 1e-3  # regularisation of the filter: colour variance (in [0, 1]^2) treated as an edge


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of each (2r+1)^2 window of x (B, C, H, W), windows clipped at the borders; separable,
    so it costs O(r) per pixel."""
    side = 2 * radius + 1
    rows = F.avg_pool2d(x, (side, 1), stride=1, padding=(radius, 0), count_include_pad=False)
    return F.avg_pool2d(rows, (1, side), stride=1, padding=(0, radius), count_include_pad=False)


def solve_symmetric3(matrix: dict[str, torch.Tensor], rhs: torch.Tensor) -> torch.Tensor:
    """Per-pixel solution of a symmetric 3 x 3 system by cofactors (elementwise, so fast for the
    millions of tiny systems of one filter). matrix: the six entries "00" "01" "02" "11" "12"
    "22", each (B, H, W); rhs (B, 3, H, W)."""
    m00, m01, m02, m11, m12, m22 = (matrix[k] for k in ("00", "01", "02", "11", "12", "22"))
    c00, c01, c02 = m11 * m22 - m12 * m12, m02 * m12 - m01 * m22, m01 * m12 - m02 * m11
    c11, c12, c22 = m00 * m22 - m02 * m02, m01 * m02 - m00 * m12, m00 * m11 - m01 * m01
    det = m00 * c00 + m01 * c01 + m02 * c02
    r0, r1, r2 = rhs.unbind(1)
    return (
        torch.stack([c00 * r0 + c01 * r1 + c02 * r2, c01 * r0 + c11 * r1 + c12 * r2, c02 * r0 + c12 * r1 + c22 * r2], 1)
        / det[:, None]
    )


def guided_coefficients(
    guide: torch.Tensor, source: torch.Tensor, radius: int, eps: float = DEFAULT_EPS
) -> tuple[torch.Tensor, torch.Tensor]:
    """The colour guided filter's smoothed coefficients (a (B, 3, H, W), b (B, 1, H, W)) such that
    the filtered source is (a * guide).sum(1) + b; guide (B, 3, H, W) in [0, 1], source (B, 1, H, W)."""
    mean_guide, mean_source = box_mean(guide, radius), box_mean(source, radius)
    covariance = box_mean(guide * source, radius) - mean_guide * mean_source
    variance = {
        f"{i}{j}": box_mean(guide[:, i : i + 1] * guide[:, j : j + 1], radius)[:, 0]
        - mean_guide[:, i] * mean_guide[:, j]
        + (eps if i == j else 0.0)
        for i in range(3)
        for j in range(i, 3)
    }
    a = solve_symmetric3(variance, covariance)
    b = mean_source - (a * mean_guide).sum(1, keepdim=True)
    return box_mean(a, radius), box_mean(b, radius)


def unnormalise(pixels: torch.Tensor) -> torch.Tensor:
    """The model's ImageNet-normalised input (B, 3, h, w) back to RGB in [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=pixels.device, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels * std + mean).clamp(0, 1)


def refine_probabilities(
    prob: torch.Tensor,
    pixels: torch.Tensor,
    radius: int,
    photo: torch.Tensor | None = None,
    eps: float = DEFAULT_EPS,
) -> torch.Tensor:
    """Edge-refined mask probabilities, clamped to [0, 1]. prob (B, 1, h, w) at the model's input
    size, pixels (B or 1, 3, h, w) the model's normalised input, radius in input pixels. Without
    `photo` the result is at the input size; with `photo` ((1 or B, 3, H, W) RGB in [0, 1]) it is at
    the photo's size: the coefficients are fitted at the input size, upsampled and applied to the
    photo one colour channel at a time (a 12-megapixel photo needs a few hundred MB, not GBs)."""
    guide = unnormalise(pixels.float()).expand(prob.shape[0], -1, -1, -1)
    a, b = guided_coefficients(guide, prob.float(), radius, eps)
    if photo is None:
        return ((a * guide).sum(1, keepdim=True) + b).clamp(0, 1)
    size = tuple(photo.shape[-2:])
    refined = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
    for channel in range(3):
        weight = F.interpolate(a[:, channel : channel + 1], size=size, mode="bilinear", align_corners=False)
        refined += weight * photo[:, channel : channel + 1].float()
    return refined.clamp_(0, 1)


def to_image_size(
    prob: torch.Tensor,
    pixels: torch.Tensor,
    size: tuple[int, int],
    radius: int = 0,
    photo: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mask probabilities (B, 1, h, w) at the input size -> (B, 1, H, W) at the image's size
    `size`: with radius > 0 refined against `photo` (RGB in [0, 1] at that size), else bilinearly
    resized as the official post-processing does."""
    if radius <= 0:
        return resize_probabilities(prob, size)
    if photo is None or tuple(photo.shape[-2:]) != tuple(size):
        raise ValueError(f"edge refinement at {tuple(size)} needs the photo at that size")
    return refine_probabilities(prob, pixels, radius, photo)


def photo_tensor(image: Image.Image, device: torch.device | str | None = None) -> torch.Tensor:
    """A PIL image as the (1, 3, H, W) RGB tensor in [0, 1] that refinement at its size reads."""
    return TF.to_tensor(image.convert("RGB"))[None].to(device)
