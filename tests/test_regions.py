"""One region per expression (`magnet.regions`): which region a torn mask keeps, and the setting's
way through the config, checkpoints, `convert`, training's `--init`, the predictor and the
evaluation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from magnet.checkpoint import load_model, save_checkpoint
from magnet.cli import main
from magnet.config import MagNetConfig
from magnet.data.sources import DataSpec, build_dataset
from magnet.data.tokenizer import ExpressionTokenizer
from magnet.errors import ConfigError
from magnet.evaluate import score_samples
from magnet.predictor import MagNetPredictor
from magnet.regions import keep_one_region, most_certain_region
from tests.helpers import tiny_model


def regions(mask: np.ndarray) -> int:
    return cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1


def two_blobs() -> np.ndarray:
    prob = np.zeros((40, 60), np.float32)
    prob[5:25, 5:25] = 0.7  # the larger region, less certain
    prob[10:20, 40:50] = 0.95  # the smaller, more certain
    return prob


def test_the_most_certain_region_wins_over_the_largest():
    region = most_certain_region(two_blobs())
    expected = np.zeros((40, 60), bool)
    expected[10:20, 40:50] = True
    np.testing.assert_array_equal(region, expected)


def test_a_few_stray_pixels_are_never_the_region():
    prob = two_blobs()
    prob[35, 2] = prob[35, 3] = 1.0  # 2 pixels: under 5 % of the largest region's 400
    region = most_certain_region(prob)
    assert region[12, 45] and not region[35, 2]


def test_regions_touching_at_a_corner_are_one_region():
    prob = np.zeros((10, 10), np.float32)
    prob[2:5, 2:5] = prob[5:8, 5:8] = 0.9
    assert most_certain_region(prob) is None


@pytest.mark.parametrize("fill", [0.0, 0.8])
def test_a_mask_of_one_region_or_none_is_left_as_it_is(fill):
    prob = torch.full((1, 1, 8, 8), 0.2)
    prob[..., 2:6, 2:6] = fill
    torch.testing.assert_close(keep_one_region(prob), prob)


def test_each_map_of_a_batch_keeps_its_own_region_and_nothing_outside_it():
    first = torch.from_numpy(two_blobs())
    second = first.flip(-1) * torch.tensor(0.9)
    prob = torch.stack([first, second])[:, None]
    kept = keep_one_region(prob)
    for k in range(2):
        mask = (kept[k, 0] > 0.5).numpy()
        assert regions(mask) == 1
        np.testing.assert_array_equal(mask, most_certain_region(prob[k, 0].numpy()))
        assert float(kept[k, 0][~torch.from_numpy(mask)].abs().max()) == 0.0


def test_the_threshold_decides_what_the_regions_are():
    prob = torch.from_numpy(two_blobs())[None, None]
    assert regions((keep_one_region(prob, 0.8)[0, 0] > 0.8).numpy()) == 1
    torch.testing.assert_close(keep_one_region(prob, 0.8), prob)  # one region above 0.8


@pytest.mark.parametrize("value", [1, "yes", None])
def test_a_non_boolean_setting_is_a_config_error(value):
    with pytest.raises(ConfigError, match="single_region"):
        MagNetConfig(single_region=value)


def test_the_setting_travels_through_checkpoints_and_convert(tmp_path):
    path = save_checkpoint(tiny_model(single_region=True), tmp_path / "one.safetensors")
    assert load_model(path, device="cpu").config.single_region is True
    assert main(["convert", str(path), str(tmp_path / "copy.safetensors")]) == 0
    assert load_model(tmp_path / "copy.safetensors", device="cpu").config.single_region is True
    assert main(["convert", str(path), str(tmp_path / "all.safetensors"), "--no-single-region"]) == 0
    assert load_model(tmp_path / "all.safetensors", device="cpu").config.single_region is False


def test_the_setting_may_change_when_training_starts_from_a_checkpoint(tmp_path):
    from magnet.train import TrainConfig, build_model

    init = save_checkpoint(tiny_model(shallow=True), tmp_path / "init.safetensors")
    model = build_model(TrainConfig(init=str(init), grounding=False, model={"single_region": True}))
    assert model.config.single_region is True


def test_the_predictor_cuts_each_mask_to_its_most_certain_region():
    photo = np.random.default_rng(3).integers(0, 256, (50, 75, 3), dtype=np.uint8)
    model = tiny_model(single_region=True)
    (whole,) = MagNetPredictor(model, device="cpu", single_region=False).predict(photo, "the red one")
    threshold = float(np.quantile(whole.probability, 0.6))  # an untrained model's map: many regions
    (whole,) = MagNetPredictor(model, device="cpu", single_region=False).predict(photo, "the red one", threshold)
    (one,) = MagNetPredictor(model, device="cpu").predict(photo, "the red one", threshold)
    assert regions(whole.mask) >= 2
    assert regions(one.mask) == 1
    np.testing.assert_array_equal(one.mask, most_certain_region(whole.probability, threshold))
    (plain,) = MagNetPredictor(tiny_model(), device="cpu").predict(photo, "the red one", threshold)
    np.testing.assert_array_equal(whole.probability, plain.probability)  # same weights, setting off


@pytest.mark.parametrize("original_resolution", [False, True])
def test_evaluation_follows_the_checkpoint_and_the_override(original_resolution):
    model = tiny_model(single_region=True)
    tokenizer = ExpressionTokenizer(model.config.max_tokens)
    dataset, _ = build_dataset(DataSpec(path="synthetic", synthetic_val_scenes=6), "val", 64, tokenizer)
    options = dict(progress=False, original_resolution=original_resolution, threshold=0.45)
    as_saved = score_samples(model, dataset, **options)
    whole = score_samples(model, dataset, single_region=False, **options)
    plain = score_samples(tiny_model(), dataset, **options)
    np.testing.assert_array_equal(whole.unions, plain.unions)
    assert not np.array_equal(as_saved.unions, whole.unions)


def test_pipeline_overrides_keep_what_is_not_given_and_are_validated():
    config = MagNetConfig(edge_refine_radius=6, single_region=True)
    assert config.with_pipeline(edge_refine_radius=None, single_region=False).edge_refine_radius == 6
    assert config.with_pipeline(edge_refine_radius=None, single_region=False).single_region is False
    with pytest.raises(ConfigError, match="single_region"):
        config.with_pipeline(single_region="no")
    with pytest.raises(ConfigError, match="not pipeline fields"):
        config.with_pipeline(depths=(2, 2))


def test_a_map_that_needs_no_cut_is_not_copied():
    prob = torch.full((2, 1, 8, 8), 0.2)
    prob[..., 2:6, 2:6] = 0.8
    assert keep_one_region(prob) is prob
