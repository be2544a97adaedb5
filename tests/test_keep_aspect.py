"""Aspect-kept model input (`MagNetConfig.keep_aspect`): the input shape, padded batches of mixed
shapes and their uniform sub-batches, scores that do not depend on batching, the predictor and
the grounding maps on non-square photos, and the flag's round trip through a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from magnet.checkpoint import load_model, save_checkpoint
from magnet.cli import main
from magnet.data.dataset import collate, uniform_batches
from magnet.data.sources import DataSpec, build_dataset
from magnet.data.tokenizer import ExpressionTokenizer
from magnet.data.transforms import input_shape, preprocess_image, resize_mask
from magnet.evaluate import score_samples
from magnet.grounding_maps import available_sources
from magnet.predictor import MagNetPredictor
from magnet.train import TrainConfig, train
from tests.helpers import TINY_GROUNDING, tiny_model

# (height, width) of the photos: square, wide, tall, and wider than MAX_ASPECT
PHOTOS = [(48, 48), (40, 80), (90, 45), (30, 150)]


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [
        (300, 300, (192, 192)),
        (176, 352, (192, 384)),  # 1:2 kept exactly
        (352, 176, (384, 192)),
        (300, 400, (192, 256)),  # 1:1.33 -> 192 x 256
        (250, 330, (192, 256)),  # 253.4 rounds to the nearest multiple of 32
        (100, 500, (64, 384)),  # 1:5: the longer side is capped at twice 192, the shorter follows
    ],
)
def test_input_shape_keeps_the_aspect_ratio_with_the_shorter_side_at_the_input_size(height, width, expected):
    assert input_shape(height, width, 192, keep_aspect=True) == expected
    assert input_shape(height, width, 192) == (192, 192)  # the official stretch


def test_image_and_mask_are_resized_to_the_same_input_shape():
    image = Image.fromarray(np.zeros((40, 80, 3), dtype=np.uint8))
    mask = np.zeros((40, 80), dtype=bool)
    mask[:, :40] = True
    assert preprocess_image(image, 64, keep_aspect=True).shape == (3, 64, 128)
    resized = resize_mask(mask, 64, keep_aspect=True)
    assert resized.shape == (64, 128) and resized[:, :64].all() and not resized[:, 64:].any()
    assert preprocess_image(image, 64).shape == (3, 64, 64)


def item(height: int, width: int, index: int) -> dict:
    return {
        "image": torch.rand(3, height, width),
        "mask": (torch.rand(height, width) > 0.5).float(),
        "input_ids": torch.arange(5) + index,
        "index": index,
        "text": f"item {index}",
    }


def test_collate_pads_mixed_shapes_and_uniform_batches_takes_them_apart():
    items = [item(64, 128, 0), item(64, 64, 1), item(64, 128, 2)]
    batch = collate(items)
    assert batch["image"].shape == (3, 3, 64, 128) and batch["mask"].shape == (3, 64, 128)
    assert batch["input_size"].tolist() == [[64, 128], [64, 64], [64, 128]]
    assert not batch["image"][1, :, :, 64:].any()  # zero padding at the right
    parts = uniform_batches(batch)
    assert sorted(part["index"].tolist() for part in parts) == [[0, 2], [1]]
    for part in parts:
        assert "input_size" not in part
        for row, index in enumerate(part["index"].tolist()):
            assert torch.equal(part["image"][row], items[index]["image"])
            assert torch.equal(part["mask"][row], items[index]["mask"])
            assert torch.equal(part["input_ids"][row], items[index]["input_ids"])
            assert part["text"][row] == f"item {index}"


def test_a_batch_of_one_shape_is_not_padded():
    batch = collate([item(64, 64, 0), item(64, 64, 1)])
    assert "input_size" not in batch and uniform_batches(batch) == [batch]


def write_photos(folder: Path, split: str = "val", expressions: tuple[str, ...] = ("the thing",)) -> Path:
    rng = np.random.default_rng(0)
    lines = []
    for k, (h, w) in enumerate(PHOTOS):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{k}.png")
        mask = np.zeros((h, w), dtype=np.uint8)
        mask[h // 4 : h // 2, w // 3 :] = 255
        Image.fromarray(mask).save(folder / f"{k}-mask.png")
        lines.append({"image": f"{k}.png", "mask": f"{k}-mask.png", "expressions": list(expressions), "split": split})
    path = folder / "photos.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


@pytest.mark.parametrize("original_resolution", [False, True])
def test_scores_of_mixed_shapes_do_not_depend_on_the_batch_size(tmp_path, original_resolution):
    model = tiny_model(keep_aspect=True)
    tokenizer = ExpressionTokenizer(model.config.max_tokens)
    dataset, _ = build_dataset(DataSpec(path=str(write_photos(tmp_path))), "val", 64, tokenizer, keep_aspect=True)
    assert [tuple(dataset[k]["image"].shape[-2:]) for k in range(len(PHOTOS))] == [
        (64, 64),
        (64, 128),
        (128, 64),
        (32, 128),
    ]
    scores = [
        score_samples(model, dataset, batch_size=b, progress=False, original_resolution=original_resolution)
        for b in (1, 4)
    ]
    one, four = (np.array([scores_k.intersections, scores_k.unions]) for scores_k in scores)
    np.testing.assert_allclose(one, four)


def test_predictor_and_grounding_maps_on_a_non_square_photo():
    model = tiny_model(keep_aspect=True, grounding=TINY_GROUNDING)
    predictor = MagNetPredictor(model, device="cpu")
    photo = np.random.default_rng(1).integers(0, 256, (50, 75, 3), dtype=np.uint8)
    pixels, size = predictor.prepare_image(photo)
    assert pixels.shape == (1, 3, 64, 96) and size == (50, 75)
    (prediction,) = predictor.predict(photo, "the red one")
    assert prediction.mask.shape == (50, 75)
    for source in available_sources(model):
        grounding = predictor.ground(photo, "the red one", source=source)
        assert grounding.maps.shape == (len(prediction.tokens), 50, 75)
        assert np.isfinite(grounding.maps).all()


def test_keep_aspect_survives_a_checkpoint_round_trip(tmp_path):
    path = save_checkpoint(tiny_model(keep_aspect=True), tmp_path / "aspect.safetensors")
    assert load_model(path, device="cpu").config.keep_aspect is True
    path = save_checkpoint(tiny_model(), tmp_path / "square.safetensors")
    assert load_model(path, device="cpu").config.keep_aspect is False


def test_convert_sets_or_keeps_the_flag(tmp_path):
    source = save_checkpoint(tiny_model(), tmp_path / "square.safetensors")
    assert main(["convert", str(source), str(tmp_path / "aspect.safetensors"), "--keep-aspect"]) == 0
    assert load_model(tmp_path / "aspect.safetensors", device="cpu").config.keep_aspect is True
    assert main(["convert", str(tmp_path / "aspect.safetensors"), str(tmp_path / "copy.safetensors")]) == 0
    assert load_model(tmp_path / "copy.safetensors", device="cpu").config.keep_aspect is True
    assert (
        main(["convert", str(tmp_path / "copy.safetensors"), str(tmp_path / "back.safetensors"), "--no-keep-aspect"])
        == 0
    )
    assert load_model(tmp_path / "back.safetensors", device="cpu").config.keep_aspect is False


def test_a_keep_aspect_model_trains_on_photos_of_mixed_shapes_in_batches_of_one_shape(tmp_path):
    data = write_photos(tmp_path, split="train", expressions=("the thing", "the band"))
    dataset, _ = build_dataset(DataSpec(path=str(data)), "train", 64, ExpressionTokenizer(20), keep_aspect=True)
    assert dataset.input_shapes() == [(64, 64)] * 2 + [(64, 128)] * 2 + [(128, 64)] * 2 + [(32, 128)] * 2
    init = save_checkpoint(tiny_model(shallow=True, grounding=TINY_GROUNDING), tmp_path / "square.safetensors")
    settings = {
        "init": str(init),
        "model": {"keep_aspect": True},
        "data": {"path": str(data), "val_split": "train"},
        "batch_size": 2,  # two records of each shape: every batch is one of them
        "max_steps": 2,
        "warmup_steps": 1,
        "eval_every": 2,
        "save_every": 2,
        "num_workers": 0,
        "device": "cpu",
        "out_dir": str(tmp_path / "run"),
    }
    train(TrainConfig.from_dict(settings))
    trained = load_model(tmp_path / "run" / "last.safetensors", device="cpu")
    assert trained.config.keep_aspect
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("val_overall_iou" in m for m in metrics)
    assert all(np.isfinite(m["loss"]) for m in metrics if "loss" in m)
