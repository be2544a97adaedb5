import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from magnet.data.augment import AugmentConfig
from magnet.data.dataset import ReferringDataset, collate
from magnet.data.jsonl import DataError, load_jsonl
from magnet.data.masks import rle_encode


def save_image(path, height=8, width=10, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), value, np.uint8)).save(path)


def save_mask(path, height=8, width=10, box=(2, 5, 3, 7)):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((height, width), np.uint8)
    top, bottom, left, right = box
    array[top:bottom, left:right] = 255
    Image.fromarray(array).save(path)


def write_jsonl(path, entries):
    path.write_text("\n".join(e if isinstance(e, str) else json.dumps(e) for e in entries) + "\n")
    return path


@pytest.fixture
def folder(tmp_path):
    save_image(tmp_path / "images" / "a.png")
    save_mask(tmp_path / "masks" / "a.png")
    return tmp_path


def good_entry(**changes):
    entry = {"id": "a", "image": "images/a.png", "mask": "masks/a.png", "expressions": ["the grey box"]}
    entry.update(changes)
    return entry


def test_relative_paths_and_multiple_expressions(folder):
    path = write_jsonl(folder / "data.jsonl", [good_entry(expressions=["left box", "grey box"], type="attribute")])
    records, report = load_jsonl(path)
    assert [r.expression for r in records] == ["left box", "grey box"]
    assert [r.expression_index for r in records] == [0, 1]
    assert records[0].image_path == folder / "images" / "a.png"
    assert records[0].mask == str(folder / "masks" / "a.png")
    assert records[0].split == "train" and records[0].type == "attribute"
    assert records[0].source.endswith("data.jsonl:1")
    assert report.records == 2 and report.total_skipped == 0


def test_single_expression_rle_and_polygon_masks_and_default_id(folder):
    mask = np.zeros((8, 10), bool)
    mask[1:3, 1:3] = True
    entries = [
        {"image": "images/a.png", "mask": rle_encode(mask), "expression": "box one"},
        {"image": "images/a.png", "mask": [[1, 1, 6, 1, 6, 6]], "expression": "box two", "split": "val"},
    ]
    records, report = load_jsonl(write_jsonl(folder / "d.jsonl", entries))
    assert [r.id for r in records] == [1, 2]  # line numbers
    assert [r.split for r in records] == ["train", "val"]
    val, _ = load_jsonl(folder / "d.jsonl", split="val")
    assert [r.expression for r in val] == ["box two"]


def test_type_list_parallel_to_expressions(folder):
    entry = good_entry(expressions=["a box", "the box on the left"], type=["attribute", "location"])
    records, _ = load_jsonl(write_jsonl(folder / "d.jsonl", [entry]))
    assert [r.type for r in records] == ["attribute", "location"]


@pytest.fixture
def bad_folder(folder):
    save_mask(folder / "masks" / "empty.png", box=(0, 0, 0, 0))
    save_mask(folder / "masks" / "small.png", height=4, width=4)
    (folder / "images" / "garbage.jpg").write_bytes(b"not an image at all")
    entries = [
        good_entry(id="ok", expressions=["the box", "   ", "\t"]),  # two whitespace-only expressions
        good_entry(id="ok"),  # duplicate id
        good_entry(id="missing", image="images/nope.jpg"),
        good_entry(id="garbage", image="images/garbage.jpg"),
        good_entry(id="empty", mask="masks/empty.png"),
        good_entry(id="small", mask="masks/small.png"),
        good_entry(id="rle", mask={"size": [8, 10], "counts": [3, 4]}),  # does not cover the image
        "{not json",
        json.dumps({"id": "no-mask", "image": "images/a.png", "expression": "box"}),
        json.dumps(["a", "list"]),
        "",  # blank lines are ignored
    ]
    return write_jsonl(folder / "bad.jsonl", entries)


def test_each_bad_case_is_skipped_and_counted(bad_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="magnet.data.jsonl"):
        records, report = load_jsonl(bad_folder)
    assert [(r.id, r.expression) for r in records] == [("ok", "the box")]
    assert dict(report.skipped) == {
        "empty_expression": 2,
        "duplicate_id": 1,
        "missing_image": 1,
        "unreadable_image": 1,
        "empty_mask": 1,
        "mask_size_mismatch": 1,
        "bad_mask": 1,
        "malformed_line": 3,
    }
    assert "duplicate_id" in report.summary()
    assert any("nope.jpg" in message for message in caplog.messages)


