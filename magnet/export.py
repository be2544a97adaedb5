"""Writing predictions to disk: mask PNGs, COCO RLE, polygons, COCO-style results and overlays.

Formats (`FORMATS`), per image:
- png: `mask_NN_<expression>.png`, 0 = background, 255 = object, the image's size;
- rle: `mask_NN_<expression>.json`, one COCO-style entry (below) whose segmentation is a COCO RLE
  `{"size": [h, w], "counts": "..."}` with compressed string counts (column-major, what
  pycocotools reads; encoded by `magnet.data.masks.rle_encode`);
- polygon: the same entry with segmentation `[[x1, y1, x2, y2, ...], ...]`, one polygon per outer
  contour (the boundary pixels' coordinates), plus `"size": [h, w]`;
- coco: nothing per image; one `results.json` for the whole run, a list of entries.

An entry: `{"image_id", "file_name", "expression", "segmentation", "score", "bbox": [x, y, w, h],
"area"}` (score = the highest pixel probability; bbox and area in pixels, as COCO counts them).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import cv2
import numpy as np
from PIL import Image

from .data.masks import rle_encode
from .errors import ConfigError
from .predictor import Prediction
from .visualize import annotated_overlay

FORMATS = ("png", "rle", "polygon", "coco")
RESULTS_JSON = "results.json"


def slug(text: str, limit: int = 40) -> str:
    """A file-name-safe version of an expression."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:limit].rstrip("-") or "expression"


def mask_stem(index: int, expression: str) -> str:
    """`mask_NN_<expression>` for the index-th (0-based) expression: distinct for repeats."""
    return f"mask_{index + 1:02d}_{slug(expression)}"


def write_mask_pngs(masks: list[np.ndarray], expressions: list[str], directory: Path) -> list[Path]:
    """`mask_NN_<expression>.png` per mask: 0 = background, 255 = object, the image's size."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (mask, expression) in enumerate(zip(masks, expressions)):
        path = directory / f"{mask_stem(i, expression)}.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(path)
        paths.append(path)
    return paths


def mask_bbox(mask: np.ndarray) -> list[int]:
    """(H, W) bool mask -> COCO box [x, y, width, height] around its pixels; [0, 0, 0, 0] when empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def mask_polygons(mask: np.ndarray) -> list[list[int]]:
    """(H, W) bool mask -> COCO polygons `[[x1, y1, x2, y2, ...], ...]`, one per outer contour
    (holes are not represented). Vertices are boundary pixel coordinates, so filling the polygons
    (`magnet.data.masks.polygons_to_mask`) gives the mask back; specks of fewer than three
    boundary points are left out, as a COCO polygon needs three."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [contour.reshape(-1).tolist() for contour in contours if len(contour) >= 3]


def coco_entry(
    mask: np.ndarray,
    expression: str,
    score: float | None,
    image_id: int | str | None,
    file_name: str | None,
    segmentation: str = "rle",
) -> dict[str, Any]:
    """One COCO-style result for an (H, W) bool mask; segmentation "rle" or "polygon"."""
    if segmentation == "rle":
        encoded: Any = rle_encode(mask)
    elif segmentation == "polygon":
        encoded = mask_polygons(mask)
    else:
        raise ConfigError(f"segmentation must be 'rle' or 'polygon', not {segmentation!r}")
    entry = {
        "image_id": image_id,
        "file_name": file_name,
        "expression": expression,
        "segmentation": encoded,
        "score": None if score is None else round(float(score), 4),
        "bbox": mask_bbox(mask),
        "area": int(np.count_nonzero(mask)),
    }
    if segmentation == "polygon":
        entry["size"] = list(mask.shape)
    return entry


def write_results_json(
    masks: list[np.ndarray],
    expressions: list[str],
    path: Path,
    scores: list[float] | None = None,
    image_id: int | str | None = 1,
    file_name: str | None = None,
) -> Path:
    """The COCO-style results (RLE entries) of one image's masks, as `--format coco` writes them."""
    scores = scores if scores is not None else [None] * len(masks)
    entries = [coco_entry(m, e, s, image_id, file_name) for m, e, s in zip(masks, expressions, scores)]
    path.write_text(json.dumps(entries) + "\n", encoding="utf-8")
    return path


class PredictionWriter:
    """Writes each image's predictions in one format as they come; keeps only file names, so a
    run over many images uses constant memory. Use as a context manager (`close` ends
    results.json).

    With `per_image_folders` each image's files go to `<out>/<image stem>/` (a stem seen before
    gets `-2`, `-3`, ...); without, to `<out>/` itself (the single-image layout). `overlay.png`
    (masks outlined, with a legend) goes beside them unless `overlay` is False."""

    def __init__(
        self, out_dir: str | Path, fmt: str = "png", overlay: bool = True, per_image_folders: bool = True
    ) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.out = Path(out_dir)
        self.format = fmt
        self.overlay = overlay
        self.per_image_folders = per_image_folders
        self.files_written = 0
        self._folders: set[str] = set()
        self._results: IO[str] | None = None
        self._entries = 0
        self._closed = False

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def _folder(self, file_name: str) -> Path:
        if not self.per_image_folders:
            return self.out
        stem = Path(file_name).stem or "image"
        name, n = stem, 1
        while name in self._folders:
            n += 1
            name = f"{stem}-{n}"
        self._folders.add(name)
        return self.out / name

    def write(
        self, image: np.ndarray, predictions: list[Prediction], file_name: str, image_id: int | str
    ) -> list[Path]:
        """Writes one image's outputs; image (H, W, 3) uint8. Returns the paths written."""
        folder = self._folder(file_name)
        if self.format != "coco" or self.overlay:
            folder.mkdir(parents=True, exist_ok=True)
        masks = [p.mask for p in predictions]
        expressions = [p.expression for p in predictions]
        paths: list[Path] = []
        if self.format == "png":
            paths += write_mask_pngs(masks, expressions, folder)
        elif self.format in ("rle", "polygon"):
            for i, p in enumerate(predictions):
                entry = coco_entry(p.mask, p.expression, p.score, image_id, file_name, self.format)
                path = folder / f"{mask_stem(i, p.expression)}.json"
                path.write_text(json.dumps(entry) + "\n", encoding="utf-8")
                paths.append(path)
        else:
            for p in predictions:
                self._append(coco_entry(p.mask, p.expression, p.score, image_id, file_name))
        if self.overlay:
            labels = [f"{i + 1}. {e}" for i, e in enumerate(expressions)]
            path = folder / "overlay.png"
            Image.fromarray(annotated_overlay(image, masks, labels)).save(path)
            paths.append(path)
        self.files_written += len(paths)
        return paths

    def _open_results(self) -> IO[str]:
        if self._results is None:
            self.out.mkdir(parents=True, exist_ok=True)
            self._results = open(self.out / RESULTS_JSON, "w", encoding="utf-8")  # noqa: SIM115 (closed by close())
            self._results.write("[")
            self.files_written += 1
        return self._results

    def _append(self, entry: dict[str, Any]) -> None:
        self._open_results().write(("," if self._entries else "") + "\n" + json.dumps(entry))
        self._entries += 1

    def close(self) -> Path | None:
        """Ends results.json (format coco; an empty list when no image was written). Returns its
        path; later calls do nothing."""
        if self.format != "coco" or self._closed:
            return None
        self._open_results().write("\n]\n")
        self._results.close()
        self._results, self._closed = None, True
        return self.out / RESULTS_JSON
