"""Synthetic referring segmentation data: coloured shapes and unambiguous expressions.

Each scene holds 3-6 non-overlapping shapes (two clearly different sizes, named colours) on a
background whose colours are far from every shape colour. Each object gets up to one
expression per type:

- attribute:  "the blue star", "the big red circle"
- location:   "the square in the top left", "the leftmost triangle", "the circle at the bottom"
- relational: "the circle left of the red triangle", "the star above the green square"
- ordinal:    "the second circle from the left", "the bigger green square",
              "the smaller of the two stars"

An expression is kept only if its referent is unique: the target must satisfy it clearly (e.g.
"left of" = centres at least one radius apart) and every other object must fail it even when
read loosely, so a reader cannot hesitate. Masks are exact: a shape's pixels are drawn in its
colour, the background never has a shape colour. Everything is reproducible from the seed.

    python -m magnet.data.synthetic OUT --train 1000 --val 100 --test 100 --seed 0
"""
from __future__ import annotations

import argparse
import json
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .tokenizer import ExpressionTokenizer
from .transforms import preprocess_image, resize_mask

logger = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond")
COLOURS = {  # RGB, far apart
    "red": (220, 30, 40),
    "green": (30, 160, 60),
    "blue": (40, 80, 230),
    "yellow": (245, 215, 30),
    "purple": (130, 50, 180),
    "orange": (250, 135, 20),
    "pink": (250, 130, 200),
}
SIZES = ("small", "big")
RADIUS = {"small": (0.055, 0.07), "big": (0.12, 0.145)}  # fraction of the image side
EXPRESSION_TYPES = ("attribute", "location", "relational", "ordinal")
SPLIT_TYPES = {
    "train": EXPRESSION_TYPES,
    "val": EXPRESSION_TYPES,
    "testA": ("attribute", "location"),
    "testB": ("relational", "ordinal"),
}
ORDINALS = ("first", "second", "third", "fourth")
# direction -> (axis, sign): a is <direction> of b when sign * (a[axis] - b[axis]) > 0
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}
RELATIONS = {"left": ("left of", "to the left of"), "right": ("right of", "to the right of"),
             "top": ("above",), "bottom": ("below",)}
EXTREMES = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}
REGIONS = {  # sides of the image's centre lines -> phrases
    ("left",): ("on the left",), ("right",): ("on the right",),
    ("top",): ("at the top",), ("bottom",): ("at the bottom",),
    ("top", "left"): ("in the top left",), ("top", "right"): ("in the top right",),
    ("bottom", "left"): ("in the bottom left",), ("bottom", "right"): ("in the bottom right",),
    (): ("in the center", "in the middle"),  # the central third
}
# Fractions of the image side: a target's centre must lie REGION_MARGIN inside its region's
# borders; other candidates must lie LOOSE_MARGIN outside a region or past a "left of" line.
REGION_MARGIN = 0.08
LOOSE_MARGIN = 0.03
CONE = 0.75  # "left of": at most this much across for each pixel to the left


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    x: float  # centre, pixels
    y: float
    radius: float  # the shape fits in this circle

    def position(self, axis: int) -> float:
        return self.x if axis == 0 else self.y


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    image_size: int


