"""Training augmentations that keep the expression true.

- Horizontal flip mirrors image and mask and swaps left <-> right in the text ("leftmost" <->
  "rightmost", "second from the left" <-> "second from the right"). "right" as an adverb ("right
  behind") is kept; "left" as a verb ("the cake left on the plate") is swapped too.
- Random crop around the target (off by default): it keeps the whole target mask, but can cut
  away the objects that ordinal, relational or location expressions count on.
- Brightness / contrast jitter (off by default, kept small). There is no hue jitter: colour
  words must stay true.
All randomness comes from the torch.Generator passed in, so results are reproducible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageOps

from ..errors import ConfigError


@dataclass
class AugmentConfig:
    flip_prob: float = 0.5
    crop_prob: float = 0.0  # chance of a random crop that keeps the whole target mask
    crop_scale: tuple[float, float] = (0.6, 1.0)  # crop side as a fraction of the image side
    brightness: float = 0.0  # max relative change, e.g. 0.1 for +-10 %
    contrast: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not (0 <= self.flip_prob <= 1 and 0 <= self.crop_prob <= 1):
            raise ConfigError("flip_prob and crop_prob are probabilities: give values in [0, 1]")
        if not 0 < low <= high <= 1:
            raise ConfigError(f"crop_scale {self.crop_scale} must satisfy 0 < low <= high <= 1")
        if not (0 <= self.brightness < 1 and 0 <= self.contrast < 1):
            raise ConfigError("brightness and contrast are relative changes: give values in [0, 1), e.g. 0.1")


# "left"/"right" with an optional suffix: leftmost, left-most, left-hand, leftside ...
_SIDE_WORD = re.compile(r"\b(left|right)(most|-most|hand|-hand|side|-side|ward|wards)?\b", re.IGNORECASE)
# "right" as an adverb ("right behind the car", "right next to") is not a side, unless a
# determiner says it is a noun ("on the right next to the dog")
_RIGHT_ADVERB = re.compile(
    r"\s+(next|behind|above|below|under|beneath|beside|by|near|in front|on top|here|there|"
    r"against|up|down|before|after|now|away)\b",
    re.IGNORECASE,
)
_SIDE_DETERMINER = re.compile(r"\b(the|far|his|her|its|their|your|my|our)\s+$", re.IGNORECASE)


def flip_expression(text: str) -> str:
    """Swap left and right in an expression, keeping case: "the leftmost cup" -> "the rightmost cup"."""

    def swap(match: re.Match) -> str:
        side, suffix = match.group(1), match.group(2) or ""
        if side.lower() == "right" and not suffix and _is_adverb(text, match.start(), match.end()):
            return match.group(0)
        other = "right" if side.lower() == "left" else "left"
        if side.isupper():
            other = other.upper()
        elif side[0].isupper():
            other = other.capitalize()
        return other + suffix

    return _SIDE_WORD.sub(swap, text)


def _is_adverb(text: str, start: int, end: int) -> bool:
    return bool(_RIGHT_ADVERB.match(text, end)) and not _SIDE_DETERMINER.search(text[:start])


def hflip(image: Image.Image, mask: np.ndarray, text: str) -> tuple[Image.Image, np.ndarray, str]:
    """Mirror image (W, H) and mask (H, W) left-right and swap left/right in the text."""
    return ImageOps.mirror(image), mask[:, ::-1].copy(), flip_expression(text)


def crop_around_mask(
    image: Image.Image, mask: np.ndarray, scale: float, generator: torch.Generator
) -> tuple[Image.Image, np.ndarray]:
    """Random crop of about `scale` times the image side that holds the whole mask (H, W);
    the crop grows to the mask's box when that is larger."""
    return crop_to(image, mask, crop_box(mask, scale, generator))


def crop_to(image: Image.Image, array: np.ndarray, box: tuple[int, int, int, int]) -> tuple[Image.Image, np.ndarray]:
    """The image and an (H, W) array of it cropped to box = (top, bottom, left, right)."""
    top, bottom, left, right = box
    return image.crop((left, top, right, bottom)), crop_array(array, box)


def crop_array(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """A copy of the (H, W) array cropped to box = (top, bottom, left, right)."""
    top, bottom, left, right = box
    return array[top:bottom, left:right].copy()


def crop_box(mask: np.ndarray, scale: float, generator: torch.Generator) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the crop `crop_around_mask` takes; the whole image for an empty mask."""
    height, width = mask.shape
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, height, 0, width
    top, crop_h = _crop_range(rows[0], rows[-1] + 1, height, scale, generator)
    left, crop_w = _crop_range(cols[0], cols[-1] + 1, width, scale, generator)
    return top, top + crop_h, left, left + crop_w


def _crop_range(lo: int, hi: int, side: int, scale: float, generator: torch.Generator) -> tuple[int, int]:
    """Start and length of a crop along one axis of length `side` that covers [lo, hi)."""
    length = min(side, max(hi - lo, round(side * scale)))
    first, last = max(0, hi - length), min(lo, side - length)  # start range that covers [lo, hi)
    start = first + int(torch.randint(0, last - first + 1, (1,), generator=generator))
    return start, length


def jitter(image: Image.Image, config: AugmentConfig, generator: torch.Generator) -> Image.Image:
    """Small random brightness and contrast changes (no hue change)."""
    if config.brightness > 0:
        image = TF.adjust_brightness(image, 1 + config.brightness * (2 * _uniform(generator) - 1))
    if config.contrast > 0:
        image = TF.adjust_contrast(image, 1 + config.contrast * (2 * _uniform(generator) - 1))
    return image


def augment(
    image: Image.Image,
    mask: np.ndarray,
    text: str,
    config: AugmentConfig,
    generator: torch.Generator,
    labels: np.ndarray | None = None,
) -> tuple[Image.Image, np.ndarray, str, np.ndarray | None]:
    """Apply the configured augmentations jointly to an RGB image, its (H, W) bool mask and text,
    and the same flip and crop to `labels` (an (H, W) map of every object) when given."""
    if _uniform(generator) < config.flip_prob:
        image, mask, text = hflip(image, mask, text)
        labels = None if labels is None else labels[:, ::-1].copy()
    if _uniform(generator) < config.crop_prob:
        low, high = config.crop_scale
        scale = low + (high - low) * _uniform(generator)
        box = crop_box(mask, scale, generator)
        image, mask = crop_to(image, mask, box)
        labels = None if labels is None else crop_array(labels, box)
    return jitter(image, config, generator), mask, text, labels


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))
