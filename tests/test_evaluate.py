"""Evaluation: the metrics of evaluate_model on predictions made by hand, the official (model
resolution) and original-resolution protocols on non-square photos, and `python -m magnet evaluate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from magnet.checkpoint import load_model
from magnet.config import MagNetConfig
from magnet.data.sources import DataSpec, build_dataset
from magnet.data.tokenizer import ExpressionTokenizer
from magnet.evaluate import evaluate_model

ROOT = Path(__file__).resolve().parents[1]
H, W = 30, 40  # photos 40 wide, 30 tall
S = 120  # model input: each photo pixel becomes a 4 (rows) x 3 (columns) block of model pixels


def box(shape, rows, cols) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = True
    return mask


# expression -> (type, target at photo resolution, prediction at model resolution)
SAMPLES = {
    # target: photo rows 0..15; prediction: model rows 0..57 = 14.5 photo rows.
    # Official: IoU 58/64. Original: photo row 14 samples model rows 57 and 58 -> 0.5, not > 0.5: IoU 14/16.
    "the top band": ("attribute", box((H, W), (0, 16), (0, W)), box((S, S), (0, 58), (0, S))),
    # exact: IoU 1 in both protocols
    "the lower right block": ("location", box((H, W), (20, 30), (20, 40)), box((S, S), (80, 120), (60, 120))),
    # disjoint: IoU 0
    "the lower left block": ("location", box((H, W), (20, 30), (0, 10)), box((S, S), (0, 40), (90, 120))),
    # target photo columns 0..19, prediction photo columns 0..14 (model 0..44): IoU 0.75
    "the left half": ("attribute", box((H, W), (0, H), (0, 20)), box((S, S), (0, S), (0, 45))),
}
# (intersection, union) per sample in pixels of each protocol
OFFICIAL = [(58 * 120, 64 * 120), (40 * 60, 40 * 60), (0, 2 * 40 * 30), (45 * 120, 60 * 120)]
ORIGINAL = [(14 * 40, 16 * 40), (10 * 20, 10 * 20), (0, 2 * 10 * 10), (15 * 30, 20 * 30)]


def expected_metrics(counts: list[tuple[int, int]]) -> dict:
    ious = [i / u for i, u in counts]
    return {
        "overall_iou": 100 * sum(i for i, _ in counts) / sum(u for _, u in counts),
        "mean_iou": 100 * sum(ious) / len(ious),
        **{f"precision@{t}": 100 * sum(iou >= t for iou in ious) / len(ious) for t in (0.5, 0.6, 0.7, 0.8, 0.9)},
        "count": len(ious),
    }


def write_dataset(folder: Path, samples=SAMPLES, split: str = "val") -> Path:
    """A JSON Lines dataset of 40x30 photos with one PNG mask per sample."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    rng = np.random.default_rng(0)
    lines = []
    for k, (text, (kind, target, _)) in enumerate(samples.items()):
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(folder / "images" / f"{k}.png")
        Image.fromarray(target.astype(np.uint8) * 255).save(folder / "masks" / f"{k}.png")
        lines.append(
            {
                "id": k,
                "image": f"images/{k}.png",
                "mask": f"masks/{k}.png",
                "expressions": [text],
                "type": kind,
                "split": split,
            }
        )
    path = folder / "dataset.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@dataclass
class KnownOutput:
    maps: torch.Tensor  # (B, 1, S, S) probabilities

    def probabilities(self, size: tuple[int, int]) -> torch.Tensor:
        assert tuple(size) == self.maps.shape[-2:]
        return self.maps


class KnownPredictions(torch.nn.Module):
    """Stands in for a MagNet: looks each expression up and returns its hand-made prediction."""

    def __init__(self, tokenizer: ExpressionTokenizer) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # something to report a device
        self.table = {
            tuple(tokenizer.encode(text).input_ids): torch.from_numpy(pred).float()
            for text, (_, _, pred) in SAMPLES.items()
        }
        self.config = MagNetConfig(max_tokens=20)  # what flip TTA builds its tokenizer from
        self.seen_shapes: list[tuple[int, ...]] = []
        self.seen_images: list[torch.Tensor] = []

    def forward(self, images, input_ids, attention_mask) -> KnownOutput:
        self.seen_shapes.append(tuple(images.shape))
        self.seen_images.append(images)
        maps = [self.table[tuple(ids.tolist())] for ids in input_ids]
        return KnownOutput(torch.stack(maps)[:, None])


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("eval-data"))


@pytest.fixture(scope="module")
def tokenizer() -> ExpressionTokenizer:
    return ExpressionTokenizer(20)


