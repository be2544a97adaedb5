"""Mask Grounding head: predict masked words from language, visual and mask tokens.

The auxiliary task of MagNet. Some words of the expression are masked (`magnet.masking.mask_tokens`);
a small transformer reads the language features of the masked expression together with pooled
visual features and the ground-truth mask, and must recover the masked words. Predicting a word that
names the object only works by looking at the masked region, which teaches the model to ground
words in pixels. The last layer's attention from each word to the visual grid is returned as a
token-to-region grounding map.

Token sequence (T = L + 2·G², G = `config.visual_grid`):
    [language (L) | visual (G²) | mask (G²)]
    language_l = Linear(Ct -> d)(text_l)                        + type[0]
    visual_g   = Linear(Cv -> d)(avgpool_G(visual))_g + pos_g   + type[1]
    mask_g     = MaskEncoder(areapool_G(mask))_g      + pos_g   + type[2]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MagNetConfig

LANGUAGE, VISUAL, MASK = 0, 1, 2  # token type ids


@dataclass
class GroundingOutput:
    """What the Mask Grounding head predicts for a batch."""

    logits: Tensor  # (B, L, V) word logits at every language position; (N, V) at the N `positions` asked for
    attentions: Tensor  # (B, L, G, G) last layer's attention of each word over the visual grid, sums to 1


class GroundingLayer(nn.Module):
    """Pre-norm transformer layer whose self-attention weights (averaged over heads) come out."""

    def __init__(self, hidden: int, heads: int, intermediate: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, intermediate), nn.GELU(), nn.Linear(intermediate, hidden))

    def forward(self, tokens: Tensor, padding_mask: Tensor) -> tuple[Tensor, Tensor]:
        """tokens: (B, T, d); padding_mask: (B, T) True at pads -> (tokens (B, T, d), attention (B, T, T))."""
        x = self.norm1(tokens)
        attended, attention = self.attn(
            x, x, x, key_padding_mask=padding_mask, need_weights=True, average_attn_weights=True
        )
        tokens = tokens + attended
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens, attention


class MaskEncoder(nn.Module):
    """Encodes a (B, 1, G, G) pooled mask into (B, G·G, d) tokens with a small conv net."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, hidden, kernel_size=3, padding=1), nn.GELU(), nn.Conv2d(hidden, hidden, kernel_size=1)
        )

    def forward(self, mask: Tensor) -> Tensor:
        return self.net(mask).flatten(2).transpose(1, 2)


class MaskGroundingHead(nn.Module):
    """Predicts the masked words of an expression from its features, the image and the object's mask.

    Sized by `config.grounding`; reads text features of width Ct = `config.text_hidden_size` and the
    model's mask features (Cv = `config.head_dim`) as its visual features; its word decoder covers
    V = `config.vocab_size` words, its weight tied to the text encoder's word embeddings with
    `tie_decoder`.
    """

    def __init__(self, config: MagNetConfig) -> None:
        super().__init__()
        if config.grounding is None:
            raise ValueError("config.grounding is None: the config has no Mask Grounding head to build")
        head, text_hidden = config.grounding, config.text_hidden_size
        hidden, grid = head.hidden_size, head.visual_grid
        self.grid = grid
        self.language_in = nn.Linear(text_hidden, hidden)
        self.visual_in = nn.Linear(config.head_dim, hidden)
        self.mask_encoder = MaskEncoder(hidden)
        self.position_embedding = nn.Parameter(torch.zeros(grid * grid, hidden))
        self.type_embedding = nn.Embedding(3, hidden)
        self.layers = nn.ModuleList(
            GroundingLayer(hidden, head.num_heads, head.intermediate_size) for _ in range(head.num_layers)
        )
        self.norm = nn.LayerNorm(hidden)
        # BERT's masked-LM prediction head: transform, then a decoder tied to the word embeddings
        self.transform = nn.Sequential(nn.Linear(hidden, text_hidden), nn.GELU(), nn.LayerNorm(text_hidden))
        self.decoder = nn.Linear(text_hidden, config.vocab_size)
        nn.init.trunc_normal_(self.position_embedding, std=0.02)

    def tie_decoder(self, word_embeddings: nn.Embedding) -> None:
        """Share the decoder's weight with the text encoder's (V, Ct) word-embedding matrix."""
        if word_embeddings.weight.shape != self.decoder.weight.shape:
            raise ValueError(
                f"word embeddings {tuple(word_embeddings.weight.shape)} do not match the grounding "
                f"decoder {tuple(self.decoder.weight.shape)}; check vocab_size and text_hidden_size"
            )
        self.decoder.weight = word_embeddings.weight

    def _grid_tokens(self, visual_features: Tensor, target_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, G², d) visual and mask tokens, position and type embeddings added."""
        visual = F.adaptive_avg_pool2d(visual_features, self.grid).flatten(2).transpose(1, 2)
        visual = self.visual_in(visual) + self.position_embedding + self.type_embedding.weight[VISUAL]
        mask = F.adaptive_avg_pool2d(target_mask.to(visual.dtype), self.grid)
        mask = self.mask_encoder(mask) + self.position_embedding + self.type_embedding.weight[MASK]
        return visual, mask

    def forward(
        self,
        text_features: Tensor,
        attention_mask: Tensor,
        visual_features: Tensor,
        target_mask: Tensor,
        positions: Tensor | None = None,
    ) -> GroundingOutput:
        """text_features: (B, L, Ct) of the masked expression; attention_mask: (B, L) 1 = real token;
        visual_features: (B, Cv, h, w); target_mask: (B, 1, H, W) or (B, H, W), float 0/1.
        positions: optional (B, L) bool; the word logits are then decoded there only, (N, V) in
        order (training needs the masked words alone, and the V-wide decoder is the costly part)."""
        if target_mask.dim() == 3:
            target_mask = target_mask[:, None]
        length = text_features.shape[1]
        language = self.language_in(text_features) + self.type_embedding.weight[LANGUAGE]
        visual, mask = self._grid_tokens(visual_features, target_mask)
        tokens = torch.cat([language, visual, mask], dim=1)
        grid_valid = attention_mask.new_ones(attention_mask.shape[0], 2 * self.grid**2)
        padding_mask = torch.cat([attention_mask, grid_valid], dim=1) == 0

        for layer in self.layers:
            tokens, attention = layer(tokens, padding_mask)
        words = tokens[:, :length] if positions is None else tokens[:, :length][positions]
        logits = self.decoder(self.transform(self.norm(words)))
        return GroundingOutput(logits=logits, attentions=self._word_to_region(attention, length))

    def _word_to_region(self, attention: Tensor, length: int) -> Tensor:
        """(B, T, T) attention -> (B, L, G, G): each word's attention over the visual tokens, renormalised."""
        grid_tokens = self.grid**2
        to_visual = attention[:, :length, length : length + grid_tokens]
        to_visual = to_visual / to_visual.sum(-1, keepdim=True).clamp_min(torch.finfo(to_visual.dtype).tiny)
        return to_visual.reshape(-1, length, self.grid, self.grid)


def predict_masked_word(output: GroundingOutput, position: int, k: int = 5, sample: int = 0) -> list[tuple[int, float]]:
    """The k most probable (token_id, probability) pairs at one word position of one sample."""
    probs = output.logits[sample, position].detach().float().softmax(-1)
    top = probs.topk(min(k, probs.numel()))
    return [(int(i), float(p)) for p, i in zip(top.values, top.indices)]
