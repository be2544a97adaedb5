"""The shipped training configs parse into valid TrainConfigs, and make checkpoint's stages chain."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from magnet.config import get_config
from magnet.errors import ConfigError
from magnet.train import config_from_args, read_config_file

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "magnet" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_is_a_valid_training_config(path):
    cfg = config_from_args(["--config", str(path)])
    get_config(cfg.preset)  # a known preset
    assert cfg.max_steps > 0 and cfg.batch_size > 0 and cfg.out_dir.startswith("runs/")


def test_checkpoint_stages_each_start_from_the_previous_stage():
    stages = re.search(r"^CHECKPOINT_STAGES \?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    configs = [read_config_file(ROOT / stage) for stage in stages]
    assert configs[0].get("init", "scratch") == "scratch"
    assert all(0 < stage["time_budget_s"] <= 150 * 60 for stage in configs)  # each stage fits a session
    for previous, stage in zip(configs, configs[1:]):
        assert stage["init"] in {f"{previous['out_dir']}/{name}.safetensors" for name in ("last", "best")}


def test_a_config_with_a_base_lists_only_what_it_changes(tmp_path):
    (tmp_path / "recipe.yaml").write_text("lr: 1.0e-3\nseed: 4\ndata:\n  path: synthetic\n  synthetic_seed: 3\n")
    (tmp_path / "stage.yaml").write_text("base: recipe.yaml\nseed: 5\ndata:\n  synthetic_seed: 7\n")
    cfg = config_from_args(["--config", str(tmp_path / "stage.yaml"), "--lr", "2e-3"])
    assert (cfg.lr, cfg.seed) == (2e-3, 5)  # the flag beats the file, the file beats its base
    assert (cfg.data.path, cfg.data.synthetic_seed) == ("synthetic", 7)  # sections merge key by key


def test_shipped_stages_keep_the_recipe_they_do_not_change():
    recipe = read_config_file(ROOT / "magnet" / "configs" / "synthetic-cpu.yaml")
    stage = read_config_file(ROOT / "magnet" / "configs" / "synthetic-cpu-stage17.yaml")
    assert stage["data"] == {**recipe["data"], "synthetic_counting_share": 0.2}
    assert stage["model"] == {"image_size": 128} and stage["batch_size"] == recipe["batch_size"]


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.yaml": "base: b.yaml\n", "b.yaml": "base: a.yaml\n"}, "loop"),
        ({"a.yaml": "base: missing.yaml\n"}, "missing.yaml not found"),
        ({"a.yaml": "base: [b.yaml]\n"}, "must be the path"),
        ({"a.yaml": "- lr\n"}, "field: value"),
        ({"a.yaml": "lr: [1\n"}, "not valid YAML"),
    ],
)
def test_bad_config_files_say_what_to_fix(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        config_from_args(["--config", str(tmp_path / "a.yaml")])
