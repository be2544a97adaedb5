import json
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from magnet.data.dataset import ReferringDataset
from magnet.data.jsonl import DataError
from magnet.data.masks import rle_encode
from magnet.data.refcoco import load_refcoco, safe_load_pickle

SPLITS = ("train", "train", "val", "testA", "testB")


def make_refer_layout(root, protocol=pickle.HIGHEST_PROTOCOL):
    """refcoco with one image per ref; ref i has i + 1 sentences. Ref 2 uses a compressed RLE,
    ref 3 uncompressed RLE counts, the others polygons."""
    image_dir = root / "images" / "mscoco" / "images" / "train2014"
    image_dir.mkdir(parents=True)
    (root / "refcoco").mkdir()
    images, annotations, refs = [], [], []
    for i, split in enumerate(SPLITS):
        name = f"COCO_train2014_{i:012d}.jpg"
        Image.fromarray(np.full((12, 16, 3), 50 * i, np.uint8)).save(image_dir / name)
        images.append({"id": 100 + i, "file_name": name, "height": 12, "width": 16})
        segmentation = [[2, 2, 10, 2, 10, 8, 2, 8]]
        if i in (2, 3):
            mask = np.zeros((12, 16), bool)
            mask[3:6, 4:9] = True
            segmentation = rle_encode(mask)
            if i == 3:
                segmentation = {"size": [12, 16], "counts": [4 * 12 + 3, 3, 9, 3, 9, 3, 9, 3, 9, 3, 6 + 7 * 12]}
        annotations.append(
            {"id": 200 + i, "image_id": 100 + i, "segmentation": segmentation, "bbox": [2, 2, 8, 6], "category_id": 1}
        )
        sentences = [
            {"sent": f"object {i} number {k}", "raw": f"Object {i}, number {k}!", "tokens": [], "sent_id": 10 * i + k}
            for k in range(i + 1)
        ]
        refs.append(
            {
                "ref_id": i,
                "ann_id": 200 + i,
                "image_id": 100 + i,
                "split": split,
                "sentences": sentences,
                "file_name": f"COCO_train2014_{i:012d}_{200 + i}.jpg",
                "category_id": 1,
            }
        )
    (root / "refcoco" / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]})
    )
    with open(root / "refcoco" / "refs(unc).p", "wb") as file:
        pickle.dump(refs, file, protocol=protocol)
    return root


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_loads_every_split(tmp_path, protocol):
    root = make_refer_layout(tmp_path, protocol)
    counts = {split: len(load_refcoco(root, "refcoco", split)[0]) for split in ("train", "val", "testA", "testB")}
    assert counts == {"train": 1 + 2, "val": 3, "testA": 4, "testB": 5}
    everything, report = load_refcoco(root, "refcoco", split=None)
    assert len(everything) == 15 and report.total_skipped == 0


def test_records_use_raw_sentences_and_coco_file_names(tmp_path):
    root = make_refer_layout(tmp_path)
    records, _ = load_refcoco(root, "refcoco", "val")
    assert [r.expression for r in records] == [f"Object 2, number {k}!" for k in range(3)]
    assert [r.expression_index for r in records] == [0, 1, 2]
    assert records[0].id == 2 and records[0].split == "val"
    assert records[0].image_path.name == "COCO_train2014_000000000002.jpg"


def test_rle_forms_decode_to_the_same_mask(tmp_path):
    root = make_refer_layout(tmp_path)
    val, _ = load_refcoco(root, "refcoco", "val")  # compressed counts
    test_a, _ = load_refcoco(root, "refcoco", "testA")  # list counts
    dataset = ReferringDataset(val[:1] + test_a[:1], image_size=8)
    mask_compressed = dataset.load_original(0)[1]
    mask_list = dataset.load_original(1)[1]
    assert mask_compressed.sum() == 15
    np.testing.assert_array_equal(mask_compressed, mask_list)
    assert dataset[1]["mask"].shape == (8, 8)


def test_missing_image_is_skipped_and_counted(tmp_path):
    root = make_refer_layout(tmp_path)
    (root / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000000004.jpg").unlink()
    records, report = load_refcoco(root, "refcoco", split=None)
    assert len(records) == 10 and report.skipped["missing_image"] == 1
    with pytest.raises(DataError, match="ref_id 4"):
        load_refcoco(root, "refcoco", split="testB", strict=True)


@pytest.mark.parametrize(
    "dataset, split_by, split, listed",
    [
        ("refclef", None, "train", "refcoco"),
        ("refcocog", "unc", "train", "google"),
        ("refcocog", "google", "test", "'val'"),
        ("refcoco+", None, "test", "testB"),
    ],
)
def test_invalid_combinations_list_the_valid_choices(tmp_path, dataset, split_by, split, listed):
    with pytest.raises(ValueError, match="choose one of") as error:
        load_refcoco(tmp_path, dataset, split, split_by)
    assert listed in str(error.value)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    root = make_refer_layout(tmp_path)
    marker = tmp_path / "pwned"
    with open(root / "refcoco" / "refs(unc).p", "wb") as file:
        pickle.dump([{"ref_id": 0, "payload": Exploit(marker)}], file)
    with pytest.raises(DataError, match="refusing to load .*system"):
        load_refcoco(root, "refcoco", "train")
    assert not marker.exists()


def test_pickled_class_instances_are_refused(tmp_path):
    path = tmp_path / "objects.p"
    path.write_bytes(pickle.dumps([Exploit("x")], protocol=2))
    with pytest.raises(DataError, match="only lists, dicts"):
        safe_load_pickle(path)
    path.write_bytes(pickle.dumps({"a": [1, 2.5, "x", (3,), {4}, frozenset({5})]}, protocol=2))
    assert safe_load_pickle(path) == {"a": [1, 2.5, "x", (3,), {4}, frozenset({5})]}
