"""Growing a trained model deeper or wider (magnet/growth.py): the grown model computes what the
old one did, its new capacity trains apart from the old, and training with `init` accepts only those
changes of the model and a new input size."""

from __future__ import annotations

import pytest
import torch

from magnet.checkpoint import load_model, save_checkpoint
from magnet.errors import ConfigError
from magnet.growth import deepen_decoder, deepen_swin, widen_swin
from magnet.train import TrainConfig, build_model
from tests.helpers import TINY_GROUNDING, save_tiny_checkpoint, tiny_model


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(2, 3, 64, 64, generator=generator)
    ids = torch.randint(1000, 3000, (2, 8), generator=generator)
    return images, ids, torch.ones(2, 8, dtype=torch.long)


def test_deeper_model_gives_the_same_outputs_and_its_new_blocks_learn():
    model = tiny_model(seed=0).eval()
    grown = deepen_swin(model, (2, 2, 4, 3)).eval()
    assert grown.config.depths == (2, 2, 4, 3) and model.config.depths == (2, 2, 2, 2)
    assert [len(stage.blocks) for stage in grown.vision.layers] == [2, 2, 4, 3]
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        before, after = model(*_inputs()), grown(*_inputs())
    torch.testing.assert_close(after.pred_masks, before.pred_masks, rtol=0, atol=0)
    torch.testing.assert_close(after.pred_logits, before.pred_logits, rtol=0, atol=0)

    # the zeroed branches get gradients, so training moves the new blocks away from the identity
    grown.train()
    grown(*_inputs()).pred_masks.square().mean().backward()
    new_block = grown.vision.layers[2].blocks[3]
    assert new_block.attn.proj.weight.grad.abs().sum() > 0
    assert new_block.mlp.fc2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("depths", [(2, 2, 1, 2), (2, 2, 2)])
def test_shrinking_or_reshaping_is_refused_with_the_rule(depths):
    with pytest.raises(ConfigError, match="at least the current one"):
        deepen_swin(tiny_model(seed=0), depths)


def test_deeper_decoder_gives_the_same_predictions_and_its_new_layers_learn():
    model = tiny_model(seed=0).eval()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # trained LayerNorms are not 1 and 0; the old last layer's must not matter
        for name, parameter in model.head.predictor.named_parameters():
            if "norm" in name:
                parameter.copy_(torch.rand(parameter.shape, generator=generator) * 2 - 0.5)
    old = model.config.decoder_layers
    grown = deepen_decoder(model, old + 2).eval()
    assert grown.config.decoder_layers == old + 2 and len(grown.head.predictor.transformer_ffn_layers) == old + 2
    with torch.no_grad():
        before, after = model(*_inputs()), grown(*_inputs())
    torch.testing.assert_close(after.pred_masks, before.pred_masks, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(after.pred_logits, before.pred_logits, rtol=1e-5, atol=1e-5)
    assert len(after.aux_outputs) == len(before.aux_outputs) + 2
    for old_aux, new_aux in zip(before.aux_outputs, after.aux_outputs):  # the old layers predict as before
        torch.testing.assert_close(new_aux["pred_masks"], old_aux["pred_masks"], rtol=1e-5, atol=1e-5)

    grown.train()
    grown(*_inputs()).pred_masks.square().mean().backward()
    decoder = grown.head.predictor
    assert decoder.transformer_cross_attention_layers[old].multihead_attn.out_proj.weight.grad.abs().sum() > 0
    assert decoder.transformer_ffn_layers[old + 1].linear2.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match=f"give at least {old}"):
        deepen_decoder(model, old - 1)


