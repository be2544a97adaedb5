"""Writing predictions to disk: one mask PNG per expression (and an overlay for the CLI)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from PIL import Image

from .imageio import ImageInput, load_image
from .predictor import Prediction
from .visualize import overlay_masks


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe version of an expression."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:limit].rstrip("-") or "expression"


def write_mask_pngs(masks: list[np.ndarray], expressions: list[str], directory: Path) -> list[Path]:
    """`mask_NN_<expression>.png` per mask: 0 = background, 255 = object, the image's size."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (mask, expression) in enumerate(zip(masks, expressions)):
        path = directory / f"mask_{i + 1:02d}_{slug(expression)}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        paths.append(path)
    return paths


def save_prediction_files(image: ImageInput, predictions: list[Prediction], out_dir: str | Path) -> list[Path]:
    """The CLI's output: the mask PNGs and `overlay.png` (one colour per expression)."""
    out = Path(out_dir)
    written = write_mask_pngs([p.mask for p in predictions], [p.expression for p in predictions], out)
    path = out / "overlay.png"
    Image.fromarray(overlay_masks(np.asarray(load_image(image)), [p.mask for p in predictions])).save(path)
    return written + [path]
