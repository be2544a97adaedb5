"""Growing a trained MagNet deeper or wider without changing what it computes.

Continuing from a checkpoint can add capacity in three ways that keep every output the same, so that
training grows the new capacity from the old model's accuracy instead of from scratch:

- deeper: extra Swin blocks at the end of a stage. A Swin block is pre-norm with two residual
  branches, so a new block whose attention output projection and second MLP layer are zero is the
  identity.
- a deeper decoder: extra masked-attention decoder layers at the end. These layers are post-norm,
  so a new one is not the identity: with its attention output projections and second FFN layer
  zero and its three LayerNorms at weight 1, bias 0, it outputs its input standardised per query.
  Every prediction reads the decoder's output through one more LayerNorm (`decoder_norm`), which
  gives the same result for an input and its standardised form, so the predictions are unchanged.
- wider: a Swin stage with k times the channels (Net2WiderNet). Every channel of the stage, and
  every hidden unit and attention head inside it, is repeated k times; each layer that reads the
  repeated channels gets the old input weights split among the copies. LayerNorm sees the same
  mean and variance over repeated channels, so nothing changes. The split is random per weight
  (not 1/k), because copies that only differ in scale would get the same Adam updates and stay
  copies forever.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import torch

from .config import MagNetConfig
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
    added = [(i, j) for i, (new, now) in enumerate(zip(depths, old)) for j in range(now, new)]
    grown = _with_old_weights(
        model, dataclasses.replace(model.config, depths=depths), [f"vision.layers.{i}.blocks.{j}." for i, j in added]
    )
    with torch.no_grad():
        for i, j in added:
            block = grown.vision.layers[i].blocks[j]
            for layer in (block.attn.proj, block.mlp.fc2):
                layer.weight.zero_()
                layer.bias.zero_()
    return _in_place_of(model, grown)


def deepen_decoder(model: MagNet, layers: int) -> MagNet:
    """A copy of `model` whose masked-attention decoder has `layers` layers (at least as many as
    now). The old layers keep their weights; the added ones follow them and leave every prediction
    as it was (module docstring), the last of them giving the final one."""
    layers, old = int(layers), model.config.decoder_layers
    if layers < old:
        raise ConfigError(f"decoder_layers {layers} cannot grow a decoder of {old} layers: give at least {old}")
    kinds = ("cross_attention", "self_attention", "ffn")
    grown = _with_old_weights(
        model,
        dataclasses.replace(model.config, decoder_layers=layers),
        [f"head.predictor.transformer_{kind}_layers.{i}." for i in range(old, layers) for kind in kinds],
    )
    decoder = grown.head.predictor
    with torch.no_grad():
        for i in range(old, layers):
            cross, self_attn, ffn = (
                decoder.transformer_cross_attention_layers[i],
                decoder.transformer_self_attention_layers[i],
                decoder.transformer_ffn_layers[i],
            )
            for projection in (cross.multihead_attn.out_proj, self_attn.self_attn.out_proj, ffn.linear2):
                projection.weight.zero_()
                projection.bias.zero_()
            for norm in (cross.norm, self_attn.norm, ffn.norm):
                norm.weight.fill_(1.0)
                norm.bias.zero_()
    return _in_place_of(model, grown)


def _with_old_weights(model: MagNet, config: MagNetConfig, added: Sequence[str]) -> MagNet:
    """A new MagNet of `config` holding every weight of `model`; only the weights under the `added`
    prefixes may be new (they keep their fresh initialisation for the caller to set)."""
    grown, prefixes = MagNet(config), tuple(added)
    result = grown.load_state_dict(model.state_dict(), strict=False)
    unexplained = [k for k in result.missing_keys if not k.startswith(prefixes)]
    if unexplained or result.unexpected_keys:
        raise RuntimeError(
            f"growing changed more than {list(prefixes[:3])}: {unexplained[:5]} {result.unexpected_keys[:5]}"
        )
    return grown


def _in_place_of(model: MagNet, grown: MagNet) -> MagNet:
    """`grown` with its shared weights tied, on `model`'s device and mode, with its provenance."""
    grown.tie_weights()
    grown.provenance = getattr(model, "provenance", {})
    return grown.to(next(model.parameters()).device).train(model.training)


