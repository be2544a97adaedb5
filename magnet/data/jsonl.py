"""Referring records, their validation, and the JSON Lines format for users' own data.

One line per object:

    {"id": "cat-1", "image": "images/cat.jpg", "mask": "masks/cat.png",
     "expressions": ["the cat on the left", "grey cat"], "split": "train", "type": "location"}

- `id` (str or int) defaults to the line number; ids must be unique in the file.
- `image` and a PNG `mask` path are relative to the JSONL file's folder (or absolute).
- `mask` is a PNG path (nonzero = object), a COCO RLE dict or a polygon list (see masks.py).
- `expressions` (a list) or `expression` (one string); each becomes one record.
- `split` defaults to "train"; `type` is an optional label, or a list parallel to expressions.

Loading validates every record and skips (and counts, in a DataReport) the bad ones; with
`strict=True` the first problem raises DataError. Images are fully decoded once at load time
when `verify_images=True` (the default here), so truncated files are caught before training;
the dataset still drops an image that fails later (see dataset.py).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image

from ..errors import UserError
from .masks import MaskError, MaskSizeError, MaskSpec, decode_mask
from .tokenizer import ExpressionTokenizer

logger = logging.getLogger(__name__)

DEFAULT_SPLIT = "train"

# Why a record was skipped -> how to fix it.
FIXES = {
    "malformed_line": "each line must be one JSON object with 'image', 'mask' and 'expressions' (or 'expression')",
    "duplicate_id": "give every line a unique 'id' (or leave 'id' out to use the line number)",
    "missing_image": "check the path; relative paths are resolved against the dataset file's folder",
    "unreadable_image": "re-export the image as a valid JPEG/PNG or remove it",
    "bad_mask": "give a PNG path, an RLE dict {'size': [h, w], 'counts': ...} or polygons [[x1, y1, x2, y2, ...]]",
    "empty_mask": "the mask has no object pixels: fix the mask or remove the record",
    "mask_size_mismatch": "the mask must have the image's height and width (after EXIF rotation)",
    "empty_expression": "give a non-empty expression with at least one word",
    "unsafe_pickle": "use the refs(...).p file from the refer toolkit; it holds only lists, dicts, strings and numbers",
}


class DataError(UserError):
    """A problem in a dataset file. The message names the file (and line) and the fix."""

    def __init__(self, reason: str, where: str, detail: str) -> None:
        self.reason, self.where, self.detail = reason, where, detail
        super().__init__(f"{where}: {detail}. Fix: {FIXES[reason]}")


@dataclass
class ReferringRecord:
    """One (image, mask, expression) triple."""

    id: str | int  # shared by the expressions of one object
    image_path: Path
    mask: MaskSpec  # PNG paths are absolute
    expression: str
    split: str = DEFAULT_SPLIT
    type: str | None = None  # expression type label, e.g. "attribute"
    source: str = ""  # "file:line" the record came from
    expression_index: int = 0  # position among the object's expressions


@dataclass
class DataReport:
    """What a loader kept and what it skipped, and why."""

    source: str
    records: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> first messages

    @property
    def total_skipped(self) -> int:
        return sum(self.skipped.values())

    def add(self, error: DataError, strict: bool) -> None:
        """Count a problem, or raise it when `strict`."""
        if strict:
            raise error
        self.skipped[error.reason] += 1
        self.examples.setdefault(error.reason, [])
        if len(self.examples[error.reason]) < 3:
            self.examples[error.reason].append(str(error))

    def summary(self) -> str:
        skipped = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.skipped.items()))
        return f"{self.source}: {self.records} records" + (f"; skipped {skipped}" if skipped else "")

    def log(self) -> None:
        logger.info(self.summary())
        for reason, messages in self.examples.items():
            for message in messages:
                logger.warning("skipped (%s) %s", reason, message)


# ---- image files (shared by the loaders and the dataset) ----


def read_image_size(path: Path, verify: bool) -> tuple[int, int]:
    """(h, w) of an image file after EXIF rotation, reading only its header; with `verify`, the
    pixels are decoded too so a truncated or corrupt file raises OSError here."""
    with Image.open(path) as image:
        width, height = image.size
        if _header_orientation(image) in (5, 6, 7, 8):  # rotated by 90 degrees
            width, height = height, width
        if verify:
            image.load()
    return height, width


def _header_orientation(image: Image.Image) -> int:
    """EXIF orientation from the file header. PNG's getexif() would decode the pixels to look for
    an eXIf chunk after them; such a late chunk is caught by the dataset's size check instead."""
    if image.format == "PNG":
        exif = Image.Exif()
        if "exif" in image.info:
            exif.load(image.info["exif"])
    else:
        exif = image.getexif()
    return exif.get(ExifTags.Base.Orientation, 1)


