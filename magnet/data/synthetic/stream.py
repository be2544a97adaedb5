"""The synthetic referring data drawn in memory while training (no files)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ...errors import ConfigError
from ..augment import AugmentConfig
from ..dataset import build_item, item_generator
from ..tokenizer import ExpressionTokenizer
from .grammar import EXPRESSION_TYPES, counting_expressions, vocabulary
from .scenes import SHAPES, Scene
from .splits import SPLIT_TYPES, Expressions, check_style, draw_split_scene


def check_type_weights(type_weights: dict[str, float] | None) -> None:
    """ConfigError unless every key is an expression type and every weight is positive."""
    for kind, weight in (type_weights or {}).items():
        if kind not in EXPRESSION_TYPES:
            raise ConfigError(
                f"unknown expression type {kind!r} in synthetic_type_weights; choose from {list(EXPRESSION_TYPES)}"
            )
        if not float(weight) > 0:
            raise ConfigError(f"synthetic_type_weights[{kind!r}] is {weight}; weights must be positive")


def check_share(name: str, share: object) -> None:
    """ConfigError unless `share` (the option `name`) is a number in [0, 1]."""
    try:
        valid = 0 <= float(share) <= 1
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ConfigError(f"{name} is {share!r}; give a share of the items in [0, 1], e.g. 0.25")


class DrawnItem(NamedTuple):
    """One item of a synthetic stream before preprocessing."""

    scene: Scene
    image: np.ndarray  # RGB (H, W, 3) uint8
    labels: np.ndarray  # (H, W) uint8: 0 background, i + 1 object i
    obj: int  # the referred object
    text: str
    kind: str  # expression type

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool mask of the referred object."""
        return self.labels == self.obj + 1


