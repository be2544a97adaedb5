"""Pictures of what the model did: mask overlays, probability maps and word-to-region heatmaps.

Pure numpy / PIL / matplotlib (Agg backend, no display needed). Images are (H, W, 3) uint8 RGB
arrays; masks are (H, W) bool; probabilities and heatmaps are (H, W) floats in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

# One colour per expression (matplotlib's tab10, minus grey): distinct and colour-blind friendly.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
COLORMAPS = ("jet", "turbo", "viridis", "magma", "inferno", "plasma", "coolwarm")


def expression_colors(count: int) -> list[str]:
    """`count` hex colours, one per expression, cycling through PALETTE."""
    return [PALETTE[i % len(PALETTE)] for i in range(count)]


def hex_to_rgb(color: str) -> tuple[int, int, int]:
    """'#1f77b4' -> (31, 119, 180)."""
    value = color.lstrip("#")
    if len(value) != 6:
        raise ValueError(f"expected a colour like '#1f77b4', got {color!r}")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def _blend(image: np.ndarray, color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """image (H, W, 3) uint8, color (H, W, 3) or (3,) float, alpha (H, W) in [0, 1] -> uint8."""
    out = image.astype(np.float32) * (1.0 - alpha[..., None]) + color * alpha[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def overlay_masks(
    image: np.ndarray, masks: Sequence[np.ndarray], colors: Sequence[str] | None = None, opacity: float = 0.5
) -> np.ndarray:
    """Paints each (H, W) bool mask over the image in its colour; later masks paint over earlier ones."""
    colors = list(colors) if colors is not None else expression_colors(len(masks))
    if len(colors) < len(masks):
        raise ValueError(f"{len(masks)} masks but only {len(colors)} colours")
    out = np.asarray(image, dtype=np.uint8)
    for mask, color in zip(masks, colors):
        if mask.shape != out.shape[:2]:
            raise ValueError(f"mask {mask.shape} does not match image {out.shape[:2]}")
        alpha = mask.astype(np.float32) * float(opacity)
        out = _blend(out, np.array(hex_to_rgb(color), dtype=np.float32), alpha)
    return out


def colorize(values: np.ndarray, cmap: str = "magma") -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8 through a matplotlib colormap."""
    if cmap not in colormaps:
        raise ValueError(f"unknown colormap {cmap!r}; try one of {', '.join(COLORMAPS)}")
    rgba = colormaps[cmap](np.clip(np.nan_to_num(values), 0.0, 1.0))
    return (rgba[..., :3] * 255.0 + 0.5).astype(np.uint8)


def probability_image(probability: np.ndarray, cmap: str = "magma") -> np.ndarray:
    """A (H, W) probability map as a colour image: dark = background, bright = the referred object."""
    return colorize(probability, cmap)