@dataclass(frozen=True)
class Description:
    """A noun phrase: "big red circle"; attributes left None are not mentioned."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return ((self.shape is None or self.shape == obj.shape) and (self.colour is None or self.colour == obj.colour)
                and (self.size is None or self.size == obj.size))

    def phrase(self, plural: bool = False) -> str:
        noun = self.shape or "shape"
        return " ".join(w for w in (self.size, self.colour, noun + ("s" if plural else "")) if w)


# ---- scenes ----

def sample_scene(rng: np.random.Generator, image_size: int = 256) -> Scene:
    """3-6 shapes drawn from a few shapes and colours (so that repeats occur), without overlap."""
    while True:
        count = int(rng.integers(3, 7))
        shapes = rng.choice(SHAPES, size=int(rng.integers(1, 4)), replace=False)
        colours = rng.choice(list(COLOURS), size=int(rng.integers(2, 5)), replace=False)
        kinds = [(str(rng.choice(shapes)), str(rng.choice(colours)), str(rng.choice(SIZES))) for _ in range(count)]
        kinds.sort(key=lambda kind: kind[2] != "big")  # place big shapes first
        objects = _place(kinds, rng, image_size)
        if len(objects) >= 3:
            return Scene(tuple(objects), image_size)


def _place(kinds: list[tuple[str, str, str]], rng: np.random.Generator, image_size: int) -> list[SceneObject]:
    """Random non-overlapping positions; a shape that does not fit is left out."""
    gap = 0.03 * image_size
    objects: list[SceneObject] = []
    for shape, colour, size in kinds:
        radius = float(rng.uniform(*RADIUS[size])) * image_size
        for _ in range(50):
            x, y = rng.uniform(radius + 2, image_size - radius - 2, size=2)
            if all(np.hypot(x - o.x, y - o.y) > radius + o.radius + gap for o in objects):
                objects.append(SceneObject(shape, colour, size, float(x), float(y), radius))
                break
    return objects


def shape_polygon(obj: SceneObject) -> np.ndarray | None:
    """(K, 2) int32 vertices of a polygon shape, None for a circle; all inside the radius."""
    r = obj.radius
    if obj.shape == "circle":
        return None
    if obj.shape == "square":
        h = 0.7 * r
        points = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif obj.shape == "diamond":
        points = [(0, -r), (0.75 * r, 0), (0, r), (-0.75 * r, 0)]
    else:
        corners, start = {"triangle": (3, -90), "hexagon": (6, 0), "star": (10, -90)}[obj.shape]
        angles = np.deg2rad(start + np.arange(corners) * 360 / corners)
        radii = np.where(np.arange(corners) % 2 == 0, r, 0.45 * r) if obj.shape == "star" else np.full(corners, r)
        points = list(zip(radii * np.cos(angles), radii * np.sin(angles)))
    return np.round(np.asarray(points) + (obj.x, obj.y)).astype(np.int32)


def render_scene(scene: Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scene -> RGB image (S, S, 3) uint8 and labels (S, S) uint8: 0 background, i + 1 object i."""
    size = scene.image_size
    labels = np.zeros((size, size), dtype=np.uint8)
    for index, obj in enumerate(scene.objects, start=1):
        polygon = shape_polygon(obj)
        if polygon is None:
            cv2.circle(labels, (round(obj.x), round(obj.y)), round(obj.radius), index, -1, lineType=cv2.LINE_8)
        else:
            cv2.fillPoly(labels, [polygon], index, lineType=cv2.LINE_8)
    palette = np.array([(0, 0, 0)] + [COLOURS[o.colour] for o in scene.objects], dtype=np.uint8)
    image = sample_background(rng, size)
    drawn = labels > 0
    image[drawn] = palette[labels[drawn]]
    return image, labels


def sample_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S, 3) uint8: a solid colour or a gradient, with light noise or not; every pixel is far
    (> 60 in RGB distance) from all shape colours."""
    first = _background_colour(rng)
    second = first if rng.random() < 0.5 else _background_colour(rng, gradient_from=first)
    corners = rng.permutation([0.0, 1 / 3, 2 / 3, 1.0]).reshape(2, 2, 1)  # a smooth blend, random direction
    image = cv2.resize((first + corners * (second - first)).astype(np.float32), (size, size),
                       interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.5:  # light grey texture noise
        image += rng.integers(-10, 11, (size, size, 1)).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _background_colour(rng: np.random.Generator, gradient_from: np.ndarray | None = None) -> np.ndarray:
    """A random greyish RGB colour at least 90 from every shape colour (the whole way from
    `gradient_from`): tinted greys, so that no background reads as a shape's colour name."""
    palette = np.array(list(COLOURS.values()), dtype=np.float32)
    while True:
        colour = np.clip(rng.uniform(30, 235) + rng.uniform(-45, 45, 3), 0, 255).astype(np.float32)
        start = colour if gradient_from is None else gradient_from
        line = start + np.linspace(0, 1, 11, dtype=np.float32)[:, None] * (colour - start)
        if np.linalg.norm(line[:, None] - palette[None], axis=-1).min() >= 90:
            return colour