@dataclasses.dataclass(frozen=True)
class _Repeat:
    """How one axis of a weight grows: `blocks` lists the old sizes of the concatenated parts along
    it (one part for most axes; q, k, v for a fused projection), each repeated `factor` times;
    `reads` marks an input axis, whose weights are split among the copies instead of repeated."""

    blocks: tuple[int, ...]
    factor: int
    reads: bool = False

    def source(self) -> torch.Tensor:
        """For each new index along the axis, the old index it copies."""
        parts, start = [], 0
        for size in self.blocks:
            parts.append(start + torch.arange(size * self.factor) % size)
            start += size
        return torch.cat(parts)


@dataclasses.dataclass(frozen=True)
class _Growth:
    """How one weight grows: per axis, and a factor on all of it afterwards."""

    axes: dict[int, _Repeat]
    scale: float = 1.0


def _stage_rules(model: MagNet, stage: int, factor: int) -> dict[str, _Growth]:
    """Parameter-name patterns of everything that holds or reads stage `stage`'s channels, each
    with the growth of its axes."""
    config = model.config
    width = config.stage_dims()[stage]
    hidden = int(width * config.mlp_ratio)
    quarter = width // 4

    def grow(*blocks: int) -> _Repeat:
        return _Repeat(tuple(blocks), factor)

    def read(*blocks: int) -> _Repeat:
        return _Repeat(tuple(blocks), factor, reads=True)

    def fusion(prefix: str, dim: int) -> dict[str, dict[int, _Repeat] | _Growth]:
        # inside the pixel-word attention each head's channels are repeated within that head
        heads = [dim // config.fusion_heads] * config.fusion_heads
        return {
            rf"{prefix}\.vis_project\.0\.weight": {0: grow(*heads), 1: read(dim)},
            rf"{prefix}\.vis_project\.0\.bias": {0: grow(*heads)},
            rf"{prefix}\.image_lang_att\.f_query\.0\.weight": {0: grow(*heads), 1: read(dim)},
            rf"{prefix}\.image_lang_att\.(f_query\.[01]\.bias|f_query\.1\.weight)": {0: grow(*heads)},
            # the scores sum over `factor` times the channels and are scaled by 1/sqrt(width)
            rf"{prefix}\.image_lang_att\.f_key\.0\.(weight|bias)": _Growth({0: grow(*heads)}, factor**-0.5),
            rf"{prefix}\.image_lang_att\.f_value\.0\.(weight|bias)": {0: grow(*heads)},
            rf"{prefix}\.image_lang_att\.W\.0\.weight": {0: grow(*heads), 1: read(*heads)},
            rf"{prefix}\.image_lang_att\.W\.[01]\.bias|{prefix}\.image_lang_att\.W\.1\.weight": {0: grow(*heads)},
            rf"{prefix}\.project_mm\.0\.weight": {0: grow(dim), 1: read(*heads)},
            rf"{prefix}\.project_mm\.0\.bias": {0: grow(dim)},
        }

    layer = rf"vision\.layers\.{stage}"
    rules: dict[str, dict[int, _Repeat] | _Growth] = {
        rf"{layer}\.blocks\.\d+\.norm[12]\.(weight|bias)": {0: grow(width)},
        rf"{layer}\.blocks\.\d+\.attn\.qkv\.weight": {0: grow(width, width, width), 1: read(width)},
        rf"{layer}\.blocks\.\d+\.attn\.qkv\.bias": {0: grow(width, width, width)},
        rf"{layer}\.blocks\.\d+\.attn\.relative_position_bias_table": {1: grow(config.num_heads[stage])},
        rf"{layer}\.blocks\.\d+\.attn\.proj\.weight": {0: grow(width), 1: read(width)},
        rf"{layer}\.blocks\.\d+\.(attn\.proj|mlp\.fc2)\.bias": {0: grow(width)},
        rf"{layer}\.blocks\.\d+\.mlp\.fc1\.weight": {0: grow(hidden), 1: read(width)},
        rf"{layer}\.blocks\.\d+\.mlp\.fc1\.bias": {0: grow(hidden)},
        rf"{layer}\.blocks\.\d+\.mlp\.fc2\.weight": {0: grow(width), 1: read(hidden)},
        rf"{layer}\.res_gate\.[02]\.weight": {0: grow(width), 1: read(width)},
        rf"{layer}\.pyramids\.\d+\.1\.weight": {0: grow(4 * width), 1: read(width)},
        rf"{layer}\.pyramids\.\d+\.2\.(weight|bias)": {0: grow(4 * width)},
        rf"{layer}\.pyramids\.\d+\.3\.weight": {0: grow(width), 1: read(4 * width)},
        rf"{layer}\.pyramids\.\d+\.5\.weight": {0: grow(quarter), 1: read(width)},
        rf"{layer}\.mixer\.0\.weight": {0: grow(width), 1: read(*[quarter] * len(config.pyramid_sizes), width)},
        rf"{layer}\.mixer\.(0\.bias|1\.weight|1\.bias|2\.bias)": {0: grow(width)},
        rf"{layer}\.mixer\.2\.weight": {0: grow(width), 1: read(width)},
        rf"{layer}\.downsample\.norm\.(weight|bias)": {0: grow(width, width, width, width)},
        rf"{layer}\.downsample\.reduction\.weight": {1: read(width, width, width, width)},
        rf"text\.pwams\.{stage}\.image_lang_att\.f_(key|value)\.0\.weight": {1: read(width)},
        rf"head\.pixel_decoder\.input_proj\.{config.num_stages - 1 - stage}\.0\.weight": {1: read(width)},
        **fusion(rf"{layer}\.fusion", width),
        **fusion(rf"{layer}\.fusions\.\d+", quarter),
    }
    if stage == 0:
        rules[r"vision\.patch_embed\.(proj\.weight|proj\.bias|norm\.weight|norm\.bias)"] = {0: grow(width)}
    else:
        rules[rf"vision\.layers\.{stage - 1}\.downsample\.reduction\.weight"] = {0: grow(width)}
    return {name: rule if isinstance(rule, _Growth) else _Growth(rule) for name, rule in rules.items()}


def _grow_tensor(old: torch.Tensor, growth: _Growth, generator: torch.Generator) -> torch.Tensor:
    sources = {axis: repeat.source() for axis, repeat in growth.axes.items()}
    new = old * growth.scale
    for axis, source in sources.items():
        new = new.index_select(axis, source)
    for axis, repeat in growth.axes.items():
        if repeat.reads:
            # random shares that sum to 1 over the copies of each old input
            share = torch.empty(new.shape).uniform_(0.5, 1.5, generator=generator)
            totals = torch.zeros_like(share).index_add_(axis, sources[axis], share)
            totals = totals.narrow(axis, 0, sum(repeat.blocks)).index_select(axis, sources[axis])
            new = new * share / totals
    return new


def widen_swin(model: MagNet, widths: Sequence[int], seed: int = 0) -> MagNet:
    """A copy of `model` whose Swin stages have `widths` channels, each the current width or a
    whole multiple of it; a widened stage has as many times the attention heads (same head width).

    The widened model's outputs equal the old model's up to float rounding (see the module
    docstring); `seed` draws the random split of input weights among repeated channels."""
    widths = tuple(int(w) for w in widths)
    old = tuple(model.config.stage_dims())
    if len(widths) != len(old) or any(new < now or new % now for new, now in zip(widths, old, strict=False)):
        raise ConfigError(
            f"stage_widths {list(widths)} cannot widen a model with widths {list(old)}: give one entry per "
            "stage, each the current width or a whole multiple of it"
        )
    factors = [new // now for new, now in zip(widths, old, strict=True)]
    config = dataclasses.replace(
        model.config,
        embed_dim=widths[0],
        stage_widths=widths,
        num_heads=tuple(h * f for h, f in zip(model.config.num_heads, factors, strict=True)),
    )
    state = model.state_dict()
    generator = torch.Generator().manual_seed(seed)
    for stage, factor in enumerate(factors):
        if factor == 1:
            continue
        rules = _stage_rules(model, stage, factor)
        for name in list(state):
            matched = [axes for pattern, axes in rules.items() if re.fullmatch(pattern, name)]
            if len(matched) > 1:
                raise RuntimeError(f"widening rules overlap at {name}")
            if matched:
                state[name] = _grow_tensor(state[name], matched[0], generator)
    grown = MagNet(config)
    mismatched = [k for k, v in grown.state_dict().items() if state[k].shape != v.shape]
    if mismatched:
        raise RuntimeError(f"widening missed {mismatched[:5]}")
    grown.load_state_dict(state)
    return _in_place_of(model, grown)
