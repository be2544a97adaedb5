"""The splits of the synthetic data: which expression types and which look each one has, and the
one function that draws scene k of a split (files and the in-memory stream share it)."""

from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from .grammar import EXPRESSION_TYPES, scene_with_expressions
from .scenes import STYLES, Scene, SceneStyle, render_scene

SPLIT_TYPES = {
    "train": EXPRESSION_TYPES,
    "val": EXPRESSION_TYPES,
    "testA": ("attribute", "location"),
    "testB": ("relational", "ordinal"),
    "shifted": EXPRESSION_TYPES,  # held out: scenes of another look (STYLES["shifted"])
}
SPLIT_STYLES = {"shifted": "shifted"}  # the others: "default"
HELD_OUT_SPLITS = [split for split in SPLIT_TYPES if split != "train"]  # the splits evaluations score

Expressions = dict[int, tuple[list[str], list[str]]]  # object -> (texts, their types)


def check_style(name: str) -> None:
    """ConfigError unless `name` is a scene style in STYLES."""
    if name not in STYLES:
        raise ConfigError(f"unknown synthetic scene style {name!r}; choose one of {list(STYLES)}")


def draw_split_scene(
    split: str, index: int, seed: int, image_size: int = 256, style: str | None = None
) -> tuple[Scene, Expressions, np.ndarray, np.ndarray]:
    """Scene `index` of `split`: (scene, expressions, RGB image, labels). It depends only on
    (seed, split, index) and the style (default: the split's own)."""
    if split not in SPLIT_TYPES:
        raise ConfigError(f"unknown synthetic split {split!r}; choose one of {list(SPLIT_TYPES)}")
    name = style or SPLIT_STYLES.get(split, "default")
    check_style(name)
    look: SceneStyle = STYLES[name]
    if look == STYLES["default"]:
        look = SceneStyle(widths=(image_size, image_size), heights=(image_size, image_size))
    rng = np.random.default_rng([seed, list(SPLIT_TYPES).index(split), index])
    return draw_scene(rng, SPLIT_TYPES[split], look, image_size)


def draw_scene(
    rng: np.random.Generator, types: tuple[str, ...], look: SceneStyle, image_size: int = 256
) -> tuple[Scene, Expressions, np.ndarray, np.ndarray]:
    """A scene of `look` with expressions of `types`, rendered: (scene, expressions, RGB image,
    labels). One generator draws all of it, so the result depends only on its state."""
    scene, expressions = scene_with_expressions(rng, types, image_size, look)
    image, labels = render_scene(scene, rng, look)
    return scene, expressions, image, labels