@pytest.mark.parametrize(
    ("widths", "fusion_heads"),
    [((32, 32, 64, 128), 1), ((16, 64, 64, 256), 1), ((48, 64, 128, 128), 2)],
    ids=["first-stage", "middle-and-last", "threefold-two-fusion-heads"],
)
def test_wider_model_gives_the_same_outputs(widths, fusion_heads):
    model = tiny_model(seed=0, fusion_heads=fusion_heads).eval()
    grown = widen_swin(model, widths).eval()
    assert grown.config.stage_dims() == list(widths) and grown.config.embed_dim == widths[0]
    factors = [new // old for new, old in zip(widths, model.config.stage_dims())]
    assert grown.config.num_heads == tuple(h * f for h, f in zip(model.config.num_heads, factors))
    assert grown.vision.layers[0].blocks[0].attn.qkv.weight.shape == (3 * widths[0], widths[0])
    with torch.no_grad():
        before, after = model(*_inputs()), grown(*_inputs())
    torch.testing.assert_close(after.pred_masks, before.pred_masks, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after.pred_logits, before.pred_logits, rtol=1e-4, atol=1e-4)
    for old_map, new_map in zip(before.visual_features, after.visual_features, strict=True):
        assert new_map.shape[1] in widths and new_map.shape[-2:] == old_map.shape[-2:]


def test_repeated_channels_learn_apart():
    """Copies of a channel whose readers only differed in scale would get equal Adam updates and
    stay copies; the random split of input weights gives them different gradients."""
    grown = widen_swin(tiny_model(seed=0), (32, 32, 64, 128)).train()
    grown(*_inputs()).pred_masks.square().mean().backward()
    qkv = grown.vision.layers[0].blocks[0].attn.qkv.weight
    # query channels 0-15 and 16-31 are copies: their weights on the two copies of each input add up alike
    reads = qkv.detach()[:32, :16] + qkv.detach()[:32, 16:]
    torch.testing.assert_close(reads[:16], reads[16:], rtol=1e-6, atol=1e-6)
    first, second = qkv.grad[:16], qkv.grad[16:32]
    cosine = torch.nn.functional.cosine_similarity(first.flatten(), second.flatten(), dim=0)
    assert first.abs().sum() > 0 and cosine < 0.99


@pytest.mark.parametrize("widths", [(24, 32, 64, 128), (8, 32, 64, 128), (32, 32, 64)])
def test_narrowing_or_uneven_widening_is_refused_with_the_rule(widths):
    with pytest.raises(ConfigError, match="whole multiple"):
        widen_swin(tiny_model(seed=0), widths)


def test_training_from_a_checkpoint_widens_it_and_the_wider_file_loads(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "tiny.safetensors", with_grounding=True)
    config = {"init": str(path), "grounding": True, "device": "cpu", "model": {"stage_widths": [32, 32, 64, 128]}}
    grown = build_model(TrainConfig.from_dict(config))
    assert grown.config.stage_dims() == [32, 32, 64, 128] and grown.training and grown.grounding is not None
    saved = load_model(save_checkpoint(grown, tmp_path / "wide.safetensors"), device="cpu")
    assert saved.config.stage_widths == (32, 32, 64, 128) and saved.config.num_heads[0] == 2
    for (name, before), (_, after) in zip(grown.state_dict().items(), saved.state_dict().items(), strict=True):
        torch.testing.assert_close(after, before, rtol=0, atol=0, msg=name)


def test_training_from_a_checkpoint_grows_it_and_refuses_other_model_changes(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "tiny.safetensors", with_grounding=True)
    base = {"init": str(path), "grounding": True, "device": "cpu"}
    grown = build_model(TrainConfig.from_dict({**base, "model": {"depths": [1, 1, 3, 1]}}))
    assert grown.config.depths == (1, 1, 3, 1) and grown.training
    assert grown.grounding is not None and grown.config.grounding == TINY_GROUNDING
    loaded = load_model(path, device="cpu")
    old_block, kept_block = loaded.vision.layers[2].blocks[0], grown.vision.layers[2].blocks[0]
    torch.testing.assert_close(kept_block.attn.qkv.weight, old_block.attn.qkv.weight, rtol=0, atol=0)

    deeper = build_model(TrainConfig.from_dict({**base, "model": {"decoder_layers": 4}}))
    saved = load_model(save_checkpoint(deeper, tmp_path / "deeper.safetensors"), device="cpu")
    assert saved.config.decoder_layers == 4 and len(saved.head.predictor.transformer_ffn_layers) == 4

    with pytest.raises(ConfigError, match=r"\['head_dim'\] cannot change a model loaded with init"):
        build_model(TrainConfig.from_dict({**base, "model": {"head_dim": 64}}))


def test_training_from_a_checkpoint_at_another_input_size_keeps_the_weights_and_saves_the_size(tmp_path):
    path = save_tiny_checkpoint(tmp_path / "tiny.safetensors", with_grounding=True)
    loaded = load_model(path, device="cpu")
    model = {"image_size": 96, "keep_aspect": True}
    resized = build_model(
        TrainConfig.from_dict({"init": str(path), "grounding": True, "device": "cpu", "model": model})
    )
    assert loaded.config.image_size != 96 and resized.config.image_size == 96
    assert not loaded.config.keep_aspect and resized.config.keep_aspect
    for (name, before), (_, after) in zip(loaded.state_dict().items(), resized.state_dict().items(), strict=True):
        torch.testing.assert_close(after, before, rtol=0, atol=0, msg=name)
    saved = load_model(save_checkpoint(resized, tmp_path / "resized.safetensors"), device="cpu")
    assert saved.config.image_size == 96 and saved.config.keep_aspect
