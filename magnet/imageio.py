"""Reading user images safely: any common mode, EXIF orientation applied, bombs refused."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

ImageInput = str | Path | bytes | Image.Image | np.ndarray

MAX_PIXELS = 100_000_000  # refuse larger images outright (decompression bombs)
MAX_SIDE = 4096  # larger photos are downscaled (aspect kept) before anything else


class ImageError(UserError):
    """An input that cannot be used as an image; the message says why and what to do."""


def load_image(source: ImageInput, max_side: int | None = MAX_SIDE) -> Image.Image:
    """Any supported input -> RGB PIL image, oriented as viewers show it (EXIF), longer side at
    most `max_side` (None: kept as it is, as training data needs). 16-bit and float images are
    scaled by their bit depth. Paths/bytes of truncated, non-image or bomb files raise ImageError.
    The one reader of the project: user input and training data alike."""
    if isinstance(source, np.ndarray):
        image = _from_array(source)
    elif isinstance(source, Image.Image):
        image = source
    else:
        image = _open(source)
    image = ImageOps.exif_transpose(image)
    image = _to_rgb(image)
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    return image


def _open(source: str | Path | bytes) -> Image.Image:
    name = "the uploaded bytes" if isinstance(source, bytes) else str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise ImageError(f"image not found: {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            if image.width * image.height > MAX_PIXELS:
                raise ImageError(
                    f"{name} is {image.width}x{image.height} pixels, more than the {MAX_PIXELS // 1_000_000} MP "
                    "this tool accepts; downscale it first"
                )
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(
            f"{name} is too large to decode safely (decompression bomb guard); downscale it first"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image PIL can read (use JPEG, PNG, WebP, BMP, TIFF)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name} could not be decoded ({exc}); the file may be truncated or corrupt") from None
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """Grayscale, palette, alpha, CMYK and 16-bit / float images -> 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        if image.mode == "F" and values.max() <= 1.0:
            top = 1.0
        image = Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    return image.convert("RGB")


def _from_array(array: np.ndarray) -> Image.Image:
    """(H, W), (H, W, 1|3|4) arrays of uint8, uint16 or float in [0, 1] -> PIL image."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or min(array.shape[:2]) < 1:
        raise ImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}")
    if array.dtype == np.uint16:
        array = (array / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        array = (np.clip(np.nan_to_num(array), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    elif array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))
