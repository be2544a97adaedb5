"""Decoding object masks given as PNG files, COCO run-length encodings or polygons.

COCO RLE: `{"size": [h, w], "counts": ...}` where counts are alternating run lengths of
0s and 1s (starting with 0s) over the pixels in column-major order. `counts` is either a
list of ints (uncompressed) or a string in COCO's compressed form: each count (from the
fourth on, as a difference to the count two before) written as 5-bit groups, low group
first, each group a character `48 + bits` with 0x20 set while more groups follow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from ..errors import UserError

MaskSpec = str | Path | dict | list  # PNG path | RLE dict | polygon list


class MaskError(UserError):
    """A mask that cannot be decoded; the message says what is wrong."""


class MaskSizeError(MaskError):
    """A mask whose size differs from its image's."""


def decode_mask(spec: MaskSpec, image_size: tuple[int, int], base_dir: str | Path | None = None) -> np.ndarray:
    """Any mask spec -> (h, w) bool mask, True on the object.

    `image_size` is (h, w) of the image the mask belongs to: polygons are drawn at that size,
    PNG and RLE masks must have it (MaskSizeError otherwise). Relative PNG paths are
    resolved against `base_dir`.
    """
    if isinstance(spec, (str, Path)):
        path = Path(spec) if base_dir is None else Path(base_dir) / spec
        mask = read_png_mask(path)
    elif isinstance(spec, dict):
        mask = rle_decode(spec)
    elif isinstance(spec, list):
        return polygons_to_mask(spec, image_size)
    else:
        raise MaskError(f"a mask must be a PNG path, an RLE dict or a polygon list, not {type(spec).__name__}")
    if mask.shape != tuple(image_size):
        raise MaskSizeError(
            f"mask is {mask.shape[0]}x{mask.shape[1]} (h x w) but the image is {image_size[0]}x{image_size[1]}"
        )
    return mask


def read_png_mask(path: Path) -> np.ndarray:
    """PNG (or any PIL-readable) mask file -> (h, w) bool: nonzero in any colour channel is the
    object; an alpha channel is ignored."""
    if not path.is_file():
        raise MaskError(f"mask file {path} does not exist")
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB") if image.mode in ("RGBA", "LA", "PA") else image)
    except OSError as error:
        raise MaskError(f"cannot read mask file {path}: {error}") from error
    return array.any(axis=2) if array.ndim == 3 else array != 0


def rle_decode(rle: dict) -> np.ndarray:
    """COCO RLE dict (compressed string or list counts) -> (h, w) bool mask."""
    try:
        height, width = (int(v) for v in rle["size"])
        counts = rle["counts"]
    except (KeyError, TypeError, ValueError) as error:
        raise MaskError("an RLE mask needs 'size': [h, w] and 'counts'") from error
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = counts_from_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        raise MaskError(f"RLE counts cover {sum(runs)} pixels, expected {height}x{width}={height * width}")
    values = np.arange(len(runs)) % 2 == 1  # runs alternate 0, 1, 0, ...
    flat = np.repeat(values, runs)
    return flat.reshape(width, height).T  # column-major, as COCO stores it


def rle_encode(mask: np.ndarray) -> dict:
    """(h, w) bool mask -> COCO RLE dict with compressed string counts."""
    height, width = mask.shape
    flat = np.asarray(mask, dtype=bool).T.reshape(-1)  # column-major
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs  # counts always start with a run of 0s
    return {"size": [height, width], "counts": counts_to_string(runs)}


def counts_to_string(runs: list[int]) -> str:
    """Run lengths -> COCO's compressed counts string."""
    chars = []
    for i, value in enumerate(runs):
        x = value - runs[i - 2] if i > 2 else value
        more = True
        while more:
            group = x & 0x1F
            x >>= 5  # arithmetic shift: negative differences end at x == -1
            more = x != -1 if group & 0x10 else x != 0
            chars.append(chr(48 + (group | (0x20 if more else 0))))
    return "".join(chars)


def counts_from_string(text: str) -> list[int]:
    """COCO's compressed counts string -> run lengths."""
    runs: list[int] = []
    position = 0
    while position < len(text):
        x, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise MaskError("RLE counts string ends in the middle of a number")
            group = ord(text[position]) - 48
            if not 0 <= group < 64:
                raise MaskError(f"RLE counts string has an invalid character {text[position]!r}")
            x |= (group & 0x1F) << shift
            more = bool(group & 0x20)
            position += 1
            shift += 5
            if not more and group & 0x10:
                x |= -1 << shift  # sign-extend
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def polygons_to_mask(polygons: list[Any], image_size: tuple[int, int]) -> np.ndarray:
    """COCO polygons `[[x1, y1, x2, y2, ...], ...]` -> (h, w) bool mask, filled with
    cv2.fillPoly (coordinates rounded to whole pixels; parts outside the image are clipped).
    Polygons with fewer than three points draw nothing."""
    canvas = np.zeros(image_size, dtype=np.uint8)
    points = []
    for polygon in polygons:
        try:
            xy = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError) as error:
            raise MaskError("a polygon must be a flat list of numbers [x1, y1, x2, y2, ...]") from error
        if len(xy) >= 3:
            points.append(np.round(xy).astype(np.int32))
    if points:
        cv2.fillPoly(canvas, points, 1)
    return canvas.astype(bool)
