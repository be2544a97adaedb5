"""Shared test helpers: tiny model configurations and reference-data location."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from magnet.config import MagNetConfig

REFERENCE = Path(os.environ.get("MAGNET_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "official"))

requires_reference = pytest.mark.skipif(
    not (REFERENCE / "mini" / "cases.pt").exists(),
    reason=f"official reference data not found at {REFERENCE} (it sits beside the checkout in CI; "
    "set MAGNET_REFERENCE_DIR to point elsewhere)",
)


def tiny_config(**overrides) -> MagNetConfig:
    """A MagNet small enough that a forward takes milliseconds on CPU (64 px input)."""
    values = dict(
        embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4,
        text_hidden_size=32, text_layers=4, text_heads=2, text_intermediate_size=64,
        fusion_after_layer=(1, 2, 3, 4), head_dim=32, head_heads=2, pixel_encoder_layers=1,
        pixel_encoder_ffn=64, decoder_layers=3, decoder_ffn=64, image_size=64,
    )
    values.update(overrides)
    return MagNetConfig(**values)