class SyntheticStream(Dataset):
    """The synthetic referring data generated in memory: item k is scene k of `split` (the same
    scene `generate_synthetic` writes for that seed), with one of its (object, expression) pairs
    drawn per epoch. Items are built like every other source's (`build_item`), augmentation included.

    `balance_types`: draw the expression type first (uniformly among the types the scene has),
    then an object with an expression of that type; otherwise an object first, so that the common
    attribute expressions dominate. `type_weights` (with `balance_types`) weights that first draw,
    e.g. {"ordinal": 2.0} draws ordinal expressions twice as often as each other type (default 1).

    `counting_share`: the share of items that, when their scene has one, take instead an ordinal
    expression naming an object inside its row ("the second circle from the left" of three). Drawn
    as above, these are about 4 % of the items: most ordinals name an end of a row, so a model can
    score on them without learning to count.

    `style`: the scene look (a name in STYLES; default: the split's own), e.g. "varied" to train
    on other backgrounds and aspect ratios than the held-out splits show. `style_share`: the share
    of scenes drawn in that look (by scene index, the same in every epoch); the others keep the
    split's own look, so a run can mix the two.

    Every item also maps all objects of its scene and names their shapes (`object_class_names`),
    for the object-class training loss."""

    object_class_names = SHAPES

    def __init__(
        self,
        split: str,
        scenes: int,
        seed: int,
        image_size: int,
        tokenizer: ExpressionTokenizer,
        model_size: int,
        augment: AugmentConfig | None = None,
        balance_types: bool = False,
        type_weights: dict[str, float] | None = None,
        counting_share: float = 0.0,
        style: str | None = None,
        style_share: float = 1.0,
        keep_aspect: bool = False,
    ) -> None:
        if split not in SPLIT_TYPES:
            raise ConfigError(f"unknown synthetic split {split!r}; choose one of {list(SPLIT_TYPES)}")
        check_type_weights(type_weights)
        if type_weights and not balance_types:
            raise ConfigError(
                "synthetic_type_weights weights the type-balanced draw; set synthetic_balance_types: true"
            )
        check_share("synthetic_counting_share", counting_share)
        check_share("synthetic_train_style_share", style_share)
        if style is not None:
            check_style(style)
        elif style_share < 1:
            raise ConfigError("synthetic_train_style_share mixes a training look in; set synthetic_train_style too")
        self.split, self.scenes, self.seed = split, scenes, seed
        self.image_size, self.model_size, self.keep_aspect = image_size, model_size, keep_aspect
        self.tokenizer = tokenizer
        self.augment = augment
        self.balance_types = balance_types
        self.type_weights = dict(type_weights or {})
        self.counting_share = float(counting_share)
        self.style = style
        self.style_share = float(style_share)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.scenes

    def vocabulary(self) -> set[str]:
        """Every word the grammar can use (the stream draws new scenes forever)."""
        return vocabulary()

    def style_of(self, index: int) -> str | None:
        """The look of scene `index`: `style` for a `style_share` of the scenes, else the split's."""
        if self.style is None or self.style_share >= 1:
            return self.style  # no draw, so that unmixed runs see the scenes they always did
        return self.style if np.random.default_rng([self.seed, index, 13]).random() < self.style_share else None

    def _draw_scene(self, index: int) -> tuple[Scene, Expressions, np.ndarray, np.ndarray]:
        """Scene `index` in its look: (scene, expressions, RGB image, labels)."""
        return draw_split_scene(self.split, index, self.seed, self.image_size, self.style_of(index))

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray, Expressions]:
        """Scene `index`: RGB image, labels (0 background, i + 1 object i) and expressions."""
        _, expressions, image, labels = self._draw_scene(index)
        return image, labels, expressions

    def pick(self, index: int, expressions: Expressions) -> tuple[int, int]:
        """(object, expression number) drawn for item `index` in this epoch."""
        rng = np.random.default_rng([self.seed, index, self.epoch, 7])
        if self.balance_types:
            kinds = sorted({kind for _, types in expressions.values() for kind in types})
            if self.type_weights:
                weights = np.array([self.type_weights.get(kind, 1.0) for kind in kinds])
                kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
            else:  # kept apart so that runs without weights draw the same items as before
                kind = kinds[int(rng.integers(len(kinds)))]
            choices = [(obj, k) for obj in sorted(expressions) for k, t in enumerate(expressions[obj][1]) if t == kind]
            return choices[int(rng.integers(len(choices)))]
        obj = sorted(expressions)[int(rng.integers(len(expressions)))]
        return obj, int(rng.integers(len(expressions[obj][0])))

    def draw(self, index: int) -> DrawnItem:
        """Item `index` of this epoch before preprocessing."""
        scene, expressions, image, labels = self._draw_scene(index)
        if self.counting_share > 0:
            rng = np.random.default_rng([self.seed, index, self.epoch, 11])
            if rng.random() < self.counting_share:
                found = [(obj, text) for obj in range(len(scene.objects)) for text in counting_expressions(scene, obj)]
                if found:
                    obj, text = found[int(rng.integers(len(found)))]
                    return DrawnItem(scene, image, labels, obj, text, "ordinal")
        obj, k = self.pick(index, expressions)
        texts, types = expressions[obj]
        return DrawnItem(scene, image, labels, obj, texts[k], types[k])

    def load_original(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The scene image at its drawn size and the (H, W) bool mask of item `index`'s object."""
        drawn = self.draw(index)
        return Image.fromarray(drawn.image), drawn.mask

    def build(self, index: int, drawn: DrawnItem) -> dict:
        """The training / evaluation item of a drawn item `index` (augmentation, preprocessing)."""
        return build_item(
            Image.fromarray(drawn.image),
            drawn.mask,
            drawn.text,
            self.model_size,
            self.tokenizer,
            augment=self.augment,
            generator=item_generator(self.seed, self.epoch, index),
            index=index,
            kind=drawn.kind,
            item_id=f"{self.split}-{index:05d}-{drawn.obj}",
            objects=drawn.labels,
            object_classes=[SHAPES.index(obj.shape) for obj in drawn.scene.objects],
            keep_aspect=self.keep_aspect,
        )

    def __getitem__(self, index: int) -> dict:
        return self.build(index, self.draw(index))
