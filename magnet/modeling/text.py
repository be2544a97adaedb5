"""BERT text encoder of MagNet, run in blocks interleaved with the Swin stages, with the
language-side fusion and gated residual after each block. BERT layers come from transformers."""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLayer

from ..config import MagNetConfig
from .fusion import LanguageFusion, tanh_gate

# The released code builds BERT's additive mask as (1 - m) * -10000; newer transformers uses the
# dtype's minimum, which overflows in the language-side fusion, so this form is kept.
BERT_MASK_VALUE = -10000.0


def bert_config(config: MagNetConfig) -> BertConfig:
    cfg = BertConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.text_hidden_size,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        intermediate_size=config.text_intermediate_size,
        max_position_embeddings=config.max_position_embeddings,
        type_vocab_size=config.type_vocab_size,
        layer_norm_eps=1e-12,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T) 0/1 -> (B, 1, T) with 0 for real tokens and -10000 for pads."""
    return (1.0 - attention_mask[:, None, :].to(dtype)) * BERT_MASK_VALUE


class TextEncoder(nn.Module):
    """BERT embeddings and layers plus one language-side fusion per visual stage."""

    def __init__(self, config: MagNetConfig) -> None:
        super().__init__()
        bert = bert_config(config)
        self.fusion_after_layer = config.fusion_after_layer
        self.embeddings = BertEmbeddings(bert)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(BertLayer(bert, layer_idx=i) for i in range(config.text_layers))
        dim = config.text_hidden_size
        self.pwams = nn.ModuleList(LanguageFusion(dim, c) for c in config.stage_dims())
        self.res_gates = nn.ModuleList(tanh_gate(dim, nn.ReLU) for _ in config.stage_dims())
        # Only produce the `text_residual` intermediate that the released forward returns unused.
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in config.stage_dims())

    def run_block(self, stage: int, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Runs the BERT layers that sit beside visual stage `stage` (0-based); mask is (B, 1, T) additive."""
        start = self.fusion_after_layer[stage - 1] if stage else 0
        for layer in self.encoder.layer[start : self.fusion_after_layer[stage]]:
            text = layer(text, mask[:, None])
        return text

    def encode_plain(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """BERT alone (no fusion): (B, T) ids -> (B, T, Ct). The Mask Grounding head reads the
        masked expression this way: one text-only pass instead of a second full forward."""
        mask = additive_mask(attention_mask, self.embeddings.word_embeddings.weight.dtype)
        text = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            text = layer(text, mask[:, None])
        return text

    def fuse(
        self, stage: int, text: torch.Tensor, visual: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Language-side fusion and gate: returns (text for the next block, raw fusion output r)."""
        fused = self.pwams[stage](text, visual, mask)
        return text + self.res_gates[stage](fused) * fused, fused
