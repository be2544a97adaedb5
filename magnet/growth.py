"""Growing a trained MagNet deeper without changing what it computes.

Continuing from a checkpoint can only add capacity in one way that keeps every output the same:
extra Swin blocks at the end of a stage. A Swin block is pre-norm with two residual branches, so a
new block whose attention output projection and second MLP layer are zero is the identity; training
then grows it from there, starting from the old model's accuracy instead of from scratch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from .errors import ConfigError
from .modeling import MagNet


def deepen_swin(model: MagNet, depths: Sequence[int]) -> MagNet:
    """A copy of `model` whose Swin stages have `depths` blocks (each at least as many as now).

    The old blocks keep their weights; the added blocks of a stage follow them and start as the
    identity, so the deeper model's outputs equal the old model's."""
    depths = tuple(int(d) for d in depths)
    old = model.config.depths
    if len(depths) != len(old) or any(new < now for new, now in zip(depths, old, strict=True)):
        raise ConfigError(
            f"depths {list(depths)} cannot grow a model with depths {list(old)}: give one entry per stage, "
            "each at least the current one"
        )
    config = dataclasses.replace(model.config, depths=depths)
    grown = MagNet(config)
    result = grown.load_state_dict(model.state_dict(), strict=False)
    added = [(i, j) for i, (new, now) in enumerate(zip(depths, old)) for j in range(now, new)]
    prefixes = tuple(f"vision.layers.{i}.blocks.{j}." for i, j in added)
    unexplained = [k for k in result.missing_keys if not k.startswith(prefixes)]
    if unexplained or result.unexpected_keys:
        raise RuntimeError(f"growing changed more than Swin blocks: {unexplained[:5]} {result.unexpected_keys[:5]}")
    with torch.no_grad():
        for i, j in added:
            block = grown.vision.layers[i].blocks[j]
            for layer in (block.attn.proj, block.mlp.fc2):
                layer.weight.zero_()
                layer.bias.zero_()
    grown.tie_weights()
    grown.provenance = getattr(model, "provenance", {})
    return grown.to(next(model.parameters()).device).train(model.training)
