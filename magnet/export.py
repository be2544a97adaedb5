"""Writing predictions to disk: one mask PNG per expression and an overlay image."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from .imageio import ImageInput, load_image
from .predictor import Prediction

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe version of an expression."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:limit].rstrip("-") or "expression"


def overlay(image: Image.Image, masks: list[np.ndarray], opacity: float = 0.5) -> Image.Image:
    """Blends one palette colour per mask over the image (later masks on top)."""
    canvas = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for k, mask in enumerate(masks):
        colour = np.array(PALETTE[k % len(PALETTE)], dtype=np.float32)
        canvas[mask] = (1 - opacity) * canvas[mask] + opacity * colour
    return Image.fromarray(canvas.round().astype(np.uint8))


def save_prediction_files(image: ImageInput, predictions: list[Prediction], out_dir: str | Path) -> list[Path]:
    """Writes `NN-<expression>.png` masks (0/255, the image's size) and `overlay.png`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k, p in enumerate(predictions):
        path = out / f"{k + 1:02d}-{slug(p.expression)}.png"
        Image.fromarray(p.mask.astype(np.uint8) * 255).save(path)
        written.append(path)
    path = out / "overlay.png"
    overlay(load_image(image), [p.mask for p in predictions]).save(path)
    written.append(path)
    return written