def evaluate(dataset_path, tokenizer, **kwargs):
    dataset, _ = build_dataset(DataSpec(path=str(dataset_path)), "val", S, tokenizer)
    model = KnownPredictions(tokenizer).train()
    metrics = evaluate_model(model, dataset, device="cpu", progress=False, **kwargs)
    assert model.training, "evaluate_model must give the model back in training mode"
    assert all(shape[-2:] == (S, S) for shape in model.seen_shapes)
    return metrics


def assert_metrics(actual: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("batch_size", [1, 3])
def test_official_protocol_compares_at_model_resolution(dataset_path, tokenizer, batch_size):
    metrics = evaluate(dataset_path, tokenizer, batch_size=batch_size)
    assert_metrics(metrics, expected_metrics(OFFICIAL))
    assert metrics["precision@0.9"] == 50.0  # 58/64 >= 0.9
    by_type = metrics["by_type"]
    assert sorted(by_type) == ["attribute", "location"]
    assert_metrics(by_type["attribute"], expected_metrics([OFFICIAL[0], OFFICIAL[3]]))
    assert_metrics(by_type["location"], expected_metrics([OFFICIAL[1], OFFICIAL[2]]))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_original_resolution_protocol_compares_at_each_photos_size(dataset_path, tokenizer, batch_size):
    metrics = evaluate(dataset_path, tokenizer, batch_size=batch_size, original_resolution=True)
    assert_metrics(metrics, expected_metrics(ORIGINAL))
    assert metrics["precision@0.9"] == 25.0  # 14/16 < 0.9: the half row is lost at the photo's size
    assert metrics["overall_iou"] == pytest.approx(100 * 1210 / 1640)
    assert_metrics(metrics["by_type"]["attribute"], expected_metrics([ORIGINAL[0], ORIGINAL[3]]))
    assert_metrics(metrics["by_type"]["location"], expected_metrics([ORIGINAL[1], ORIGINAL[2]]))


def test_threshold_decides_what_counts_as_predicted(dataset_path, tokenizer):
    # every prediction is 0 or 1: a threshold of 1 keeps nothing, so each IoU is 0
    metrics = evaluate(dataset_path, tokenizer, threshold=1.0)
    assert metrics["overall_iou"] == 0.0 and metrics["precision@0.5"] == 0.0


def test_flip_tta_averages_each_mask_with_the_mirrored_mask_of_the_mirrored_expression(dataset_path, tokenizer):
    dataset, _ = build_dataset(DataSpec(path=str(dataset_path)), "val", S, tokenizer)
    model = KnownPredictions(tokenizer)
    right_half = box((S, S), (0, S), (S - 45, S))  # the mirror image of "the left half"'s prediction
    model.table[tuple(tokenizer.encode("the right half").input_ids)] = torch.from_numpy(right_half).float()
    metrics = evaluate_model(model, dataset, device="cpu", progress=False, batch_size=4, flip_tta=True)
    direct, mirrored = model.seen_images
    assert torch.equal(mirrored, direct.flip(-1))
    # "the top band" and "the left half" mirror onto themselves; each block's mirrored reading is the
    # other block's prediction mirrored, which never overlaps its own: averaged, every pixel is 0.5
    # at most, nothing exceeds the threshold, and each block's mask is empty.
    assert_metrics(metrics, expected_metrics([OFFICIAL[0], (0, 40 * 60), (0, 40 * 30), OFFICIAL[3]]))


@pytest.mark.slow
def test_evaluate_command_writes_json_results(dataset_path, tokenizer, checkpoint_dir, tmp_path):
    checkpoint = checkpoint_dir / "tiny-plain.safetensors"
    result_path = tmp_path / "results.json"
    command = [
        sys.executable,
        "-m",
        "magnet",
        "evaluate",
        "--checkpoint",
        str(checkpoint),
        "--data",
        str(dataset_path),
        "--split",
        "val",
        "--original-resolution",
        "--batch-size",
        "3",
        "--device",
        "cpu",
        "--json",
        str(result_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "val: overall IoU" in done.stdout

    results = json.loads(result_path.read_text())
    assert results["checkpoint"] == str(checkpoint) and results["protocol"] == "original"
    val = results["val"]
    assert {
        "overall_iou",
        "mean_iou",
        "precision@0.5",
        "precision@0.7",
        "precision@0.9",
        "count",
        "by_type",
        "skipped",
    } <= set(val)
    assert val["count"] == len(SAMPLES) and sorted(val["by_type"]) == ["attribute", "location"]
    assert "4 records" in val["skipped"]

    model = load_model(checkpoint, device="cpu")
    dataset, _ = build_dataset(DataSpec(path=str(dataset_path)), "val", model.config.image_size, tokenizer)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the command (OMP_NUM_THREADS=1)
    try:
        expected = evaluate_model(model, dataset, batch_size=3, device="cpu", original_resolution=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    for key in ("overall_iou", "mean_iou", "precision@0.5", "count"):
        assert val[key] == pytest.approx(expected[key], abs=1e-9), key