# ---- spatial predicates: "clearly" for the target, "loosely" for everything else ----

def offset(a: SceneObject, b: SceneObject, direction: str) -> float:
    """How far a is in `direction` of b (pixels, negative: the other way)."""
    axis, sign = DIRECTIONS[direction]
    return sign * (a.position(axis) - b.position(axis))


def clearly(a: SceneObject, direction: str, b: SceneObject) -> bool:
    """a's centre lies beyond b's extent and b's centre beyond a's, in `direction`."""
    return offset(a, b, direction) >= max(a.radius, b.radius)


def clearly_beside(a: SceneObject, direction: str, b: SceneObject) -> bool:
    """`clearly`, and mostly in `direction` ("left of" is not "far above, a bit left")."""
    across_axis = 1 - DIRECTIONS[direction][0]
    across = abs(a.position(across_axis) - b.position(across_axis))
    return clearly(a, direction, b) and across <= CONE * offset(a, b, direction)


def loosely(a: SceneObject, direction: str, b: SceneObject, image_size: int) -> bool:
    """a could be read as being in `direction` of b."""
    return offset(a, b, direction) > -LOOSE_MARGIN * image_size


def in_region(obj: SceneObject, sides: tuple[str, ...], image_size: int, margin: float) -> bool:
    """Is obj's centre in the region (halves / quadrant / central third), `margin` (pixels) inside
    its borders? A negative margin widens the region."""
    centre = image_size / 2
    if not sides:
        half = image_size / 6 - margin
        return abs(obj.x - centre) <= half and abs(obj.y - centre) <= half
    return all(_side_offset(obj, side, centre) >= margin for side in sides)


def _side_offset(obj: SceneObject, side: str, centre: float) -> float:
    axis, sign = DIRECTIONS[side]
    return sign * (obj.position(axis) - centre)


# ---- expressions ----

def descriptions(obj: SceneObject, with_size: bool = True) -> list[Description]:
    """Every noun phrase true of obj: shape with any of colour and size, or colour alone."""
    phrases = [Description(obj.shape, colour, size)
               for colour in (None, obj.colour) for size in ((None, obj.size) if with_size else (None,))]
    return phrases + [Description(None, obj.colour, None)]


def matching(scene: Scene, description: Description) -> list[int]:
    return [i for i, obj in enumerate(scene.objects) if description.matches(obj)]


@lru_cache(maxsize=64)
def unique_descriptions(scene: Scene, index: int) -> list[Description]:
    return [d for d in descriptions(scene.objects[index]) if matching(scene, d) == [index]]


def attribute_expressions(scene: Scene, index: int) -> list[str]:
    """ "the big red circle": attributes alone single the target out."""
    return [f"the {d.phrase()}" for d in unique_descriptions(scene, index)]


def location_expressions(scene: Scene, index: int) -> list[str]:
    """ "the square in the top left", "the leftmost triangle" (two or more candidates)."""
    size, target = scene.image_size, scene.objects[index]
    texts = []
    for d in descriptions(target):
        others = [scene.objects[i] for i in matching(scene, d) if i != index]
        if not others:
            continue
        for sides, phrases in REGIONS.items():
            if in_region(target, sides, size, REGION_MARGIN * size) and \
                    not any(in_region(o, sides, size, -LOOSE_MARGIN * size) for o in others):
                texts += [f"the {d.phrase()} {p}" for p in phrases]
        for direction, word in EXTREMES.items():
            if all(clearly(target, direction, o) for o in others):
                texts.append(f"the {word} {d.phrase()}")
    return texts


