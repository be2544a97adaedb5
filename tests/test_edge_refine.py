"""Edge refinement (`magnet.edge_refine`): the guided filter's parts against direct computations,
masks snapped to a shape's edges, the photo-size path, and the setting's way through the config,
checkpoints, `convert`, training's `--init`, the predictor and the evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from magnet.checkpoint import load_model, save_checkpoint
from magnet.cli import main
from magnet.config import MagNetConfig
from magnet.data.sources import DataSpec, build_dataset
from magnet.data.tokenizer import ExpressionTokenizer
from magnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from magnet.edge_refine import (
    box_mean,
    guided_coefficients,
    photo_tensor,
    refine_probabilities,
    solve_symmetric3,
    to_image_size,
    unnormalise,
)
from magnet.errors import ConfigError, UserError
from magnet.evaluate import score_samples
from magnet.modeling import resize_probabilities
from magnet.predictor import MagNetPredictor
from tests.helpers import tiny_model


def normalise(rgb: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (rgb - mean) / std


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("radius", [1, 3, 8])
def test_box_mean_is_the_mean_of_each_window_clipped_at_the_borders(radius):
    x = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    expected = torch.empty_like(x)
    for i in range(17):
        for j in range(23):
            window = x[..., max(0, i - radius) : i + radius + 1, max(0, j - radius) : j + radius + 1]
            expected[..., i, j] = window.mean((-2, -1))
    torch.testing.assert_close(box_mean(x, radius), expected)


def test_symmetric_solve_matches_a_general_solver():
    a = torch.randn(2, 5, 7, 3, 3, dtype=torch.float64)
    matrices = a @ a.transpose(-1, -2) + 0.1 * torch.eye(3, dtype=torch.float64)
    rhs = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    expected = torch.linalg.solve(matrices, rhs.permute(0, 2, 3, 1)[..., None])[..., 0].permute(0, 3, 1, 2)
    entries = {f"{i}{j}": matrices[..., i, j] for i in range(3) for j in range(i, 3)}
    torch.testing.assert_close(solve_symmetric3(entries, rhs), expected)


def square_scene(size: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An orange square on a blue background (RGB in [0, 1]), its mask, and the kind of mask
    probability a coarse model gives: the mask's coverage of 8 x 8 cells, upsampled bilinearly."""
    rgb = torch.empty(1, 3, size, size)
    rgb[:, 0], rgb[:, 1], rgb[:, 2] = 0.1, 0.2, 0.7
    truth = torch.zeros(1, 1, size, size, dtype=torch.bool)
    truth[..., 21:46, 18:43] = True  # edges off the 8-pixel grid
    rgb[:, :, 21:46, 18:43] = torch.tensor([0.9, 0.5, 0.1]).view(1, 3, 1, 1)
    coarse = F.avg_pool2d(truth.float(), 8)
    prob = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return rgb, truth, prob


def test_refinement_snaps_a_coarse_mask_to_the_shape_edges():
    rgb, truth, prob = square_scene()
    raw = iou(prob > 0.5, truth)
    refined = refine_probabilities(prob, normalise(rgb), radius=6)
    assert refined.shape == prob.shape and refined.min() >= 0 and refined.max() <= 1
    assert raw < 0.85 and iou(refined > 0.5, truth) > 0.99


def test_on_a_flat_guide_the_filter_is_a_double_box_mean():
    prob = torch.rand(1, 1, 20, 20)
    guide = torch.full((1, 3, 20, 20), 0.5)
    a, b = guided_coefficients(guide, prob, radius=2)
    assert a.abs().max() < 1e-6
    torch.testing.assert_close(b, box_mean(box_mean(prob, 2), 2))


def test_at_the_photo_size_the_coefficients_apply_to_the_photo():
    rgb, truth, prob = square_scene(64)
    pixels = normalise(rgb)
    # the photo at the input size: the same as refining at the input size
    torch.testing.assert_close(
        refine_probabilities(prob, pixels, 4, photo=unnormalise(pixels)), refine_probabilities(prob, pixels, 4)
    )
    # a photo twice the size: the result is at its size and follows its edges
    photo = F.interpolate(rgb, scale_factor=2, mode="nearest")
    big_truth = F.interpolate(truth.float(), scale_factor=2, mode="nearest") > 0.5
    refined = to_image_size(prob, pixels, (128, 128), radius=6, photo=photo)
    assert refined.shape == (1, 1, 128, 128)
    assert iou(refined > 0.5, big_truth) > 0.98
    assert iou(resize_probabilities(prob, (128, 128)) > 0.5, big_truth) < 0.86


def test_without_a_radius_the_masks_are_resized_as_the_official_pipeline_does():
    prob = torch.rand(2, 1, 16, 16)
    pixels = torch.randn(1, 3, 16, 16)
    torch.testing.assert_close(to_image_size(prob, pixels, (40, 30)), resize_probabilities(prob, (40, 30)))
    with pytest.raises(ValueError, match="needs the photo"):
        to_image_size(prob, pixels, (40, 30), radius=2)


