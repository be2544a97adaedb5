"""Shared test helpers: the tiny models every test builds, and the reference-data location."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from magnet.checkpoint import save_checkpoint
from magnet.config import GroundingConfig, MagNetConfig
from magnet.modeling import MagNet

REFERENCE = Path(os.environ.get("MAGNET_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "official"))

requires_reference = pytest.mark.skipif(
    not (REFERENCE / "mini" / "cases.pt").exists(),
    reason=f"official reference data not found at {REFERENCE} (it sits beside the checkout in CI; "
    "set MAGNET_REFERENCE_DIR to point elsewhere)",
)

# A Mask Grounding head to go with tiny_config.
TINY_GROUNDING = GroundingConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, visual_grid=4)


def tiny_config(shallow: bool = False, **overrides: Any) -> MagNetConfig:
    """A MagNet small enough that a forward takes milliseconds on CPU (64 px input).

    shallow: one Swin block per stage and one decoder layer, for tests that train or start a
    subprocess (a training step takes ~0.1 s on one core)."""
    values: dict[str, Any] = dict(
        embed_dim=16,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 2, 4),
        window_size=4,
        text_hidden_size=32,
        text_layers=4,
        text_heads=2,
        text_intermediate_size=64,
        fusion_after_layer=(1, 2, 3, 4),
        head_dim=32,
        head_heads=2,
        pixel_encoder_layers=1,
        pixel_encoder_ffn=64,
        decoder_layers=3,
        decoder_ffn=64,
        image_size=64,
    )
    if shallow:
        values.update(depths=(1, 1, 1, 1), decoder_layers=1)
    values.update(overrides)
    return MagNetConfig(**values)


def tiny_model(seed: int | None = 0, shallow: bool = False, **overrides: Any) -> MagNet:
    """A random-weight MagNet of `tiny_config(shallow, **overrides)`, the same weights for the
    same seed (None: whatever torch's random state gives)."""
    if seed is not None:
        torch.manual_seed(seed)
    return MagNet(tiny_config(shallow, **overrides))


def tiny_model_settings(**overrides: Any) -> dict[str, Any]:
    """The shallow tiny model with a Mask Grounding head as YAML-ready `model:` settings of a
    training config (lists for tuples, a dict for the head)."""
    config = tiny_config(shallow=True, grounding=TINY_GROUNDING, **overrides)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}


def save_tiny_checkpoint(path: Path, with_grounding: bool = True, seed: int = 0) -> Path:
    """A random-weight shallow tiny MagNet saved in our safetensors format."""
    model = tiny_model(seed, shallow=True, grounding=TINY_GROUNDING if with_grounding else None)
    return save_checkpoint(model, path, provenance={"source": "random weights for tests"})
