"""Writing a synthetic dataset as files in the JSON Lines format (images/, masks/, dataset.jsonl).

python -m magnet.data.synthetic OUT --train 1000 --val 100 --test 100 --shifted 100 --seed 0
python -m magnet.data.synthetic OUT --train 200 --val 0 --test 100 --style shifted   # another look
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from .splits import draw_split_scene

logger = logging.getLogger(__name__)


class PngWriter:
    """Writes PNG files on background threads: writing, not drawing, is the slow part. At most
    `max_pending` files wait in memory; a failed write raises on a later `write` or on exit."""

    def __init__(self, workers: int = 4, max_pending: int = 64) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers)
        self._pending: deque[Future] = deque()
        self.max_pending = max_pending

    def write(self, path: Path, array: np.ndarray, bilevel: bool = False) -> None:
        """Queue a BGR image or a 0/255 mask (a 1-bit PNG when `bilevel`)."""
        self._pending.append(self._pool.submit(_write_png, path, array, bilevel))
        while len(self._pending) > self.max_pending:
            self._pending.popleft().result()

    def __enter__(self) -> PngWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown()


def generate_split(
    out_dir: Path, split: str, count: int, seed: int, image_size: int, writer: PngWriter, style: str | None = None
) -> list[dict]:
    """Write `count` scenes of a split (images/, masks/) -> their JSONL entries, one per object
    that has at least one expression of the split's types. Scene k depends only on (seed, split, k)
    and the style (default: the split's own)."""
    entries = []
    for scene_number in range(count):
        _, expressions, image, labels = draw_split_scene(split, scene_number, seed, image_size, style)
        name = f"{split}-{scene_number:05d}"
        writer.write(out_dir / "images" / f"{name}.png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        for index, (texts, types) in expressions.items():
            mask_name = f"masks/{name}-{index}.png"
            writer.write(out_dir / mask_name, (labels == index + 1).astype(np.uint8) * 255, bilevel=True)
            entries.append(
                {
                    "id": f"{name}-{index}",
                    "image": f"images/{name}.png",
                    "mask": mask_name,
                    "expressions": texts,
                    "type": types,
                    "split": split,
                }
            )
    return entries


def _write_png(path: Path, array: np.ndarray, bilevel: bool) -> None:
    params = [cv2.IMWRITE_PNG_BILEVEL, 1] if bilevel else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if not cv2.imwrite(str(path), array, params):
        raise OSError(f"cannot write {path}")


def generate_synthetic(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    n_test: int,
    seed: int = 0,
    image_size: int = 256,
    n_shifted: int = 0,
    style: str | None = None,
) -> Path:
    """Write a synthetic dataset (n_test scenes each for testA and testB, n_shifted of the shifted
    split) -> path of dataset.jsonl. `style` draws every split in that look ("shifted": a new look
    to fine-tune on)."""
    out_dir = Path(out_dir)
    for folder in ("images", "masks"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "val": n_val, "testA": n_test, "testB": n_test, "shifted": n_shifted}
    jsonl_path = out_dir / "dataset.jsonl"
    with jsonl_path.open("w", encoding="utf-8") as file, PngWriter() as writer:
        for split, count in counts.items():
            entries = generate_split(out_dir, split, count, seed, image_size, writer, style)
            file.writelines(json.dumps(entry) + "\n" for entry in entries)
            logger.info("%s: %d scenes, %d objects", split, count, len(entries))
    return jsonl_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate a synthetic referring segmentation dataset.")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--train", type=int, default=1000, help="training scenes")
    parser.add_argument("--val", type=int, default=100, help="validation scenes")
    parser.add_argument("--test", type=int, default=100, help="scenes in each of testA and testB")
    parser.add_argument("--seed", type=int, default=0, help="scene k of a split depends only on (seed, split, k)")
    parser.add_argument("--shifted", type=int, default=0, help="scenes of the held-out shifted split")
    parser.add_argument(
        "--style",
        choices=["default", "shifted"],
        default=None,
        help="draw every split in this look (default: each split's own)",
    )
    parser.add_argument("--image-size", type=int, default=256, help="side of the default style's square images")
    args = parser.parse_args(argv)
    path = generate_synthetic(
        args.out, args.train, args.val, args.test, args.seed, args.image_size, args.shifted, args.style
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