def relational_expressions(scene: Scene, index: int) -> list[str]:
    """ "the circle left of the red triangle": the anchor named by its attributes, the target
    the only candidate on that side of it (two or more candidates without the relation)."""
    size, target = scene.image_size, scene.objects[index]
    texts = []
    for anchor_index, anchor in enumerate(scene.objects):
        anchor_names = unique_descriptions(scene, anchor_index)
        if anchor_index == index or not anchor_names:
            continue
        for d in descriptions(target):
            others = [scene.objects[i] for i in matching(scene, d) if i not in (index, anchor_index)]
            if not others:
                continue
            for direction, phrases in RELATIONS.items():
                if clearly_beside(target, direction, anchor) and \
                        not any(loosely(o, direction, anchor, size) for o in others):
                    texts += [f"the {d.phrase()} {p} the {a.phrase()}" for p in phrases for a in anchor_names]
    return texts


def ordinal_expressions(scene: Scene, index: int) -> list[str]:
    """ "the second circle from the left" (all candidates clearly in a row along that axis) and
    "the bigger green square" / "the smaller of the two stars" (exactly two candidates)."""
    target = scene.objects[index]
    texts = []
    for d in descriptions(target, with_size=False):
        candidates = [scene.objects[i] for i in matching(scene, d)]
        if len(candidates) < 2:
            continue
        for direction in DIRECTIONS:
            row = sorted(candidates, key=lambda o: -offset(o, target, direction))  # first in direction first
            position = row.index(target)
            if position < len(ORDINALS) and all(clearly(a, direction, b) for a, b in zip(row, row[1:])):
                texts.append(f"the {ORDINALS[position]} {d.phrase()} from the {direction}")
        if len(candidates) == 2 and candidates[0].size != candidates[1].size:
            words = ("bigger", "larger") if target.size == "big" else ("smaller",)
            texts += [f"the {w} {d.phrase()}" for w in words]
            texts += [f"the {w} of the two {d.phrase(plural=True)}" for w in words]
    return texts


BUILDERS = {
    "attribute": attribute_expressions,
    "location": location_expressions,
    "relational": relational_expressions,
    "ordinal": ordinal_expressions,
}


def describe(scene: Scene, index: int, expression_type: str, rng: np.random.Generator) -> str | None:
    """One random unambiguous expression of the given type for object `index`, or None."""
    texts = BUILDERS[expression_type](scene, index)
    return str(texts[int(rng.integers(len(texts)))]) if texts else None


# ---- writing a dataset ----

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


