"""The shipped default checkpoint loads offline and segments the bundled examples."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from magnet.checkpoint import load_model
from magnet.predictor import MagNetPredictor

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "checkpoints" / "magnet-small-synthetic.safetensors"


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return MagNetPredictor(load_model(DEFAULT, device="cpu"), device="cpu")


def test_default_checkpoint_is_small_and_documented(predictor):
    assert DEFAULT.stat().st_size <= 40 * 1024 * 1024
    assert (ROOT / "checkpoints" / "magnet-small-synthetic.md").exists()
    model = predictor.model
    assert model.grounding is not None and model.config.image_size == 256
    assert model.provenance["trained_by"] == "magnet-studio"


def test_examples_gallery_is_segmented(predictor):
    examples = json.loads((ROOT / "assets" / "examples.json").read_text())
    assert 6 <= len(examples) <= 10
    assert sum(t == "relational" for e in examples for t in e["types"]) >= 2
    for example in examples:
        results = predictor.predict(ROOT / example["image"], example["expressions"], with_grounding=False)
        for r in results:  # one shape found: not nothing, not the background
            assert not r.is_empty and r.mask.mean() < 0.25, (example["image"], r.expression)
