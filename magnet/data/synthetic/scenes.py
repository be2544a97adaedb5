"""Synthetic scenes: coloured shapes placed without overlap, drawn on a background whose colours
are far from every shape colour. A SceneStyle says how many shapes, how large the image and which
backgrounds: the training style, a varied one for training robustness, and a shifted one for
testing what the model does off the training look."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ...errors import ConfigError

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


@dataclass(frozen=True)
class SceneStyle:
    """How scenes look: shape counts, image size (width, height ranges) and background kinds."""

    counts: tuple[int, ...] = (3, 4, 5, 6)
    widths: tuple[int, int] = (256, 256)  # inclusive range
    heights: tuple[int, int] = (256, 256)
    # plain (solid or gradient), stripes, checker, texture (held out for "shifted"), mosaic, lines
    backgrounds: tuple[str, ...] = ("plain",)
    # Empty: each scene uses 1-3 shapes drawn at random. Else the shapes of one of these groups,
    # e.g. outlines the model confuses, so that its expressions have to tell them apart.
    shape_groups: tuple[tuple[str, ...], ...] = ()
    colour_counts: tuple[int, int] = (2, 4)  # inclusive range of colours per scene


STYLES = {
    "default": SceneStyle(),
    # Off the training distribution: 2 or 7-8 shapes, non-square images of other sizes, striped,
    # checkered and surface-like textured backgrounds.
    "shifted": SceneStyle(
        counts=(2, 7, 8), widths=(176, 352), heights=(176, 352), backgrounds=("stripes", "checker", "texture")
    ),
    # For training only: the default counts, mildly non-square images (aspect 0.73 to 1.37, where
    # "shifted" reaches 0.5 to 2) and background families that "shifted" does not use.
    "varied": SceneStyle(widths=(216, 296), heights=(216, 296), backgrounds=("plain", "mosaic", "lines")),
    # For training only: the default look, but every scene holds two shapes that the default model
    # takes for each other (model card, "Where it goes wrong") in one or two colours.
    "confusable": SceneStyle(
        shape_groups=(("circle", "hexagon"), ("triangle", "star"), ("square", "diamond"), ("circle", "square")),
        colour_counts=(1, 2),
    ),
}


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
    width: int
    height: int

    @property
    def scale(self) -> int:
        """The shorter side: sizes and margins are fractions of it."""
        return min(self.width, self.height)

    def centre(self, axis: int) -> float:
        return (self.width if axis == 0 else self.height) / 2


def sample_scene(rng: np.random.Generator, image_size: int = 256, style: SceneStyle | None = None) -> Scene:
    """Shapes drawn from a few shapes and colours (so that repeats occur), without overlap; the
    default style draws 3-6 on an image_size square."""
    style = style or SceneStyle(widths=(image_size, image_size), heights=(image_size, image_size))
    width, height = style.widths[0], style.heights[0]
    if style.widths[0] != style.widths[1] or style.heights[0] != style.heights[1]:
        width = int(rng.integers(style.widths[0], style.widths[1] + 1))
        height = int(rng.integers(style.heights[0], style.heights[1] + 1))
    while True:
        if style.counts == SceneStyle.counts:  # the training draw, kept as it was for reproducibility
            count = int(rng.integers(3, 7))
        else:
            count = int(rng.choice(style.counts))
        if style.shape_groups:
            shapes = style.shape_groups[int(rng.integers(len(style.shape_groups)))]
        else:
            shapes = rng.choice(SHAPES, size=int(rng.integers(1, 4)), replace=False)
        fewest, most = style.colour_counts
        colours = rng.choice(list(COLOURS), size=int(rng.integers(fewest, most + 1)), replace=False)
        kinds = [(str(rng.choice(shapes)), str(rng.choice(colours)), str(rng.choice(SIZES))) for _ in range(count)]
        kinds.sort(key=lambda kind: kind[2] != "big")  # place big shapes first
        objects = _place(kinds, rng, width, height)
        if len(objects) >= min(3, min(style.counts)):
            return Scene(tuple(objects), width, height)


def _place(kinds: list[tuple[str, str, str]], rng: np.random.Generator, width: int, height: int) -> list[SceneObject]:
    """Random non-overlapping positions; a shape that does not fit is left out."""
    scale = min(width, height)
    gap = 0.03 * scale
    objects: list[SceneObject] = []
    far_corner = np.array([width, height], dtype=np.float64)
    for shape, colour, size in kinds:
        radius = float(rng.uniform(*RADIUS[size])) * scale
        for _ in range(50):
            x, y = rng.uniform(radius + 2, far_corner - radius - 2, size=2)
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


def render_scene(
    scene: Scene, rng: np.random.Generator, style: SceneStyle | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scene -> RGB image (H, W, 3) uint8 and labels (H, W) uint8: 0 background, i + 1 object i."""
    labels = np.zeros((scene.height, scene.width), dtype=np.uint8)
    for index, obj in enumerate(scene.objects, start=1):
        polygon = shape_polygon(obj)
        if polygon is None:
            cv2.circle(labels, (round(obj.x), round(obj.y)), round(obj.radius), index, -1, lineType=cv2.LINE_8)
        else:
            cv2.fillPoly(labels, [polygon], index, lineType=cv2.LINE_8)
    palette = np.array([(0, 0, 0)] + [COLOURS[o.colour] for o in scene.objects], dtype=np.uint8)
    backgrounds = (style or STYLES["default"]).backgrounds
    kind = backgrounds[0] if len(backgrounds) == 1 else str(rng.choice(backgrounds))
    image = sample_background(rng, scene.width, scene.height, kind)
    drawn = labels > 0
    image[drawn] = palette[labels[drawn]]
    return image, labels


