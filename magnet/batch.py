"""What one `python -m magnet predict` run covers: images given as files, folders or glob
patterns with the same expressions for each, or a JSON Lines file of image/expression pairs.

Pairs file, one JSON object per line (blank lines are skipped):

    {"image": "photos/a.jpg", "expression": "the dog on the left"}
    {"image": "photos/a.jpg", "expressions": ["the red car", "the man"], "image_id": 42}

Image paths are relative to the pairs file's folder (or absolute). Lines about the same image are
merged into one job (one forward); `image_id` is optional and defaults to the image's position.
Everything is checked before the model loads; images are only opened when their turn comes.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UserError
from .predictor import check_expressions

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
PAIRS_FORMAT = (
    'each line must be one JSON object like {"image": "photos/a.jpg", "expression": "the dog"} '
    '(or "expressions": ["...", "..."]), image paths relative to the pairs file\'s folder'
)


class InputError(UserError):
    """Images or pairs that cannot be found or parsed; the message says how to fix it."""


@dataclass(frozen=True)
class ImageJob:
    """One image and the expressions to segment in it."""

    path: Path
    expressions: tuple[str, ...]
    file_name: str  # the image's name in the results: the path as given or matched
    image_id: int | str


def _is_pattern(source: str) -> bool:
    return any(c in source for c in "*?[")


def find_images(sources: Sequence[str]) -> list[tuple[Path, str]]:
    """Each source is an image file, a folder (its image files, by suffix, sorted by name, not
    recursive) or a glob pattern (`**` recurses; matching files sorted). Returns (path, name as
    given) pairs, each file once, in order. Raises InputError when a source matches nothing."""
    found: list[tuple[Path, str]] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(
                    f"no image files ({', '.join(IMAGE_SUFFIXES)}) in the folder {source}; "
                    "point --image at a folder of images, an image file or a pattern like 'photos/*.jpg'"
                )
            found += [(p, str(p)) for p in files]
        elif path.is_file():
            found.append((path, source))
        elif _is_pattern(source):
            files = sorted(Path(p) for p in glob.glob(source, recursive=True) if Path(p).is_file())
            if not files:
                raise InputError(
                    f"no file matches {source!r}: check the pattern (quote it, e.g. "
                    "--image 'photos/*.jpg', so that the shell passes it on as it is)"
                )
            found += [(p, str(p)) for p in files]
        else:
            raise InputError(
                f"image not found: {source}; give an image file, a folder of images or a pattern like 'photos/*.jpg'"
            )
    seen: set[Path] = set()
    unique = []
    for path, name in found:
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append((path, name))
    return unique


def image_jobs(sources: Sequence[str], texts: Sequence[str] | None) -> list[ImageJob]:
    """One job per image found in `sources`, each with all of `texts`."""
    expressions = tuple(
        check_expressions(
            texts,
            'no expression given: add --text "what to segment" (repeat it for several), '
            "or give image/expression pairs with --pairs FILE.jsonl",
        )
    )
    return [ImageJob(path, expressions, name, i + 1) for i, (path, name) in enumerate(find_images(sources))]


def _line_expressions(record: Any) -> list[str]:
    """The expressions of one parsed pairs line; raises InputError naming what is wrong."""
    if not isinstance(record, dict):
        raise InputError(f"expected a JSON object, got {type(record).__name__}")
    if not isinstance(record.get("image"), str) or not record["image"].strip():
        raise InputError('"image" (a path) is missing')
    texts = record.get("expressions", record.get("expression"))
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts:
        raise InputError('"expression" (a string) or "expressions" (a list of strings) is missing')
    if not all(isinstance(t, str) and t.strip() for t in texts):
        raise InputError("every expression must be a non-empty string")
    return [t.strip() for t in texts]


def read_pairs(path: str | Path) -> list[ImageJob]:
    """The jobs of a pairs file (see the module docstring), in the order images first appear.
    Raises InputError naming the line and the fix for the first malformed line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pairs file not found: {path}; give a JSON Lines file ({PAIRS_FORMAT})")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text; {PAIRS_FORMAT}") from None
    jobs: dict[Path, dict[str, Any]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            texts = _line_expressions(record)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise InputError(f"{path}, line {number}: {exc}; {PAIRS_FORMAT}") from None
        image = path.parent / record["image"]
        job = jobs.setdefault(
            image.resolve(),
            {"path": image, "name": record["image"], "texts": [], "id": record.get("image_id", len(jobs) + 1)},
        )
        job["texts"] += texts
    if not jobs:
        raise InputError(f"{path} has no pairs; {PAIRS_FORMAT}")
    return [ImageJob(j["path"], tuple(j["texts"]), j["name"], j["id"]) for j in jobs.values()]
