"""The ablation script end to end with a tiny model: runs, resume by skipping, the statistics,
the report files, and its user errors."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys

import pytest
import torch
import yaml

import magnet.ablation
from magnet.ablation import main
from tests.helpers import tiny_model_settings


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def base_config(tmp_path):
    """A training YAML of seconds-long runs: the shallow tiny model on a few synthetic scenes."""
    settings = {
        "preset": "small",
        "model": tiny_model_settings(),
        "data": {"path": "synthetic", "synthetic_scenes": 8, "synthetic_val_scenes": 2},
        "batch_size": 2,
        "max_steps": 1000,  # the ablation's --steps replaces it
        "lr": 1e-3,
        "warmup_steps": 1,
        "num_workers": 0,
        "device": "cpu",
        "max_val_samples": 2,
        "log_every": 1,
        "keep_last": 1,
        "time_budget_s": 600,  # the ablation turns the budget off: every run takes the same steps
    }
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def count_calls(monkeypatch, name: str) -> list:
    """Wraps magnet.ablation.<name> so that each call is recorded."""
    calls, original = [], getattr(magnet.ablation, name)
    monkeypatch.setattr(magnet.ablation, name, lambda *a, **k: calls.append(a) or original(*a, **k))
    return calls


@pytest.mark.slow
def test_ablation_trains_seed_by_seed_records_each_run_and_reports_from_the_records(
    tmp_path, base_config, monkeypatch, capsys
):
    runs_root, out = tmp_path / "runs", tmp_path / "report"
    argv = ["--config", str(base_config), "--steps", "3", "--seeds", "0", "1", "--variants", "seg", "seg+mg"]
    argv += ["--out-root", str(runs_root), "--out", str(out), "--eval-every", "2", "--save-every", "3"]
    argv += ["--eval-limit", "3", "--set", "lr=0.002"]
    trained = count_calls(monkeypatch, "train")

    # Seed by seed: two runs give seed 0 of both variants, a paired comparison of one seed.
    assert main([*argv, "--max-runs", "2"]) == 0

    assert [cfg.out_dir for (cfg,) in trained] == [str(runs_root / "seg-seed0"), str(runs_root / "seg+mg-seed0")]
    partial = json.loads((out / "results.json").read_text())
    assert [(r["variant"], r["seed"]) for r in partial["runs"]] == [("seg", 0), ("seg+mg", 0)]
    assert partial["paired"]["seg+mg vs seg"]["figures"]["val/overall_iou"]["n"] == 1
    assert "a single seed" in (out / "table.md").read_text()
    assert "over the seeds run so far (planned: 0, 1)" in (out / "table.md").read_text()
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["seg+mg-seed0.json", "seg-seed0.json"]

    assert main(argv) == 0

    assert len(trained) == 4
    for variant, grounding in (("seg", False), ("seg+mg", True)):
        for seed in (0, 1):
            run = runs_root / f"{variant}-seed{seed}"
            assert (run / "last.safetensors").exists()
            config = json.loads((run / "config.json").read_text())
            assert (config["seed"], config["max_steps"], config["time_budget_s"]) == (seed, 3, 0)
            assert config["grounding"] is grounding and config["loss"]["grounding_weight"] == float(grounding)
            assert config["loss"]["align_p2p_weight"] == config["loss"]["align_p2t_weight"] == 0
            assert config["lr"] == 0.002  # --set reaches every run
            assert config["resume"] is True  # an interrupted run continues from its last checkpoint
    results = json.loads((out / "results.json").read_text())
    runs = {(r["variant"], r["seed"]): r["figures"] for r in results["runs"]}
    assert set(runs) == {("seg", 0), ("seg", 1), ("seg+mg", 0), ("seg+mg", 1)}
    for figures in runs.values():
        assert {"val/overall_iou", "testA/overall_iou", "testB/overall_iou", "shifted/overall_iou"} <= set(figures)
    for variant in ("seg", "seg+mg"):
        for name, stats in results["summary"][variant].items():
            values = [runs[variant, 0][name], runs[variant, 1][name]]
            assert stats["mean"] == pytest.approx(statistics.mean(values))
            assert stats["std"] == pytest.approx(statistics.stdev(values))
    paired = results["paired"]["seg+mg vs seg"]["figures"]
    assert paired.keys() == results["summary"]["seg"].keys()
    for name, stats in paired.items():
        differences = [runs["seg+mg", s][name] - runs["seg", s][name] for s in (0, 1)]
        assert [stats["differences"][str(s)] for s in (0, 1)] == pytest.approx(differences)
        assert stats["mean"] == pytest.approx(statistics.mean(differences))
        assert stats["std"] == pytest.approx(statistics.stdev(differences))
        assert stats["seeds_favouring"] == sum(d > 0 for d in differences)
    assert list(results["paired"]) == ["seg+mg vs seg"]  # the other comparisons need seg+mg+align
    table = (out / "table.md").read_text()
    assert "| seg (segmentation loss only) | 0, 1 | " in table and "| seg+mg (+ Mask Grounding) | 0, 1 | " in table
    assert "Trained on CPU (" in table
    assert "mean ± std over seeds 0, 1." in table  # every planned run is in
    assert "| seg+mg vs seg |" in table and "seed spread" in table
    assert table in capsys.readouterr().out
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A rerun trains nothing and evaluates nothing again; --grounding adds the benchmark only.
    evaluated = count_calls(monkeypatch, "evaluate_model")
    assert main([*argv, "--grounding", "--grounding-scenes", "1"]) == 0

    assert len(trained) == 4 and evaluated == []
    rerun = json.loads((out / "results.json").read_text())
    assert [r["figures"]["val/overall_iou"] for r in rerun["runs"]] == [
        r["figures"]["val/overall_iou"] for r in results["runs"]
    ]
    sources = {(r["variant"], r["seed"]): r["evaluation"]["grounding"]["expression"] for r in rerun["runs"]}
    assert "mask-grounding" in sources["seg+mg", 0] and "mask-grounding" not in sources["seg", 0]
    assert "grounding/phrase/expression" in rerun["summary"]["seg"]

    # A later session without the run folders: the records alone give the same report; what they
    # did not measure cannot be measured and is refused with the fix.
    shutil.rmtree(runs_root)
    assert main(argv) == 0

    assert len(trained) == 4 and evaluated == []
    again = json.loads((out / "results.json").read_text())
    assert again["summary"]["seg"]["val/overall_iou"] == results["summary"]["seg"]["val/overall_iou"]
    assert [len(r["curve"]) for r in again["runs"]] == [2, 2, 2, 2]  # steps 2 and 3
    assert main([*argv, "--eval-limit", "2"]) == 2
    assert "pass --eval-limit 3" in capsys.readouterr().err


def test_a_run_folder_of_other_settings_is_not_reused(tmp_path, base_config, capsys):
    run = tmp_path / "runs" / "seg-seed0"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"max_steps": 5, "seed": 0}))

    argv = ["--config", str(base_config), "--steps", "3", "--seeds", "0", "--variants", "seg"]
    assert main([*argv, "--out-root", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 2

    err = capsys.readouterr().err
    assert err.startswith("error: ") and "max_steps" in err and "--out-root" in err
    assert not (run / "last.safetensors").exists()


def test_a_run_locked_by_a_live_process_is_left_to_it_and_a_dead_ones_lock_is_taken_over(
    tmp_path, base_config, monkeypatch
):
    runs_root, out = tmp_path / "runs", tmp_path / "report"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for run, pid in (("seg-seed0", os.getpid()), ("seg+mg-seed0", dead.pid)):
        (runs_root / run).mkdir(parents=True)
        (runs_root / run / "ablation.lock").write_text(str(pid))
    trained = count_calls(monkeypatch, "train")

    argv = ["--config", str(base_config), "--steps", "2", "--seeds", "0", "--variants", "seg", "seg+mg"]
    assert main([*argv, "--out-root", str(runs_root), "--out", str(out), "--eval-limit", "2"]) == 0

    assert [cfg.out_dir for (cfg,) in trained] == [str(runs_root / "seg+mg-seed0")]
    assert (runs_root / "seg-seed0" / "ablation.lock").read_text() == str(os.getpid())
    assert not (runs_root / "seg+mg-seed0" / "ablation.lock").exists()  # released after the run
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["seg+mg-seed0.json"]


def test_a_record_of_other_settings_is_not_reused(tmp_path, base_config, capsys):
    record = tmp_path / "report" / "runs" / "seg-seed0.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"variant": "seg", "seed": 0, "config": {"max_steps": 5, "seed": 0}}))

    argv = ["--config", str(base_config), "--steps", "3", "--seeds", "0", "--variants", "seg"]
    assert main([*argv, "--out-root", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 2

    err = capsys.readouterr().err
    assert err.startswith("error: ") and "max_steps" in err and "delete that file" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--config", "no/such.yaml"], "config file no/such.yaml not found"),
        (["--variants", "seg", "seg+typo"], "unknown variant 'seg+typo'"),
        (["--set", "seed=3"], "--set seed: the ablation sets this field itself"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--max-runs", "-1"], "--max-runs must be 0 or more"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(tmp_path, base_config, capsys, arguments, message):
    argv = ["--config", str(base_config), "--out-root", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]

    assert main([*argv, *arguments]) == 2

    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