def generate_split(out_dir: Path, split: str, count: int, seed: int, image_size: int,
                   writer: PngWriter) -> list[dict]:
    """Write `count` scenes of a split (images/, masks/) -> their JSONL entries, one per object
    that has at least one expression of the split's types. Scene k depends only on (seed, split, k)."""
    entries = []
    split_number = list(SPLIT_TYPES).index(split)
    for scene_number in range(count):
        rng = np.random.default_rng([seed, split_number, scene_number])
        scene, expressions = _scene_with_expressions(rng, SPLIT_TYPES[split], image_size)
        image, labels = render_scene(scene, rng)
        name = f"{split}-{scene_number:05d}"
        writer.write(out_dir / "images" / f"{name}.png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        for index, (texts, types) in expressions.items():
            mask_name = f"masks/{name}-{index}.png"
            writer.write(out_dir / mask_name, (labels == index + 1).astype(np.uint8) * 255, bilevel=True)
            entries.append({"id": f"{name}-{index}", "image": f"images/{name}.png", "mask": mask_name,
                            "expressions": texts, "type": types, "split": split})
    return entries


def _scene_with_expressions(rng: np.random.Generator, types: tuple[str, ...],
                            image_size: int) -> tuple[Scene, dict[int, tuple[list[str], list[str]]]]:
    """A scene where at least one object has an expression of the wanted types."""
    while True:
        scene = sample_scene(rng, image_size)
        expressions = {}
        for index in range(len(scene.objects)):
            found = [(t, describe(scene, index, t, rng)) for t in types]
            found = [(t, text) for t, text in found if text]
            if found:
                expressions[index] = ([text for _, text in found], [t for t, _ in found])
        if expressions:
            return scene, expressions


def _write_png(path: Path, array: np.ndarray, bilevel: bool) -> None:
    params = [cv2.IMWRITE_PNG_BILEVEL, 1] if bilevel else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if not cv2.imwrite(str(path), array, params):
        raise OSError(f"cannot write {path}")


def generate_synthetic(out_dir: str | Path, n_train: int, n_val: int, n_test: int, seed: int = 0,
                       image_size: int = 256) -> Path:
    """Write a synthetic dataset (n_test scenes each for testA and testB) -> path of dataset.jsonl."""
    out_dir = Path(out_dir)
    for folder in ("images", "masks"):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    counts = {"train": n_train, "val": n_val, "testA": n_test, "testB": n_test}
    jsonl_path = out_dir / "dataset.jsonl"
    with jsonl_path.open("w", encoding="utf-8") as file, PngWriter() as writer:
        for split, count in counts.items():
            entries = generate_split(out_dir, split, count, seed, image_size, writer)
            file.writelines(json.dumps(entry) + "\n" for entry in entries)
            logger.info("%s: %d scenes, %d objects", split, count, len(entries))
    return jsonl_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate a synthetic referring segmentation dataset.")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--train", type=int, default=1000, help="training scenes")
    parser.add_argument("--val", type=int, default=100, help="validation scenes")
    parser.add_argument("--test", type=int, default=100, help="scenes in each of testA and testB")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args(argv)
    path = generate_synthetic(args.out, args.train, args.val, args.test, args.seed, args.image_size)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()


# ---- scenes drawn on the fly (training without files) ----

class SyntheticStream(Dataset):
    """The synthetic referring data generated in memory: item k is scene k of `split` (the same
    scene `generate_synthetic` writes for that seed), with one of its (object, expression) pairs
    drawn per epoch. Items have ReferringDataset's format."""

    def __init__(self, split: str, scenes: int, seed: int, image_size: int,
                 tokenizer: ExpressionTokenizer, model_size: int) -> None:
        if split not in SPLIT_TYPES:
            raise ValueError(f"unknown synthetic split {split!r}; choose one of {list(SPLIT_TYPES)}")
        self.split, self.scenes, self.seed = split, scenes, seed
        self.image_size, self.model_size = image_size, model_size
        self.tokenizer = tokenizer
        self.epoch = 0
        self.records = [None] * scenes  # evaluation reads types from items, not records

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.scenes

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[list[str], list[str]]]]:
        rng = np.random.default_rng([self.seed, list(SPLIT_TYPES).index(self.split), index])
        scene, expressions = _scene_with_expressions(rng, SPLIT_TYPES[self.split], self.image_size)
        image, labels = render_scene(scene, rng)
        return image, labels, expressions

    def __getitem__(self, index: int) -> dict:
        image, labels, expressions = self.scene(index)
        pick = np.random.default_rng([self.seed, index, self.epoch, 7])
        obj = sorted(expressions)[int(pick.integers(len(expressions)))]
        texts, types = expressions[obj]
        k = int(pick.integers(len(texts)))
        encoded = self.tokenizer.encode(texts[k])
        mask = (labels == obj + 1).astype(np.uint8)
        return {
            "image": preprocess_image(Image.fromarray(image), self.model_size),
            "mask": torch.from_numpy(resize_mask(mask, self.model_size).astype(np.float32)),
            "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(encoded.attention_mask, dtype=torch.long),
            "index": index,
            "text": texts[k],
            "type": types[k],
            "id": f"{self.split}-{index:05d}-{obj}",
        }
