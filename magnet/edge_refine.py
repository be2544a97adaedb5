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


def window_sums(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sum of each window of 2r+1 values of x along `dim`, windows clipped at the ends; from one
    cumulative sum, so a wide window costs no more than a narrow one."""
    n = x.shape[dim]
    cumulative = torch.cumsum(x, dim)
    shape = list(x.shape)
    shape[dim] = radius + 1
    before = cumulative.new_zeros(()).expand(shape)
    shape[dim] = radius
    after = cumulative.narrow(dim, n - 1, 1).expand(shape)
    # padded[j] = the sum of the first clamp(j - r, 0, n) values
    padded = torch.cat([before, cumulative, after], dim)
    return padded.narrow(dim, 2 * radius + 1, n) - padded.narrow(dim, 0, n)


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of each (2r+1)^2 window of x (B, C, H, W), windows clipped at the borders."""
    height, width = x.shape[-2:]
    rows = torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device)
    row_counts = (rows + radius + 1).clamp(max=height) - (rows - radius).clamp(min=0)
    col_counts = (cols + radius + 1).clamp(max=width) - (cols - radius).clamp(min=0)
    counts = (row_counts[:, None] * col_counts[None, :]).to(x.dtype)
    return window_sums(window_sums(x, radius, -2), radius, -1) / counts


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
    pairs = [(i, j) for i in range(3) for j in range(i, 3)]
    products = [guide[:, i : i + 1] * guide[:, j : j + 1] for i, j in pairs]
    means = box_mean(torch.cat([guide, source, guide * source, *products], 1), radius)  # one pass
    mean_guide, mean_source, mean_product = means[:, :3], means[:, 3:4], means[:, 4:7]
    covariance = mean_product - mean_guide * mean_source
    variance = {
        f"{i}{j}": means[:, 7 + k] - mean_guide[:, i] * mean_guide[:, j] + (eps if i == j else 0.0)
        for k, (i, j) in enumerate(pairs)
    }
    a = solve_symmetric3(variance, covariance)
    b = mean_source - (a * mean_guide).sum(1, keepdim=True)
    smoothed = box_mean(torch.cat([a, b], 1), radius)
    return smoothed[:, :3], smoothed[:, 3:]


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