def normalize(values: np.ndarray) -> np.ndarray:
    """Scales (H, W) values to [0, 1]; a constant map becomes all zeros."""
    values = np.asarray(values, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a (h, w) float map to size = (H, W)."""
    if values.shape == tuple(size):
        return values.astype(np.float32)
    resized = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32)).resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, cmap: str = "jet", opacity: float = 0.5) -> np.ndarray:
    """A token's map over the image: heat (h, w) in [0, 1], resized to the image, coloured with
    `cmap` and blended with `opacity` (0 = photo only, 1 = heatmap only)."""
    heat = resize_map(heat, image.shape[:2])
    return _blend(
        np.asarray(image, dtype=np.uint8),
        colorize(heat, cmap).astype(np.float32),
        np.full(image.shape[:2], float(opacity), dtype=np.float32),
    )


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one fixed-size bitmap font
        return ImageFont.load_default()


def _fit(image: np.ndarray, tile: int) -> Image.Image:
    """The image scaled so that its longer side is `tile` pixels."""
    pil = Image.fromarray(image)
    scale = tile / max(pil.size)
    return pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.BILINEAR)


def heatmap_grid(
    image: np.ndarray,
    heats: Sequence[np.ndarray],
    titles: Sequence[str],
    cmap: str = "jet",
    opacity: float = 0.5,
    columns: int = 4,
    tile: int = 192,
) -> np.ndarray:
    """One heatmap overlay per token, laid out `columns` wide with the token written above each
    tile. Returns (rows * (tile + caption), columns * tile, 3) uint8 (white background)."""
    if len(heats) != len(titles):
        raise ValueError(f"{len(heats)} heatmaps but {len(titles)} titles")
    if not heats:
        raise ValueError("no heatmaps to lay out")
    small = np.asarray(_fit(np.asarray(image, dtype=np.uint8), tile))
    columns = max(1, min(columns, len(heats)))
    rows = math.ceil(len(heats) / columns)
    caption = max(14, tile // 8)
    font = _font(caption - 4)
    sheet = Image.new("RGB", (columns * tile, rows * (tile + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (heat, title) in enumerate(zip(heats, titles)):
        row, col = divmod(i, columns)
        x, y = col * tile, row * (tile + caption)
        draw.text((x + 4, y + 1), title, fill="black", font=font)
        tile_image = Image.fromarray(heatmap_overlay(small, heat, cmap, opacity))
        sheet.paste(tile_image, (x + (tile - tile_image.width) // 2, y + caption + (tile - tile_image.height) // 2))
    return np.asarray(sheet)


def outline_masks(
    image: np.ndarray, masks: Sequence[np.ndarray], colors: Sequence[str], thickness: int = 2
) -> np.ndarray:
    """Draws each (H, W) bool mask's boundary (outer contours and holes) in its colour, opaque."""
    import cv2

    out = np.array(image, dtype=np.uint8, copy=True)
    for mask, color in zip(masks, colors):
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, hex_to_rgb(color), thickness)
    return out


def _shorten(text: str, font: ImageFont.ImageFont, width: float) -> str:
    """`text`, cut with an ellipsis so that it is at most `width` pixels wide in `font`."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def legend_strip(labels: Sequence[str], colors: Sequence[str], width: int, row_height: int = 22) -> np.ndarray:
    """One row per label on white: a swatch of its colour, then the label (cut to fit `width`).
    Returns (len(labels) * row_height + padding, width, 3) uint8."""
    pad = row_height // 4
    font = _font(max(10, row_height - 8))
    strip = Image.new("RGB", (width, len(labels) * row_height + 2 * pad), "white")
    draw = ImageDraw.Draw(strip)
    swatch = row_height - 6
    for i, (label, color) in enumerate(zip(labels, colors)):
        y = pad + i * row_height
        draw.rectangle((pad, y + 3, pad + swatch, y + 3 + swatch), fill=hex_to_rgb(color), outline="black")
        x = 2 * pad + swatch
        text = _shorten(label, font, width - x - pad)
        top, bottom = font.getbbox(text)[1::2] if text else (0, 0)
        draw.text((x, y + (row_height - top - bottom) // 2), text, fill="black", font=font)
    return np.asarray(strip)


def annotated_overlay(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    labels: Sequence[str],
    colors: Sequence[str] | None = None,
    opacity: float = 0.4,
    min_width: int = 320,
) -> np.ndarray:
    """The masks painted over the image (`overlay_masks`), each outlined in its colour, above a
    legend that names each colour's label. The image keeps its pixels at the top left; the
    sheet is at least `min_width` wide so the legend stays readable for small images.
    Returns (H + legend height, max(W, min_width), 3) uint8."""
    if len(labels) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(labels)} labels")
    colors = list(colors) if colors is not None else expression_colors(len(masks))
    height, width = np.asarray(image).shape[:2]
    thickness = max(1, round(min(height, width) / 200))
    painted = outline_masks(overlay_masks(image, masks, colors, opacity), masks, colors, thickness)
    sheet_width = max(width, min_width)
    legend = legend_strip(labels, colors, sheet_width, row_height=max(18, min(36, sheet_width // 25)))
    sheet = np.full((height + legend.shape[0], sheet_width, 3), 255, dtype=np.uint8)
    sheet[:height, :width] = painted
    sheet[height:] = legend
    return sheet
