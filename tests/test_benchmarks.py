"""The benchmark scripts: they measure the model they are asked for, count FLOPs per part, judge
the targets by their thresholds, time the real training step and refuse bad options."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from magnet.benchmarks import inference, mask_ceiling, misses, parse_overrides, probe, training
from magnet.checkpoint import count_parameters
from magnet.config import MagNetConfig, get_config
from magnet.data.synthetic.scenes import Scene, SceneObject
from magnet.data.tokenizer import ExpressionTokenizer
from magnet.metrics import IoUAccumulator
from tests.helpers import TINY_GROUNDING, save_tiny_checkpoint, tiny_config, tiny_model


def tiny_overrides(**extra) -> list[str]:
    """`--override` flags that turn the swin-b preset into tests.helpers.tiny_config(...)."""
    tiny, preset = tiny_config(shallow=True, **extra), get_config("swin-b")
    flags = []
    for f in dataclasses.fields(MagNetConfig):
        value = getattr(tiny, f.name)
        if value != getattr(preset, f.name):
            value = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
            flags += ["--override", f"{f.name}={value!r}"]
    return flags


@pytest.fixture
def one_thread():
    """One intra-op thread: on a loaded 2-core machine two threads make tiny ops ~10x slower."""
    before = torch.get_num_threads()
    yield ["--threads", "1"]
    torch.set_num_threads(before)


def test_overrides_rebuild_the_tiny_config():
    flags = tiny_overrides(grounding=TINY_GROUNDING)
    values = parse_overrides(flags[1::2])
    assert dataclasses.replace(get_config("swin-b"), **values) == tiny_config(shallow=True, grounding=TINY_GROUNDING)


def test_override_of_unknown_field_names_the_fields():
    with pytest.raises(SystemExit, match="not a MagNetConfig field"):
        parse_overrides(["depth=2"])


class Toy(nn.Module):
    """Parts of known cost for a batch of B rows: vision 2*B*64*32 FLOPs, text (two layers, the
    container never called itself, as MagNet's `text`) 2 * 2*B*32*32, head 2*B*32*8, and a matmul
    of the model's own forward (no part) 2*B*8*4."""

    def __init__(self) -> None:
        super().__init__()
        self.vision = nn.Linear(64, 32)
        self.text = nn.ModuleList([nn.Linear(32, 32), nn.Linear(32, 32)])
        self.head = nn.Linear(32, 8)
        self.proj = nn.Parameter(torch.randn(8, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.vision(x)
        for layer in self.text:
            x = torch.relu(layer(x))
        return self.head(x) @ self.proj


def test_flops_are_counted_per_part():
    rows = 3
    total, parts = inference.count_gflops(Toy(), (torch.randn(rows, 64),), torch.device("cpu"), None)
    expected = {
        "vision": 2 * rows * 64 * 32,
        "text": 2 * 2 * rows * 32 * 32,
        "head": 2 * rows * 32 * 8,
        "other": 2 * rows * 8 * 4,
    }
    assert parts == pytest.approx({k: v / 1e9 for k, v in expected.items()})
    assert total == pytest.approx(sum(expected.values()) / 1e9)


def judge(
    device: str,
    median_s: float,
    peak_rss: float,
    efficiency: float,
    batch4_ratio: float,
    amp: torch.dtype | None = None,
) -> dict[str, bool]:
    """{target name: met} for a run with these figures."""
    one = {"median_s": median_s, "per_expression_s": median_s, "peak_rss_bytes": peak_rss}
    results = {
        "efficiency": efficiency,
        "batch4_ratio": batch4_ratio,
        "one_expression_process_peak_rss_bytes": peak_rss,
    }
    return {t["name"]: t["met"] for t in inference.check_targets(results, {1: one}, torch.device(device), amp)}


def test_targets_are_judged_by_their_thresholds():
    # swin-b at 480 px: <= 4 s and <= 2.5 GB per expression on CPU, efficiency >= 0.5, a batch of 4
    # in < 3x the time of one; <= 40 ms per expression on a GPU
    assert all(judge("cpu", 4.0, 2.5e9, 0.5, 2.99).values())
    assert len(judge("cpu", 4.0, 2.5e9, 0.5, 2.99)) == 4
    assert not any(judge("cpu", 4.01, 2.51e9, 0.49, 3.0).values())
    assert list(judge("cuda", 0.040, 0, 0, 2.0, amp=torch.bfloat16).values()) == [True, True]
    gpu = judge("cuda", 0.041, 0, 0, 2.0)
    assert list(gpu.values()) == [False, True]
    assert "(target assumes autocast)" in next(iter(gpu))


def test_inference_benchmark_measures_the_requested_model(tmp_path: Path, one_thread, capsys):
    out = tmp_path / "inference.json"
    results = inference.main(
        [
            "--preset",
            "swin-b",
            *tiny_overrides(),
            "--device",
            "cpu",
            "--runs",
            "2",
            "--warmup",
            "1",
            "--batch",
            "4,1",
            "--matmul-size",
            "256",
            "--matmul-seconds",
            "0.1",
            "--json",
            str(out),
            *one_thread,
        ]
    )
    printed = capsys.readouterr().out

    assert results["image_size"] == 64 and results["threads"] == 1 and results["amp"] == "none"
    assert results["parameters"] == count_parameters(tiny_model(shallow=True))
    assert set(results["gflops_parts"]) >= {"vision", "text", "head"}
    assert list(results["batches"]) == ["1", "4"]  # sorted, batch 1 first
    for figures in results["batches"].values():
        assert len(figures["times_s"]) == 2  # --runs, the warm-up not timed
        assert figures["min_s"] == min(figures["times_s"]) and figures["max_s"] == max(figures["times_s"])
    # targets for a CPU run: latency, memory, efficiency and batching
    assert [t["name"].split()[0] for t in results["targets"]] == ["CPU", "CPU", "efficiency", "batch", "predictor:"]
    predictor = results["predictor"]  # the 64 px model batches on CPU: 4 expressions, one forward
    assert predictor["expressions"] == 4 and predictor["max_batch"] == 8
    # the RSS figure comes from a fresh process that only segments one expression: below this one's
    assert 0.3e9 < results["one_expression_process_peak_rss_bytes"] <= results["peak_rss_bytes"]
    assert "one expression, fresh" in printed
    assert 0 < results["load_model_s"] < 60 and "load_model took" in printed  # the probe loads a file
    assert predictor["ratio"] == pytest.approx(predictor["one_call_s"] / predictor["single_calls_s"])
    assert "MagNetPredictor.predict (max_batch 8" in printed

    assert json.loads(out.read_text()) == json.loads(json.dumps(results))  # --json writes every figure
    assert f"parameters            {results['parameters']:,}" in printed
    assert "targets are set for swin-b at 480 px" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch", "0"], "positive sizes"),
        (["--batch", "one,two"], "comma-separated integers"),
        (["--runs", "0"], "--runs must be >= 1"),
    ],
)
def test_inference_benchmark_refuses_bad_options(argv, message):
    with pytest.raises(SystemExit, match=message):
        inference.main(["--device", "cpu", *argv])


def test_training_benchmark_times_the_training_step(one_thread, monkeypatch, capsys):
    calls = []
    real_step = training.optimizer_step

    def recorded(loss_step, batches, optimizer, *args, **kwargs):
        params = [p for group in optimizer.param_groups for p in group["params"]]
        before = [p.detach().clone() for p in params]
        terms = real_step(loss_step, batches, optimizer, *args, **kwargs)
        calls.append((terms, sum(not torch.equal(b, p) for b, p in zip(before, params)), len(params)))
        return terms

    monkeypatch.setattr(training, "optimizer_step", recorded)
    results = training.main(
        [
            "--preset",
            "swin-b",
            *tiny_overrides(grounding=TINY_GROUNDING),
            "--device",
            "cpu",
            "--batch",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
            *one_thread,
        ]
    )
    printed = capsys.readouterr().out

    assert len(calls) == 3  # one warm-up and two timed steps, each the training loop's own step
    assert results["batch"] == 2 and results["batches_tried"] == [2] and results["steps"] == 2
    assert results["parameters"] == count_parameters(tiny_model(shallow=True, grounding=TINY_GROUNDING))
    terms, changed, total = calls[-1]
    assert {"loss_mask", "loss_dice", "loss_grounding", "loss_align_p2p", "loss_align_p2t"} <= set(terms)
    assert changed > total // 2  # AdamW moved the weights
    assert results["final_loss"] == terms["loss"] and torch.isfinite(torch.tensor(terms["loss"]))
    assert f"{results['parameters']:,}" in printed and "Mask Grounding head and all losses" in printed


def test_training_benchmark_refuses_bad_options():
    with pytest.raises(SystemExit, match="--steps and --batch must be >= 1"):
        training.main(["--device", "cpu", "--steps", "0"])


def test_mask_ceiling_fits_shapes_beyond_the_area_encoding(one_thread, capsys):
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    disk = ((yy - 20.3) ** 2 + (xx - 26.7) ** 2 < 9.5**2).float()
    thin_bar = ((yy > 10) & (yy < 13) & (xx > 5) & (xx < 40)).float()
    result = mask_ceiling.ceiling(torch.stack([disk, thin_bar])[:, None], steps=300)
    assert result["fitted"] > 95 > result["area"]

    mask_ceiling.main(["--size", "48", "--split", "testB", "--scenes", "4", "--steps", "50", "--threads", "1"])
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[:4] == ["48", "px", "testB", "4"] and 0 < float(row[5]) <= float(row[4]) <= 100


def test_hits_and_misses_split_the_lost_union_between_wrong_objects_and_edges():
    scored = IoUAccumulator(
        intersections=[90, 0, 40, 80], unions=[100, 50, 100, 80], types=["attribute", "attribute", "ordinal", "ordinal"]
    )
    every = misses.hits_and_misses(scored)
    assert every["count"] == 4 and every["misses"] == 2 and every["miss_percent"] == 50
    assert every["overall_iou"] == pytest.approx(100 * 210 / 330)
    assert every["miss_union_percent"] == pytest.approx(100 * 150 / 330)
    assert every["hit_overall_iou"] == pytest.approx(100 * 170 / 180)
    ordinal = misses.hits_and_misses(scored, "ordinal")
    assert (ordinal["count"], ordinal["misses"]) == (2, 1)
    assert ordinal["hit_overall_iou"] == 100 and ordinal["miss_union_percent"] == pytest.approx(100 * 100 / 180)


def test_a_miss_is_described_by_the_object_it_took_instead():
    objects = (
        SceneObject("circle", "red", "big", 10, 10, 8),  # the target
        SceneObject("hexagon", "red", "big", 40, 10, 8),  # another shape
        SceneObject("circle", "red", "big", 10, 40, 8),  # a twin: the same description
        SceneObject("square", "blue", "small", 40, 40, 4),  # another shape, colour and size
    )
    scene = Scene(objects, 64, 64)
    labels = np.zeros((64, 64), dtype=np.uint8)
    labels[2:18, 2:18], labels[2:18, 32:48], labels[32:48, 2:18], labels[36:44, 36:44] = 1, 2, 3, 4
    on = lambda *objects: np.isin(labels, [o + 1 for o in objects])  # noqa: E731

    assert misses.taken_instead(scene, labels, 0, on(0, 1)) == "another shape"
    assert misses.taken_instead(scene, labels, 0, on(2)) == "the same description"
    assert misses.taken_instead(scene, labels, 0, on(3)) == "another shape and colour and size"
    # the largest other object wins; a mask on the target or the background alone took nothing
    assert misses.taken_instead(scene, labels, 0, on(1, 3)) == "another shape"
    assert misses.taken_instead(scene, labels, 0, on(0)) == "no other object"
    assert misses.taken_instead(scene, labels, 0, np.zeros_like(labels, dtype=bool)) == "no other object"
    sliver = on(0) | (on(1) & (np.arange(64)[None, :] == 32))  # 16 pixels of another object beside 256
    assert misses.taken_instead(scene, labels, 0, sliver) == "no other object"


def test_misses_benchmark_pictures_every_miss_it_counts(tmp_path: Path, one_thread, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.safetensors")  # random weights: mostly misses
    folder = tmp_path / "misses"
    results = misses.main(
        ["--checkpoint", str(checkpoint), "--split", "testB", "--scenes", "6", "--pictures", str(folder), *one_thread]
    )
    printed = capsys.readouterr().out

    every = results["testB"]["all"]
    assert every["count"] == 6 and every["misses"] >= 1
    assert sum(r["count"] for kind, r in results["testB"].items() if kind != "all") == 6
    listed = json.loads((folder / "misses.json").read_text())
    assert len(listed) == every["misses"] == len(list(folder.glob("*.png")))
    assert all(entry["iou"] < 0.5 and entry["text"].startswith("the ") for entry in listed)
    described = re.compile(r"no other object|the same description|another (shape|colour|size)( and (colour|size))*")
    assert all(described.fullmatch(entry["taken"]) for entry in listed)
    picture = Image.open(folder / listed[0]["picture"])
    assert picture.width == 256 and picture.height > 256  # the scene at its own size, the caption below
    assert "hits' overall IoU" in printed
    taken_table = printed.split("what they took instead")[1].splitlines()[2:]  # one row per type, "all" first
    assert taken_table[0].split()[:3] == ["testB", "all", str(every["misses"])]
    assert len(taken_table) == 1 + len({entry["type"] for entry in listed})


def test_linear_probe_reads_a_property_the_features_hold_and_not_one_they_lack():
    generator = torch.Generator().manual_seed(0)
    values = [["circle", "star", "square", "hexagon"][i % 4] for i in range(200)]
    one_hot = torch.nn.functional.one_hot(torch.tensor([i % 4 for i in range(200)]), 4).float()
    noise = torch.randn(200, 8, generator=generator)
    assert probe.probe_accuracy(torch.cat([one_hot + 0.1 * noise[:, :4], noise[:, 4:]], 1), values) == 100
    assert probe.probe_accuracy(noise, values) < 50  # chance is 25
    assert probe.chance(values) == pytest.approx(25, abs=2)
    with pytest.raises(ValueError, match="both sides"):
        probe.probe_accuracy(noise[:1], values[:1])


def test_probe_benchmark_scores_every_layer_and_reads_colour_from_the_first_stage(tmp_path: Path, one_thread, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.safetensors")
    results = probe.main(
        ["--checkpoint", str(checkpoint), "--scenes", "12", "--random-init", "--naming-scenes", "4", *one_thread]
    )
    layers = ["chance", *(f"{kind}{n}" for n in range(1, 5) for kind in ("stage", "s")), "mask features"]
    naming = ["naming, neutral", "naming, with its shape word"]  # the tiny checkpoint has a grounding head
    assert list(results) == layers + naming
    assert all(0 <= results[layer][name] <= 100 for layer in layers for name in probe.PROPERTIES)
    assert all(0 <= results[read][name] <= 100 for read in naming for name in probe.NAMING_QUERIES)
    # the first stage's features are nearly linear in the pixels: colour is there even untrained
    assert results["stage1"]["colour"] > results["chance"]["colour"] + 30
    printed = capsys.readouterr().out
    assert "objects of 12 validation scenes" in printed and "Mask Grounding head naming" in printed
    assert probe.one_piece_words(ExpressionTokenizer.for_model(tiny_config()), ["circle", "hexagon"]) == ["circle"]


def test_shape_learning_trains_each_candidate_for_its_time_and_reads_held_out_shapes(tmp_path, one_thread, capsys):
    from magnet.benchmarks import shape_learning
    from magnet.data.synthetic import draw_split_scene

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.safetensors")
    common = ["--size", "64", "--seconds", "2", "--readings", "2", "--train-scenes", "8", "--val-scenes", "6"]
    results = shape_learning.main(
        [*common, "--batch", "4", "--candidate", "narrow=embed_dim=8", "--checkpoint", str(checkpoint), *one_thread]
    )
    objects = sum(len(draw_split_scene("val", i, 0)[0].objects) for i in range(6))
    assert results["val_objects"] == objects and results["chance"] == pytest.approx(100 / 6)
    assert list(results["candidates"]) == ["narrow", "trained: tiny.safetensors"]
    for result in results["candidates"].values():
        seconds = [reading["seconds"] for reading in result["curve"]]
        assert len(seconds) == 2 and 1 <= seconds[0] < seconds[1] and result["seconds_per_step"] > 0
        assert all(0 <= a <= 100 for reading in result["curve"] for a in reading["stages"])
        assert result["curve"][-1]["best"] == max(result["curve"][-1]["stages"])
    assert (
        results["candidates"]["narrow"]["parameters"] < results["candidates"]["trained: tiny.safetensors"]["parameters"]
    )
    assert "stages 1-4 at the end" in capsys.readouterr().out
    fixed = shape_learning.main(
        [*common, "--batch", "4", "--candidate", "as is=embed_dim=8", "--readout", "fixed", *one_thread]
    )
    assert fixed["candidates"]["as is"]["curve"][-1]["stages"]
    with pytest.raises(SystemExit, match="NAME=KEY=VALUE"):
        shape_learning.parse_candidate("patch_size=2")
