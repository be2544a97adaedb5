"""Checkpoint loading: official files, our safetensors, and every way a file can be wrong."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from magnet.checkpoint import (
    CheckpointError,
    average_checkpoints,
    convert_official_state_dict,
    download_released,
    infer_official_config,
    load_model,
    save_checkpoint,
)
from magnet.cli import main as cli_main
from magnet.modeling import MagNet
from tests.helpers import REFERENCE, requires_reference, tiny_config, tiny_model


def official_state_dict(model: MagNet) -> dict[str, torch.Tensor]:
    """Our weights laid out as the authors' files are (inverse of the conversion, for tests)."""
    inverse = {"vision.": "image_model.", "text.": "language_model.", "head.": "classifier."}
    out = {}
    for key, value in model.state_dict().items():
        for new, old in inverse.items():
            if key.startswith(new):
                key = old + key[len(new) :]
        out[key] = value.clone()
    return out


def test_official_layout_round_trip_infers_architecture(tmp_path):
    cfg = tiny_config(text_hidden_size=64, text_heads=1)
    model = tiny_model(text_hidden_size=64, text_heads=1).eval()
    sd = official_state_dict(model)
    sd["image_model.norm0.weight"] = torch.ones(16)  # unused in the released files
    torch.save({"model": {k: v.half() for k, v in sd.items()}}, tmp_path / "magnet_fake.pth")
    inferred = infer_official_config(sd)
    for name in (
        "embed_dim",
        "depths",
        "num_heads",
        "window_size",
        "text_layers",
        "vocab_size",
        "head_dim",
        "pixel_encoder_layers",
        "decoder_layers",
        "decoder_ffn",
        "fusion_after_layer",
    ):
        assert getattr(inferred, name) == getattr(cfg, name), name
    loaded = load_model(tmp_path / "magnet_fake.pth", device="cpu")
    assert loaded.provenance["format"] == "official"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())


@requires_reference
def test_released_key_list_converts_to_our_model():
    """Every key of the released swin-b files maps onto our `swin-b` preset with its shape."""
    from magnet.config import get_config

    rows = (REFERENCE / "keys_full.tsv").read_text().splitlines()[1:]
    shapes = {k: tuple(int(d) for d in s.split("x")) for k, s, *_ in (r.split("\t") for r in rows)}
    fake = {k: torch.empty(s, dtype=torch.float32) for k, s in shapes.items()}
    assert len(fake) == 1310
    cfg = infer_official_config(fake)
    assert cfg == get_config("swin-b")
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        ours = {k: v.shape for k, v in MagNet(cfg).state_dict().items()}
    converted = convert_official_state_dict(fake)
    assert set(converted) == set(ours)
    assert all(tuple(converted[k].shape) == tuple(ours[k]) for k in ours)


def test_safetensors_round_trip_is_exact(tmp_path):
    model = tiny_model().eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors", provenance={"note": "test"})
    loaded = load_model(path, device="cpu")
    assert loaded.config == model.config
    assert loaded.provenance["note"] == "test"
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_loading_takes_the_files_weights_without_initialising(tmp_path, monkeypatch):
    """The loader assigns the file's tensors to a model built without random initialisation; the
    tied Mask Grounding decoder stays tied, the model still trains, and writes to its weights
    never reach the (memory-mapped) file."""
    from tests.helpers import TINY_GROUNDING

    model = tiny_model(grounding=TINY_GROUNDING).eval()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    before = path.read_bytes()
    real_normal = torch.nn.init.normal_

    def normal_on_meta_only(tensor, *args, **kwargs):
        assert tensor.device.type == "meta", "the loader initialised real weights"
        return real_normal(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.nn.init, "normal_", normal_on_meta_only)
    loaded = load_model(path, device="cpu")
    monkeypatch.undo()
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in loaded.parameters())
    assert loaded.grounding.decoder.weight is loaded.text.embeddings.word_embeddings.weight
    assert len(list(loaded.parameters())) == len(list(model.parameters()))
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with torch.no_grad():
        for param in loaded.parameters():
            param.add_(1.0)
    assert path.read_bytes() == before
    fresh = load_model(save_checkpoint(tiny_model(), tmp_path / "plain.safetensors"), grounding=TINY_GROUNDING)
    assert fresh.grounding.decoder.weight is fresh.text.embeddings.word_embeddings.weight
    assert all(p.device.type == "cpu" for p in fresh.grounding.parameters())


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pth")


