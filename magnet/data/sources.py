"""Where training and evaluation samples come from: one spec for every supported layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .jsonl import DataError, DataReport, ReferringRecord, load_jsonl
from .refcoco import load_refcoco
from .tokenizer import ExpressionTokenizer


@dataclass
class DataSpec:
    """A dataset: `path` to a JSON Lines file (our format, synthetic data included), or a
    refer-toolkit root with `dataset` set (refcoco, refcoco+, refcocog)."""

    path: str = "data/synthetic/dataset.jsonl"
    dataset: str | None = None  # refcoco | refcoco+ | refcocog: path is then the refer root
    split_by: str | None = None  # unc | umd | google (default: the dataset's usual one)
    image_root: str | None = None  # COCO train2014 images (default: <root>/images/mscoco/images/train2014)
    train_split: str = "train"
    val_split: str = "val"
    # path "synthetic": scenes drawn on the fly instead of read from files
    synthetic_scenes: int = 20000
    synthetic_val_scenes: int = 300
    synthetic_seed: int = 0
    synthetic_balance_types: bool = False  # draw expression types uniformly, not objects
    synthetic_type_weights: dict[str, float] | None = None  # with balance_types: e.g. {ordinal: 2.0}
    synthetic_counting_share: float = 0.0  # items that name an object inside its row ("the second ... of three")
    synthetic_train_style: str | None = None  # the training scenes' look, e.g. "varied" (default: as val)
    synthetic_train_style_share: float = 1.0  # the share of training scenes in that look; the rest as val

    @property
    def is_synthetic_stream(self) -> bool:
        return str(self.path) == "synthetic"

    def describe(self) -> str:
        if self.is_synthetic_stream:
            return f"synthetic scenes drawn on the fly (seed {self.synthetic_seed}, {self.synthetic_scenes} per epoch)"
        if self.dataset:
            return f"{self.dataset} ({self.split_by or 'default split'}) at {self.path}"
        return str(self.path)


def load_records(
    spec: DataSpec, split: str | None, strict: bool = False, tokenizer: ExpressionTokenizer | None = None
) -> tuple[list[ReferringRecord], DataReport]:
    """Records of one split and a report of what was skipped."""
    if spec.dataset:
        return load_refcoco(
            spec.path, spec.dataset, split, spec.split_by, spec.image_root, strict=strict, tokenizer=tokenizer
        )
    path = Path(spec.path)
    if not path.exists():
        raise FileNotFoundError(
            f"dataset {path} not found; generate the synthetic one with "
            "`python -m magnet.data.synthetic data/synthetic`, or point --data at your .jsonl"
        )
    return load_jsonl(path, split=split, strict=strict, tokenizer=tokenizer)


def build_dataset(
    spec: DataSpec,
    split: str,
    image_size: int,
    tokenizer: ExpressionTokenizer,
    augment=None,
    seed: int = 0,
    strict: bool = False,
    limit: int | None = None,
    keep_aspect: bool = False,
):
    """A torch Dataset of one split (items as ReferringDataset gives them) and its load report;
    `keep_aspect` as the model's config says (`transforms.input_shape`)."""
    from .dataset import ReferringDataset

    if spec.is_synthetic_stream:
        from .synthetic import SyntheticStream

        training = split == spec.train_split  # the training options shape the training split only
        scenes = spec.synthetic_scenes if training else spec.synthetic_val_scenes
        scenes = min(scenes, limit) if limit else scenes
        stream = SyntheticStream(
            split,
            scenes,
            spec.synthetic_seed,
            256,
            tokenizer,
            image_size,
            augment=augment,
            balance_types=spec.synthetic_balance_types and training,
            type_weights=spec.synthetic_type_weights if training else None,
            counting_share=spec.synthetic_counting_share if training else 0.0,
            style=spec.synthetic_train_style if training else None,
            style_share=spec.synthetic_train_style_share if training else 1.0,
            keep_aspect=keep_aspect,
        )
        return stream, DataReport("synthetic")
    records, report = load_records(spec, split, strict, tokenizer)
    if not records:
        raise DataError(f"no usable samples in split {split!r} of {spec.describe()} ({report.summary()})")
    dataset = ReferringDataset(
        records[:limit], image_size, tokenizer, augment=augment, seed=seed, keep_aspect=keep_aspect
    )
    return dataset, report