def sample_background(
    rng: np.random.Generator, width: int, height: int | None = None, kind: str = "plain"
) -> np.ndarray:
    """(H, W, 3) uint8 whose every pixel is far (> 60 in RGB distance) from all shape colours:
    plain (a solid colour or a gradient), stripes, checker, texture (a smooth random surface),
    mosaic (irregular flat cells) or lines (crossing bars), each between two tinted greys, with
    light noise or not."""
    height = height or width
    first = _background_colour(rng)
    second = first if kind == "plain" and rng.random() < 0.5 else _background_colour(rng, gradient_from=first)
    if kind == "plain":  # a smooth blend in a random direction
        corners = rng.permutation([0.0, 1 / 3, 2 / 3, 1.0]).reshape(2, 2, 1)
        image = cv2.resize(
            (first + corners * (second - first)).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR
        )
    else:
        image = first + _blend_pattern(rng, width, height, kind)[..., None] * (second - first)
    if rng.random() < 0.5:  # light grey texture noise
        image += rng.integers(-10, 11, (height, width, 1)).astype(np.float32)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def _blend_pattern(rng: np.random.Generator, width: int, height: int, kind: str) -> np.ndarray:
    """(H, W) float32 in [0, 1]: how far each pixel goes from the first colour to the second."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if kind == "stripes":
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(8, 32)
        phase = (xs * np.cos(angle) + ys * np.sin(angle)) / period
        return (np.floor(phase) % 2).astype(np.float32)
    if kind == "checker":
        cell = rng.uniform(10, 40)
        return ((np.floor(xs / cell) + np.floor(ys / cell)) % 2).astype(np.float32)
    if kind == "texture":  # a surface: smooth random field at a few scales
        field = np.zeros((height, width), dtype=np.float32)
        for cells, weight in ((4, 1.0), (12, 0.5), (40, 0.25)):
            coarse = rng.random((cells, cells)).astype(np.float32)
            field += weight * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        field -= field.min()
        return field / max(float(field.max()), 1e-6)
    if kind == "mosaic":  # Voronoi cells, each a flat shade between the two colours
        seeds = rng.uniform(0, (width, height), size=(int(rng.integers(6, 30)), 2)).astype(np.float32)
        nearest = np.argmin((xs[..., None] - seeds[:, 0]) ** 2 + (ys[..., None] - seeds[:, 1]) ** 2, axis=-1)
        return rng.random(len(seeds)).astype(np.float32)[nearest]
    if kind == "lines":  # bars of random width and angle across the image
        pattern = np.zeros((height, width), dtype=np.float32)
        diagonal = float(np.hypot(width, height))
        for _ in range(int(rng.integers(3, 12))):
            x, y = rng.uniform(0, (width, height))
            angle = rng.uniform(0, np.pi)
            dx, dy = diagonal * np.cos(angle), diagonal * np.sin(angle)
            ends = (round(x - dx), round(y - dy)), (round(x + dx), round(y + dy))
            cv2.line(pattern, *ends, float(rng.uniform(0.3, 1.0)), int(rng.integers(2, 14)))
        return pattern
    raise ConfigError(f"unknown background {kind!r}; choose plain, stripes, checker, texture, mosaic or lines")


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