def test_truncated_files_are_clear_errors(tmp_path):
    model = tiny_model()
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "cut.safetensors")
    torch.save({"model": official_state_dict(model)}, tmp_path / "m.pth")
    data = (tmp_path / "m.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path / "cut.pth")


def test_wrong_model_names_what_is_missing(tmp_path):
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(3)}}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="missing image_model.patch_embed"):
        load_model(tmp_path / "resnet.pth")
    sd = official_state_dict(tiny_model())
    del sd["classifier.predictor.class_embed.bias"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"model": sd}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing 1 weights: head\.predictor\.class_embed\.bias.*unexpected 1"):
        load_model(tmp_path / "partial.pth")


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/magnet_pwned",))


def test_pickled_code_is_never_executed(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": Exploit()}, f)
    with pytest.raises(CheckpointError):
        load_model(path)
    assert not os.path.exists("/tmp/magnet_pwned")


def test_other_safetensors_file_is_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a MagNet Studio checkpoint"):
        load_model(tmp_path / "other.safetensors")


def test_download_uses_hub_only_when_asked(tmp_path, monkeypatch):
    """The hub call is real code; here it is pointed at a local file instead of the network."""
    calls = []
    local = tmp_path / "magnet_refcoco.pth"
    torch.save({"model": official_state_dict(tiny_model())}, local)

    def fake_download(repo_id, filename, cache_dir=None):
        calls.append((repo_id, filename))
        return str(local)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake_download)
    path = download_released("refcoco")
    assert calls == [("yxchng/magnet_weights", "magnet_refcoco.pth")]
    assert load_model(path, device="cpu").provenance["source"] == "magnet_refcoco.pth"
    with pytest.raises(CheckpointError, match="choose one of"):
        download_released("imagenet")


def test_cli_convert_and_info(tmp_path, capsys):
    torch.save({"model": official_state_dict(tiny_model())}, tmp_path / "magnet_x.pth")
    assert cli_main(["convert", str(tmp_path / "magnet_x.pth"), str(tmp_path / "x.safetensors")]) == 0
    assert cli_main(["info", str(tmp_path / "x.safetensors")]) == 0
    out = capsys.readouterr().out
    assert '"parameters"' in out and "magnet_x.pth" in out
    assert cli_main(["info", str(tmp_path / "missing.pth")]) == 2
    assert "error: checkpoint not found" in capsys.readouterr().err


def save_as_training_state(model: MagNet, out) -> os.PathLike:
    """`model` written as `train` writes its resumable states (the real writer, a fresh optimizer)."""
    from magnet.train import save_training_state

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return save_training_state(out, 7, model, optimizer, scheduler, scaler, best=0.5, keep=2)


def test_training_states_load_with_their_config_and_average_with_safetensors_files(tmp_path):
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    state = save_as_training_state(first, tmp_path / "run")
    loaded = load_model(state, device="cpu")
    assert loaded.config == first.config and loaded.provenance["step"] == 7
    for key, value in first.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key

    other = save_checkpoint(second, tmp_path / "second.safetensors")
    averaged = load_model(average_checkpoints([state, other], tmp_path / "avg.safetensors"), device="cpu")
    assert averaged.provenance["averaged_from"] == [state.name, "second.safetensors"]
    changed = 0
    for key, value in averaged.state_dict().items():
        a, b = first.state_dict()[key], second.state_dict()[key]
        expected = (a.double() + b.double()) / 2 if a.is_floating_point() else a
        torch.testing.assert_close(value, expected.to(value.dtype), rtol=0, atol=1e-7, msg=key)
        changed += int(a.is_floating_point() and not torch.equal(a, b))
    assert changed > 10  # the two seeds differ, so the average is a third set of weights


def test_averaging_refuses_one_file_and_mixed_architectures(tmp_path, capsys):
    one = save_checkpoint(tiny_model(seed=0), tmp_path / "a.safetensors")
    shallow = save_checkpoint(tiny_model(seed=0, shallow=True), tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match="another architecture"):
        average_checkpoints([one, shallow], tmp_path / "out.safetensors")
    assert cli_main(["average", str(one), "--out", str(tmp_path / "out.safetensors")]) == 2
    assert "at least two checkpoints" in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()
    second = save_checkpoint(tiny_model(seed=1), tmp_path / "c.safetensors")
    assert cli_main(["average", str(one), str(second), "--out", str(tmp_path / "out.safetensors"), "--half"]) == 0
    assert "the average of 2" in capsys.readouterr().out
    assert load_model(tmp_path / "out.safetensors", device="cpu").config == tiny_model(seed=0).config
