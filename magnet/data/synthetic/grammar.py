"""The expression grammar of the synthetic scenes: every expression is checked to be
unambiguous. The target must satisfy it clearly (e.g. "left of" = centres at least one radius
apart) and every other object must fail it even when read loosely, so a reader cannot hesitate."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .scenes import Scene, SceneObject

EXPRESSION_TYPES = ("attribute", "location", "relational", "ordinal")
ORDINALS = ("first", "second", "third", "fourth")
# direction -> (axis, sign): a is <direction> of b when sign * (a[axis] - b[axis]) > 0
DIRECTIONS = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1)}
RELATIONS = {
    "left": ("left of", "to the left of"),
    "right": ("right of", "to the right of"),
    "top": ("above",),
    "bottom": ("below",),
}
EXTREMES = {"left": "leftmost", "right": "rightmost", "top": "topmost", "bottom": "bottommost"}
REGIONS = {  # sides of the image's centre lines -> phrases
    ("left",): ("on the left",),
    ("right",): ("on the right",),
    ("top",): ("at the top",),
    ("bottom",): ("at the bottom",),
    ("top", "left"): ("in the top left",),
    ("top", "right"): ("in the top right",),
    ("bottom", "left"): ("in the bottom left",),
    ("bottom", "right"): ("in the bottom right",),
    (): ("in the center", "in the middle"),  # the central third
}
# Fractions of the image side: a target's centre must lie REGION_MARGIN inside its region's
# borders; other candidates must lie LOOSE_MARGIN outside a region or past a "left of" line.
REGION_MARGIN = 0.08
LOOSE_MARGIN = 0.03
CONE = 0.75  # "left of": at most this much across for each pixel to the left


@dataclass(frozen=True)
class Description:
    """A noun phrase: "big red circle"; attributes left None are not mentioned."""

    shape: str | None = None
    colour: str | None = None
    size: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return (
            (self.shape is None or self.shape == obj.shape)
            and (self.colour is None or self.colour == obj.colour)
            and (self.size is None or self.size == obj.size)
        )

    def phrase(self, plural: bool = False) -> str:
        noun = self.shape or "shape"
        return " ".join(w for w in (self.size, self.colour, noun + ("s" if plural else "")) if w)


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


def loosely(a: SceneObject, direction: str, b: SceneObject, scale: float) -> bool:
    """a could be read as being in `direction` of b (scale: the image's shorter side)."""
    return offset(a, b, direction) > -LOOSE_MARGIN * scale


def in_region(obj: SceneObject, sides: tuple[str, ...], scene: Scene, margin: float) -> bool:
    """Is obj's centre in the region (halves / quadrant / central third), `margin` (pixels) inside
    its borders? A negative margin widens the region."""
    if not sides:
        return all(abs(obj.position(axis) - scene.centre(axis)) <= scene.centre(axis) / 3 - margin for axis in (0, 1))
    return all(_side_offset(obj, side, scene) >= margin for side in sides)


def _side_offset(obj: SceneObject, side: str, scene: Scene) -> float:
    axis, sign = DIRECTIONS[side]
    return sign * (obj.position(axis) - scene.centre(axis))


# ---- expressions ----


def descriptions(obj: SceneObject, with_size: bool = True) -> list[Description]:
    """Every noun phrase true of obj: shape with any of colour and size, or colour alone."""
    phrases = [
        Description(obj.shape, colour, size)
        for colour in (None, obj.colour)
        for size in ((None, obj.size) if with_size else (None,))
    ]
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
    size, target = scene.scale, scene.objects[index]
    texts = []
    for d in descriptions(target):
        others = [scene.objects[i] for i in matching(scene, d) if i != index]
        if not others:
            continue
        for sides, phrases in REGIONS.items():
            if in_region(target, sides, scene, REGION_MARGIN * size) and not any(
                in_region(o, sides, scene, -LOOSE_MARGIN * size) for o in others
            ):
                texts += [f"the {d.phrase()} {p}" for p in phrases]
        for direction, word in EXTREMES.items():
            if all(clearly(target, direction, o) for o in others):
                texts.append(f"the {word} {d.phrase()}")
    return texts


def relational_expressions(scene: Scene, index: int) -> list[str]:
    """ "the circle left of the red triangle": the anchor named by its attributes, the target
    the only candidate on that side of it (two or more candidates without the relation)."""
    size, target = scene.scale, scene.objects[index]
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
                if clearly_beside(target, direction, anchor) and not any(
                    loosely(o, direction, anchor, size) for o in others
                ):
                    texts += [f"the {d.phrase()} {p} the {a.phrase()}" for p in phrases for a in anchor_names]
    return texts


def row_places(scene: Scene, index: int, description: Description) -> list[tuple[str, int, int]]:
    """(direction, place of object `index` counted from that side (0 = first), row length) for every
    direction along which all the objects `description` names lie clearly one after another."""
    target = scene.objects[index]
    candidates = [scene.objects[i] for i in matching(scene, description)]
    places = []
    for direction in DIRECTIONS:
        row = sorted(candidates, key=lambda o: -offset(o, target, direction))  # first in direction first
        if all(clearly(a, direction, b) for a, b in zip(row, row[1:])):
            places.append((direction, row.index(target), len(row)))
    return places


def ordinal_text(place: int, description: Description, direction: str) -> str:
    return f"the {ORDINALS[place]} {description.phrase()} from the {direction}"


def ordinal_expressions(scene: Scene, index: int) -> list[str]:
    """ "the second circle from the left" (all candidates clearly in a row along that axis) and
    "the bigger green square" / "the smaller of the two stars" (exactly two candidates)."""
    target = scene.objects[index]
    texts = []
    for d in descriptions(target, with_size=False):
        candidates = [scene.objects[i] for i in matching(scene, d)]
        if len(candidates) < 2:
            continue
        texts += [
            ordinal_text(place, d, side) for side, place, _ in row_places(scene, index, d) if place < len(ORDINALS)
        ]
        if len(candidates) == 2 and candidates[0].size != candidates[1].size:
            words = ("bigger", "larger") if target.size == "big" else ("smaller",)
            texts += [f"the {w} {d.phrase()}" for w in words]
            texts += [f"the {w} of the two {d.phrase(plural=True)}" for w in words]
    return texts


def counting_expressions(scene: Scene, index: int) -> list[str]:
    """The ordinal expressions that name object `index` inside its row, neither first nor last
    ("the second circle from the left" of three): the ones that take counting, not finding an end."""
    return [
        ordinal_text(place, d, side)
        for d in descriptions(scene.objects[index], with_size=False)
        if len(matching(scene, d)) >= 3
        for side, place, length in row_places(scene, index, d)
        if 0 < place < min(length - 1, len(ORDINALS))
    ]


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


def scene_with_expressions(
    rng: np.random.Generator, types: tuple[str, ...], image_size: int = 256, style=None
) -> tuple[Scene, dict[int, tuple[list[str], list[str]]]]:
    """A scene where at least one object has an expression of the wanted types, and per such
    object its expressions and their types."""
    from .scenes import sample_scene

    while True:
        scene = sample_scene(rng, image_size, style)
        expressions = {}
        for index in range(len(scene.objects)):
            found = [(t, describe(scene, index, t, rng)) for t in types]
            found = [(t, text) for t, text in found if text]
            if found:
                expressions[index] = ([text for _, text in found], [t for t, _ in found])
        if expressions:
            return scene, expressions


def vocabulary() -> set[str]:
    """Every word an expression of this grammar can use."""
    from .scenes import COLOURS, SHAPES, SIZES

    phrases = [
        *SHAPES,
        *COLOURS,
        *SIZES,
        *ORDINALS,
        *DIRECTIONS,
        *EXTREMES.values(),
        *(p for ps in RELATIONS.values() for p in ps),
        *(p for ps in REGIONS.values() for p in ps),
        "the shape from of two bigger larger smaller",
        *(shape + "s" for shape in (*SHAPES, "shape")),
    ]
    return {word for phrase in phrases for word in phrase.split()}