def test_photo_tensor_reads_rgb_in_the_unit_range():
    image = Image.fromarray(np.full((5, 7, 3), 255, dtype=np.uint8)).convert("L")
    tensor = photo_tensor(image)
    assert tensor.shape == (1, 3, 5, 7) and torch.all(tensor == 1)


@pytest.mark.parametrize("radius", [-1, 2.5, True, "4"])
def test_a_bad_radius_is_a_config_error(radius):
    with pytest.raises(ConfigError, match="edge_refine_radius"):
        MagNetConfig(edge_refine_radius=radius)


def test_the_radius_travels_through_checkpoints_and_convert(tmp_path):
    path = save_checkpoint(tiny_model(edge_refine_radius=3), tmp_path / "refined.safetensors")
    assert load_model(path, device="cpu").config.edge_refine_radius == 3
    assert main(["convert", str(path), str(tmp_path / "copy.safetensors")]) == 0
    assert load_model(tmp_path / "copy.safetensors", device="cpu").config.edge_refine_radius == 3
    assert main(["convert", str(path), str(tmp_path / "raw.safetensors"), "--edge-refine-radius", "0"]) == 0
    assert load_model(tmp_path / "raw.safetensors", device="cpu").config.edge_refine_radius == 0
    assert main(["convert", str(path), str(tmp_path / "bad.safetensors"), "--edge-refine-radius", "-2"]) == 2


def test_the_radius_may_change_when_training_starts_from_a_checkpoint(tmp_path):
    from magnet.train import TrainConfig, build_model

    init = save_checkpoint(tiny_model(shallow=True), tmp_path / "init.safetensors")
    config = TrainConfig(init=str(init), grounding=False, model={"edge_refine_radius": 5, "keep_aspect": True})
    model = build_model(config)
    assert model.config.edge_refine_radius == 5 and model.config.keep_aspect is True


def test_the_predictor_refines_at_the_photo_size_as_the_checkpoint_says():
    photo = np.random.default_rng(3).integers(0, 256, (50, 75, 3), dtype=np.uint8)
    refined_model = tiny_model(edge_refine_radius=3)
    refined = MagNetPredictor(refined_model, device="cpu")
    assert refined.edge_refine_radius == 3
    (with_refine,) = refined.predict(photo, "the red one")
    (raw,) = MagNetPredictor(refined_model, device="cpu", edge_refine_radius=0).predict(photo, "the red one")
    (plain,) = MagNetPredictor(tiny_model(), device="cpu").predict(photo, "the red one")
    assert with_refine.probability.shape == raw.probability.shape == (50, 75)
    np.testing.assert_array_equal(raw.probability, plain.probability)  # same weights, refinement off
    assert not np.allclose(with_refine.probability, raw.probability)
    with pytest.raises(UserError, match="edge_refine_radius"):
        MagNetPredictor(refined_model, device="cpu", edge_refine_radius=-1)


@pytest.mark.parametrize("original_resolution", [False, True])
def test_evaluation_follows_the_checkpoint_and_the_override(original_resolution):
    model = tiny_model(edge_refine_radius=3)
    tokenizer = ExpressionTokenizer(model.config.max_tokens)
    dataset, _ = build_dataset(DataSpec(path="synthetic", synthetic_val_scenes=6), "val", 64, tokenizer)
    options = dict(progress=False, original_resolution=original_resolution)
    as_saved = score_samples(model, dataset, **options)
    refined = score_samples(model, dataset, edge_refine_radius=3, **options)
    raw = score_samples(model, dataset, edge_refine_radius=0, **options)
    plain = score_samples(tiny_model(), dataset, **options)
    np.testing.assert_array_equal(as_saved.unions, refined.unions)
    np.testing.assert_array_equal(raw.unions, plain.unions)
    assert not np.array_equal(refined.unions, raw.unions)


def test_evaluate_cli_rejects_a_negative_radius(tmp_path, capsys):
    from magnet.errors import exit_code_of
    from magnet.evaluate import main as evaluate_main

    path = save_checkpoint(tiny_model(), tmp_path / "tiny.safetensors")
    argv = ["--checkpoint", str(path), "--data", "synthetic", "--edge-refine-radius", "-1"]
    assert exit_code_of(lambda: evaluate_main(argv)) == 2
    assert "--edge-refine-radius must be >= 0" in capsys.readouterr().err


def test_benchmark_times_both_post_processings_for_each_photo(capsys):
    from magnet.benchmarks.edge_refine import main as benchmark

    rows = benchmark(["--photo", "48x64", "--photo", "100x50", "--size", "32", "--runs", "1"])
    assert [(r["height"], r["width"]) for r in rows] == [(48, 64), (100, 50)]
    assert all(r["resized_ms"] > 0 and r["refined_ms"] > 0 and r["one_region_ms"] > 0 for r in rows)
    out = capsys.readouterr().out
    assert "| 64 x 48 | 32 x 32 |" in out and "| 50 x 100 | 32 x 64 |" in out
