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

Modules: scenes (drawing), grammar (expressions), splits (which scene k of a split is),
writer (files and the command line), stream (scenes drawn while training).

    python -m magnet.data.synthetic OUT --train 1000 --val 100 --test 100 --shifted 100 --seed 0
"""

from .grammar import (
    DIRECTIONS,
    EXPRESSION_TYPES,
    REGIONS,
    RELATIONS,
    Description,
    clearly,
    describe,
    in_region,
    scene_with_expressions,
)
from .scenes import COLOURS, RADIUS, SHAPES, SIZES, STYLES, Scene, SceneObject, SceneStyle, render_scene, sample_scene
from .splits import HELD_OUT_SPLITS, SPLIT_STYLES, SPLIT_TYPES, draw_split_scene
from .stream import SyntheticStream
from .writer import PngWriter, generate_split, generate_synthetic, main

__all__ = [
    "COLOURS",
    "DIRECTIONS",
    "EXPRESSION_TYPES",
    "HELD_OUT_SPLITS",
    "RADIUS",
    "REGIONS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "SPLIT_STYLES",
    "SPLIT_TYPES",
    "STYLES",
    "Description",
    "PngWriter",
    "Scene",
    "SceneObject",
    "SceneStyle",
    "SyntheticStream",
    "clearly",
    "describe",
    "draw_split_scene",
    "generate_split",
    "generate_synthetic",
    "in_region",
    "main",
    "render_scene",
    "sample_scene",
    "scene_with_expressions",
]