class RecordValidator:
    """Checks images, masks and expressions, raising DataError; remembers image results."""

    def __init__(self, tokenizer: ExpressionTokenizer | None = None, verify_images: bool = True) -> None:
        self.tokenizer = tokenizer or ExpressionTokenizer()
        self.verify_images = verify_images
        self._image_sizes: dict[Path, tuple[int, int] | DataError] = {}

    def image_size(self, path: Path, where: str) -> tuple[int, int]:
        """(h, w) of a readable image, or DataError (missing_image / unreadable_image)."""
        if path not in self._image_sizes:
            self._image_sizes[path] = self._check_image(path, where)
        result = self._image_sizes[path]
        if isinstance(result, DataError):
            raise DataError(result.reason, where, result.detail)
        return result

    def _check_image(self, path: Path, where: str) -> tuple[int, int] | DataError:
        if not path.is_file():
            return DataError("missing_image", where, f"image {path} does not exist")
        try:
            return read_image_size(path, self.verify_images)
        except OSError as error:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            return DataError("unreadable_image", where, f"cannot read image {path}: {error}")

    def mask(self, spec: MaskSpec, image_size: tuple[int, int], where: str) -> np.ndarray:
        """Decoded (h, w) bool mask, or DataError (bad_mask / mask_size_mismatch / empty_mask)."""
        try:
            mask = decode_mask(spec, image_size)
        except MaskSizeError as error:
            raise DataError("mask_size_mismatch", where, str(error)) from error
        except MaskError as error:
            raise DataError("bad_mask", where, str(error)) from error
        if not mask.any():
            raise DataError("empty_mask", where, "the mask is empty")
        return mask

    def expression(self, text: Any, where: str) -> str:
        """The expression text, or DataError (empty_expression) when it has no word pieces."""
        if not isinstance(text, str):
            raise DataError("empty_expression", where, f"expression {text!r} is not a string")
        if len(self.tokenizer.encode(text).tokens) <= 2:  # only [CLS] and [SEP]
            raise DataError("empty_expression", where, f"expression {text!r} has no words")
        return text


# ---- the JSON Lines format ----


@dataclass
class _Line:
    id: str | int
    image: Path
    mask: MaskSpec
    expressions: list[Any]
    types: list[str | None]
    split: str


def load_jsonl(
    path: str | Path,
    split: str | None = None,
    strict: bool = False,
    verify_images: bool = True,
    tokenizer: ExpressionTokenizer | None = None,
) -> tuple[list[ReferringRecord], DataReport]:
    """Read a JSON Lines dataset -> one record per (image, mask, expression), and a report of
    what was skipped. `split=None` keeps every split. `strict=True` raises DataError at the
    first problem instead of skipping."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    validator = RecordValidator(tokenizer, verify_images)
    report = DataReport(source=str(path))
    records: list[ReferringRecord] = []
    seen_ids: dict[str | int, int] = {}
    with path.open(encoding="utf-8") as lines:
        for number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                line = _parse_line(text, number, path.parent, where)
                _check_unique_id(line.id, number, seen_ids, where)
                if split is not None and line.split != split:
                    continue
                image_size = validator.image_size(line.image, where)
                validator.mask(line.mask, image_size, where)
            except DataError as error:
                report.add(error, strict)
                continue
            records.extend(_line_records(line, where, validator, report, strict))
    report.records = len(records)
    report.log()
    return records, report


def _line_records(
    line: _Line, where: str, validator: RecordValidator, report: DataReport, strict: bool
) -> list[ReferringRecord]:
    records = []
    for index, (text, type_) in enumerate(zip(line.expressions, line.types)):
        try:
            expression = validator.expression(text, where)
        except DataError as error:
            report.add(error, strict)
            continue
        records.append(
            ReferringRecord(
                id=line.id,
                image_path=line.image,
                mask=line.mask,
                expression=expression,
                split=line.split,
                type=type_,
                source=where,
                expression_index=index,
            )
        )
    return records


def _check_unique_id(id_: str | int, number: int, seen: dict[str | int, int], where: str) -> None:
    if id_ in seen:
        raise DataError("duplicate_id", where, f"id {id_!r} is already used on line {seen[id_]}")
    seen[id_] = number


def _parse_line(text: str, number: int, base_dir: Path, where: str) -> _Line:
    """One JSON line -> _Line with resolved paths, or DataError (malformed_line)."""

    def malformed(detail: str) -> DataError:
        return DataError("malformed_line", where, detail)

    try:
        entry = json.loads(text)
    except json.JSONDecodeError as error:
        raise malformed(f"not valid JSON ({error})") from error
    if not isinstance(entry, dict):
        raise malformed("the line is not a JSON object")
    for key in ("image", "mask"):
        if key not in entry:
            raise malformed(f"missing '{key}'")
    if not isinstance(entry["image"], str):
        raise malformed("'image' must be a path string")
    expressions = _expressions(entry, malformed)
    types = _types(entry.get("type"), len(expressions), malformed)
    id_ = entry.get("id", number)
    if not isinstance(id_, (str, int)):
        raise malformed("'id' must be a string or an integer")
    split = entry.get("split", DEFAULT_SPLIT)
    if not isinstance(split, str):
        raise malformed("'split' must be a string")
    mask = entry["mask"]
    if isinstance(mask, str):
        mask = str(base_dir / mask)  # absolute paths stay as they are
    return _Line(id=id_, image=base_dir / entry["image"], mask=mask, expressions=expressions, types=types, split=split)


def _expressions(entry: dict, malformed) -> list[Any]:
    if "expressions" in entry:
        expressions = entry["expressions"]
        if not isinstance(expressions, list) or not expressions:
            raise malformed("'expressions' must be a non-empty list of strings")
        return expressions
    if "expression" in entry:
        return [entry["expression"]]
    raise malformed("missing 'expressions' (a list) or 'expression' (a string)")


def _types(value: Any, count: int, malformed) -> list[str | None]:
    if value is None or isinstance(value, str):
        return [value] * count
    if isinstance(value, list) and len(value) == count and all(v is None or isinstance(v, str) for v in value):
        return value
    raise malformed(f"'type' must be a string or a list of {count} strings, one per expression")
