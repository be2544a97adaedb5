"""The shipped training configs parse into valid TrainConfigs, and make checkpoint's stages chain."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from magnet.config import get_config
from magnet.train import config_from_args

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "magnet" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_is_a_valid_training_config(path):
    cfg = config_from_args(["--config", str(path)])
    get_config(cfg.preset)  # a known preset
    assert cfg.max_steps > 0 and cfg.batch_size > 0 and cfg.out_dir.startswith("runs/")


def test_checkpoint_stages_each_start_from_the_previous_stage():
    stages = re.search(r"^CHECKPOINT_STAGES \?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
    configs = [yaml.safe_load((ROOT / stage).read_text()) for stage in stages]
    assert configs[0].get("init", "scratch") == "scratch"
    assert all(0 < stage["time_budget_s"] <= 150 * 60 for stage in configs)  # each stage fits a session
    for previous, stage in zip(configs, configs[1:]):
        assert stage["init"] in {f"{previous['out_dir']}/{name}.safetensors" for name in ("last", "best")}
