"""A torch Dataset over ReferringRecords (from jsonl.py, refcoco.py or synthetic data)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..imageio import ImageError, load_image
from .augment import AugmentConfig
from .augment import augment as augment_sample
from .jsonl import ReferringRecord, read_image_size
from .masks import MaskError, decode_mask
from .tokenizer import ExpressionTokenizer, expression_words
from .transforms import input_shape, preprocess_image, resize_mask

logger = logging.getLogger(__name__)


class ReferringDataset(Dataset):
    """Items are dicts:
    - image (3, S, S) float, normalised as preprocess_image does
    - mask (S, S) float32 0/1, nearest resize as resize_mask does
    - input_ids, attention_mask (L,) int64, L = tokenizer.max_tokens
    - index int; text, type, id as given by the record (text after augmentation).

    An image that fails to load (e.g. a truncated file not caught at load time) is logged and
    the item is None; `collate` drops it. Augmentation is reproducible: item i in epoch e draws
    from a generator seeded by (seed, e, i), whatever the worker that loads it.
    """

    def __init__(
        self,
        records: Sequence[ReferringRecord],
        image_size: int,
        tokenizer: ExpressionTokenizer | None = None,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        keep_aspect: bool = False,
    ) -> None:
        self.records = list(records)
        self.image_size, self.keep_aspect = image_size, keep_aspect
        self.tokenizer = tokenizer or ExpressionTokenizer()
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw different augmentations in each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def vocabulary(self) -> set[str]:
        """Every word of the records' expressions."""
        return {word for record in self.records for word in expression_words(record.expression)}

    def input_shapes(self) -> list[tuple[int, int] | None] | None:
        """Each record's model input (h, w) before augmentation, from its image's header (read once
        per image; None for an unreadable one), so that training can batch images of one shape;
        None when every input is the same square (no `keep_aspect`)."""
        if not self.keep_aspect:
            return None
        sizes: dict[Path, tuple[int, int] | None] = {}
        for path in {record.image_path for record in self.records}:
            try:
                sizes[path] = input_shape(*read_image_size(path, verify=False), self.image_size, keep_aspect=True)
            except OSError:
                sizes[path] = None
        return [sizes[record.image_path] for record in self.records]

    def load_original(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The record's RGB image (EXIF orientation applied) and its (H, W) bool mask at full resolution."""
        record = self.records[index]
        image = load_image(record.image_path, max_side=None)
        return image, decode_mask(record.mask, (image.height, image.width))

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        try:
            image, mask = self.load_original(index)
        except (OSError, ImageError, MaskError) as error:
            logger.warning("dropping %s (%s): %s", record.source, record.image_path, error)
            return None
        return build_item(
            image,
            mask,
            record.expression,
            self.image_size,
            self.tokenizer,
            augment=self.augment,
            generator=item_generator(self.seed, self.epoch, index),
            index=index,
            kind=record.type,
            item_id=record.id,
            keep_aspect=self.keep_aspect,
        )


OBJECT_SLOTS = 16  # object classes per item (padded): the synthetic scenes have at most 8 objects


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of item `index` in `epoch`: the same whichever worker loads it."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def build_item(
    image: Image.Image,
    mask: np.ndarray,
    text: str,
    image_size: int,
    tokenizer: ExpressionTokenizer,
    *,
    augment: AugmentConfig | None,
    generator: torch.Generator | None,
    index: int,
    kind: str | None,
    item_id: str,
    objects: np.ndarray | None = None,
    object_classes: Sequence[int] = (),
    keep_aspect: bool = False,
) -> dict[str, Any]:
    """One training / evaluation item, for every data source: augmentation (when `augment` is
    given), then the official preprocessing and tokenisation. Fields as ReferringDataset documents;
    with `objects`, an (H, W) uint8 map of every object of the image (0 background, k object k) and
    `object_classes` (class index of object k + 1), also "objects" (S, S) uint8 and
    "object_classes" (OBJECT_SLOTS,) int64 padded with -1 (for `loss.object_class_weight`).
    `keep_aspect`: the model's input keeps the image's aspect ratio (`transforms.input_shape`)."""
    if augment is not None:
        image, mask, text, objects = augment_sample(image, mask, text, augment, generator, labels=objects)
    encoded = tokenizer.encode(text)
    item = {
        "image": preprocess_image(image, image_size, keep_aspect),
        "mask": torch.from_numpy(resize_mask(mask, image_size, keep_aspect).astype(np.float32)),
        "input_ids": torch.tensor(encoded.input_ids, dtype=torch.long),
        "attention_mask": torch.tensor(encoded.attention_mask, dtype=torch.long),
        "index": index,
        "text": text,
        "type": kind,
        "id": item_id,
    }
    if objects is not None:
        if len(object_classes) > OBJECT_SLOTS:
            raise ValueError(f"an image has {len(object_classes)} objects; at most {OBJECT_SLOTS} are supported")
        item["objects"] = torch.from_numpy(resize_mask(objects, image_size, keep_aspect).copy())
        item["object_classes"] = torch.tensor(list(object_classes) + [-1] * (OBJECT_SLOTS - len(object_classes)))
    return item


SPATIAL_KEYS = ("image", "mask", "objects")  # item fields at the model's input shape


def collate(items: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Batch dataset items: tensors stacked (B, ...), `index` as a (B,) int64 tensor, other
    fields as lists. Items that failed to load (None) are dropped; None if all failed.
    Items of different input shapes (a `keep_aspect` model on images of several aspect ratios) are
    zero-padded at the bottom and right to the largest, each item's own (h, w) in "input_size"
    (B, 2); `uniform_batches` takes such a batch apart again."""
    items = [item for item in items if item is not None]
    if not items:
        return None
    shapes = [tuple(item["image"].shape[-2:]) for item in items]
    padded = len(set(shapes)) > 1
    height, width = max(h for h, _ in shapes), max(w for _, w in shapes)
    batch: dict[str, Any] = {}
    for key, value in items[0].items():
        values = [item[key] for item in items]
        if isinstance(value, torch.Tensor):
            if padded and key in SPATIAL_KEYS:
                values = [F.pad(v, (0, width - v.shape[-1], 0, height - v.shape[-2])) for v in values]
            batch[key] = torch.stack(values)
        elif key == "index":
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            batch[key] = values
    if padded:
        batch["input_size"] = torch.tensor(shapes, dtype=torch.long)
    return batch


def uniform_batches(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A batch that `collate` padded, as sub-batches of items of one input shape each with the
    padding cropped off (so that scores do not depend on which items share a batch); any other
    batch as itself."""
    if "input_size" not in batch:
        return [batch]
    groups: dict[tuple[int, int], list[int]] = {}
    for row, (h, w) in enumerate(batch["input_size"].tolist()):
        groups.setdefault((h, w), []).append(row)
    parts = []
    for (h, w), rows in groups.items():
        part: dict[str, Any] = {}
        for key, value in batch.items():
            if key == "input_size":
                continue
            if isinstance(value, torch.Tensor):
                value = value[rows]
                part[key] = value[..., :h, :w] if key in SPATIAL_KEYS else value
            else:
                part[key] = [value[row] for row in rows]
        parts.append(part)
    return parts
