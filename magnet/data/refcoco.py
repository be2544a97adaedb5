"""RefCOCO, RefCOCO+ and RefCOCOg in the refer toolkit's layout, as ReferringRecords.

    <root>/<dataset>/refs(<split_by>).p   pickled list of refs: {"ref_id", "ann_id", "image_id",
                                          "split", "sentences": [{"sent", "raw", "tokens", "sent_id"}], ...}
    <root>/<dataset>/instances.json       COCO-style "images", "annotations" (segmentation), "categories"
    <image_root>/COCO_train2014_*.jpg     defaults to <root>/images/mscoco/images/train2014

The pickle is read with SafeUnpickler, which rebuilds only lists, dicts, strings and numbers:
a refs file that asks for any other object is refused, never executed.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .jsonl import DataError, DataReport, RecordValidator, ReferringRecord
from .tokenizer import ExpressionTokenizer

# (dataset, split_by) -> its splits
SPLITS = {
    ("refcoco", "unc"): ("train", "val", "testA", "testB"),
    ("refcoco+", "unc"): ("train", "val", "testA", "testB"),
    ("refcocog", "umd"): ("train", "val", "test"),
    ("refcocog", "google"): ("train", "val"),
}
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain containers; every other global is refused."""

    ALLOWED = {("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset")}

    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # Python 2 pickles
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load '{module}.{name}': only lists, dicts, strings and numbers may be unpickled"
        )


def safe_load_pickle(path: Path) -> Any:
    """Unpickle a file of plain containers with SafeUnpickler; DataError (unsafe_pickle) otherwise."""
    with path.open("rb") as file:
        try:
            return SafeUnpickler(file, encoding="utf-8", errors="replace").load()
        except pickle.UnpicklingError as error:
            raise DataError("unsafe_pickle", str(path), str(error)) from error


def check_choice(dataset: str, split_by: str | None, split: str | None) -> str:
    """Validate dataset / split_by / split; returns split_by (its default when None)."""
    if dataset not in DEFAULT_SPLIT_BY:
        raise ConfigError(f"unknown dataset {dataset!r}; choose one of {sorted(DEFAULT_SPLIT_BY)}")
    split_by = split_by or DEFAULT_SPLIT_BY[dataset]
    if (dataset, split_by) not in SPLITS:
        valid = [s for d, s in SPLITS if d == dataset]
        raise ConfigError(f"{dataset} has no split_by {split_by!r}; choose one of {valid}")
    if split is not None and split not in SPLITS[dataset, split_by]:
        raise ConfigError(
            f"{dataset} ({split_by}) has no split {split!r}; choose one of {list(SPLITS[dataset, split_by])}"
        )
    return split_by


def load_refcoco(
    root: str | Path,
    dataset: str = "refcoco",
    split: str | None = "train",
    split_by: str | None = None,
    image_root: str | Path | None = None,
    strict: bool = False,
    verify_images: bool = False,
    tokenizer: ExpressionTokenizer | None = None,
) -> tuple[list[ReferringRecord], DataReport]:
    """Refs of one split (`split=None`: all splits) -> one record per sentence, and a report.

    Expressions are the sentences' "raw" text (as the official pipeline reads them). Images
    are checked by their header only unless `verify_images`, as COCO files are rarely broken.
    """
    split_by = check_choice(dataset, split_by, split)
    folder = Path(root) / dataset
    image_root = Path(image_root) if image_root else Path(root) / "images" / "mscoco" / "images" / "train2014"
    refs_path = folder / f"refs({split_by}).p"
    instances_path = folder / "instances.json"
    for needed in (refs_path, instances_path):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{needed} does not exist; expected the refer toolkit layout "
                f"<root>/{dataset}/refs({split_by}).p and <root>/{dataset}/instances.json"
            )
    refs = safe_load_pickle(refs_path)
    with instances_path.open(encoding="utf-8") as file:
        instances = json.load(file)
    images = {image["id"]: image for image in instances["images"]}
    annotations = {ann["id"]: ann for ann in instances["annotations"]}

    validator = RecordValidator(tokenizer, verify_images)
    report = DataReport(source=str(refs_path))
    records: list[ReferringRecord] = []
    for ref in refs:
        if split is not None and ref["split"] != split:
            continue
        where = f"{refs_path} ref_id {ref['ref_id']}"
        try:
            image, annotation = _lookup(ref, images, annotations, where)
            image_path = image_root / image["file_name"]
            _check_ref(image, annotation, image_path, validator, where)
        except DataError as error:
            report.add(error, strict)
            continue
        records.extend(_ref_records(ref, image_path, annotation["segmentation"], where, validator, report, strict))
    report.records = len(records)
    report.log()
    return records, report


def _lookup(ref: dict, images: dict, annotations: dict, where: str) -> tuple[dict, dict]:
    if ref["image_id"] not in images:
        raise DataError("missing_image", where, f"image_id {ref['image_id']} is not in instances.json")
    if ref["ann_id"] not in annotations:
        raise DataError("bad_mask", where, f"ann_id {ref['ann_id']} is not in instances.json")
    return images[ref["image_id"]], annotations[ref["ann_id"]]


def _check_ref(image: dict, annotation: dict, image_path: Path, validator: RecordValidator, where: str) -> None:
    size = validator.image_size(image_path, where)
    if size != (image["height"], image["width"]):
        raise DataError(
            "mask_size_mismatch",
            where,
            f"{image_path} is {size[0]}x{size[1]} (h x w) but instances.json says {image['height']}x{image['width']}",
        )
    validator.mask(annotation["segmentation"], size, where)


def _ref_records(
    ref: dict,
    image_path: Path,
    segmentation: Any,
    where: str,
    validator: RecordValidator,
    report: DataReport,
    strict: bool,
) -> list[ReferringRecord]:
    records = []
    for index, sentence in enumerate(ref["sentences"]):
        try:
            text = validator.expression(sentence.get("raw", sentence.get("sent")), where)
        except DataError as error:
            report.add(error, strict)
            continue
        records.append(
            ReferringRecord(
                id=ref["ref_id"],
                image_path=image_path,
                mask=segmentation,
                expression=text,
                split=ref["split"],
                source=where,
                expression_index=index,
            )
        )
    return records
