"""The benchmark scripts run end to end on a tiny model and report consistent figures."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from magnet.benchmarks import inference, parse_overrides, training
from magnet.config import GroundingConfig, MagNetConfig, get_config

from tests.helpers import tiny_config

TINY_GROUNDING = GroundingConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, visual_grid=4)


def tiny_overrides(**extra) -> list[str]:
    """`--override` flags that turn the swin-b preset into tests.helpers.tiny_config(...)."""
    tiny, preset = tiny_config(depths=(1, 1, 1, 1), decoder_layers=1, **extra), get_config("swin-b")
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
    assert dataclasses.replace(get_config("swin-b"), **values) == tiny_config(
        depths=(1, 1, 1, 1), decoder_layers=1, grounding=TINY_GROUNDING)


def test_override_of_unknown_field_names_the_fields():
    with pytest.raises(SystemExit, match="not a MagNetConfig field"):
        parse_overrides(["depth=2"])


def test_inference_benchmark_reports_consistent_figures(tmp_path: Path, one_thread, capsys):
    out = tmp_path / "inference.json"
    results = inference.main(["--preset", "swin-b", *tiny_overrides(), "--device", "cpu", "--runs", "2",
                              "--warmup", "1", "--batch", "1,4", "--matmul-size", "256", "--matmul-seconds", "0.1",
                              "--json", str(out), *one_thread])
    printed = capsys.readouterr().out

    assert results["image_size"] == 64 and results["threads"] == 1 and results["amp"] == "none"
    assert results["parameters"] > 0 and results["gflops"] > 0 and results["matmul_gflops_per_s"] > 0
    assert set(results["gflops_parts"]) >= {"vision", "text", "head"}
    assert sum(results["gflops_parts"].values()) == pytest.approx(results["gflops"])
    one, four = results["batches"]["1"], results["batches"]["4"]
    for figures in (one, four):
        assert len(figures["times_s"]) == 2
        assert 0 < figures["min_s"] <= figures["median_s"] <= figures["max_s"]
        assert figures["peak_rss_bytes"] >= results["baseline_rss_bytes"] > 0
    assert four["per_expression_s"] == pytest.approx(four["median_s"] / 4)
    assert results["batch4_ratio"] == pytest.approx(four["median_s"] / one["median_s"])
    assert results["achieved_gflops_per_s"] == pytest.approx(results["gflops"] / one["median_s"])
    assert results["efficiency"] == pytest.approx(results["achieved_gflops_per_s"] / results["matmul_gflops_per_s"])
    assert results["matmul_gflops_per_s"] == pytest.approx(sum(results["matmul_gflops_per_s_before_after"]) / 2)
    assert results["rss_increase_bytes"] == results["peak_rss_bytes"] - results["baseline_rss_bytes"] >= 0
    assert [t["name"].split()[0] for t in results["targets"]] == ["CPU", "CPU", "efficiency", "batch"]

    assert json.loads(out.read_text())["parameters"] == results["parameters"]
    assert f"{results['parameters']:,}" in printed
    assert f"efficiency {results['efficiency']:.3f}" in printed
    assert "targets are set for swin-b at 480 px" in printed


def test_training_benchmark_runs_the_full_step(one_thread, capsys):
    results = training.main(["--preset", "swin-b", *tiny_overrides(grounding=TINY_GROUNDING), "--device", "cpu",
                             "--batch", "2", "--steps", "2", "--warmup", "1", *one_thread])
    printed = capsys.readouterr().out

    assert results["batch"] == 2 and results["batches_tried"] == [2] and results["steps"] == 2
    assert results["parameters"] > 0 and results["image_size"] == 64
    assert 0 < results["min_step_s"] <= results["median_step_s"] <= results["max_step_s"]
    assert results["samples_per_s"] == pytest.approx(results["steps_per_s"] * 2)
    assert results["steps_per_s"] > 0 and results["peak_rss_bytes"] > 0 and results["cuda_peak_bytes"] is None
    assert torch.isfinite(torch.tensor(results["final_loss"])) and results["final_loss"] > 0
    assert f"{results['parameters']:,}" in printed and "Mask Grounding head and all losses" in printed