def test_strict_raises_first_problem_with_file_line_and_fix(bad_folder):
    with pytest.raises(DataError) as error:
        load_jsonl(bad_folder, strict=True)
    message = str(error.value)
    assert "bad.jsonl:1" in message and "has no words" in message and "Fix:" in message
    assert error.value.reason == "empty_expression"
    assert isinstance(error.value, ValueError)


def test_strict_names_missing_image_and_how_paths_resolve(folder):
    path = write_jsonl(folder / "d.jsonl", [good_entry(), good_entry(id="b", image="images/missing.jpg")])
    with pytest.raises(DataError, match=r"d\.jsonl:2: image .*missing\.jpg does not exist.*relative paths"):
        load_jsonl(path, strict=True)


def make_truncated_image(path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_image_is_caught_at_load_time_when_verifying(folder):
    make_truncated_image(folder / "images" / "cut.png")
    save_mask(folder / "masks" / "cut.png", 64, 64)
    path = write_jsonl(folder / "d.jsonl", [good_entry(id="cut", image="images/cut.png", mask="masks/cut.png")])
    records, report = load_jsonl(path)
    assert records == [] and report.skipped["unreadable_image"] == 1
    records, report = load_jsonl(path, verify_images=False)  # header only: the file looks fine
    assert len(records) == 1


# ---- the dataset over loaded records ----


def test_dataset_items_and_collate(folder):
    records, _ = load_jsonl(write_jsonl(folder / "d.jsonl", [good_entry(expressions=["grey box", "box"])]))
    dataset = ReferringDataset(records, image_size=16)
    item = dataset[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (16, 16) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["input_ids"].shape == (20,) and item["input_ids"].dtype == torch.int64
    assert item["attention_mask"].sum() == 4  # [CLS] grey box [SEP]
    batch = collate([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 16, 16)
    assert batch["index"].tolist() == [0, 1]
    assert batch["text"] == ["grey box", "box"] and batch["id"] == ["a", "a"]


def test_unreadable_image_at_train_time_is_dropped_by_collate(folder, caplog):
    make_truncated_image(folder / "images" / "cut.png")
    save_mask(folder / "masks" / "cut.png", 64, 64)
    entries = [good_entry(), good_entry(id="cut", image="images/cut.png", mask="masks/cut.png")]
    records, _ = load_jsonl(write_jsonl(folder / "d.jsonl", entries), verify_images=False)
    dataset = ReferringDataset(records, image_size=16)
    with caplog.at_level(logging.WARNING, logger="magnet.data.dataset"):
        assert dataset[1] is None
    assert "cut.png" in caplog.text
    batch = collate([dataset[0], dataset[1]])
    assert batch["index"].tolist() == [0]
    assert collate([None]) is None


def test_load_original_applies_exif_orientation(tmp_path):
    # stored 10 wide x 8 high with the left column red; orientation 6 = rotate 90 degrees clockwise to view
    array = np.zeros((8, 10, 3), np.uint8)
    array[:, 0] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(array).save(tmp_path / "photo.jpg", exif=exif, quality=100, subsampling=0)
    save_mask(tmp_path / "mask.png", height=10, width=8, box=(0, 1, 0, 8))  # the top row as viewed
    entry = {"image": "photo.jpg", "mask": "mask.png", "expression": "the red edge"}
    records, report = load_jsonl(write_jsonl(tmp_path / "d.jsonl", [entry]))
    assert report.total_skipped == 0
    image, mask = ReferringDataset(records, image_size=16).load_original(0)
    assert image.size == (8, 10) and mask.shape == (10, 8)
    top_row = np.asarray(image)[0]
    assert (top_row[:, 0] > 200).all() and (top_row[:, 1] < 60).all()  # the red column became the top row


def test_augmentation_is_reproducible_per_seed_and_epoch(folder):
    records, _ = load_jsonl(write_jsonl(folder / "d.jsonl", [good_entry(expressions=["the box on the left"])]))
    config = AugmentConfig(flip_prob=0.5, brightness=0.1)

    def texts(seed, epoch):
        dataset = ReferringDataset(records * 16, image_size=8, augment=config, seed=seed)
        dataset.set_epoch(epoch)
        return [dataset[i]["text"] for i in range(len(dataset))]

    assert texts(0, 0) == texts(0, 0)
    assert set(texts(0, 0)) == {"the box on the left", "the box on the right"}
    assert texts(0, 0) != texts(0, 1) and texts(0, 0) != texts(1, 0)
