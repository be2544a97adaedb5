"""Cross-modal fusion of MagNet (from LAVT): pixel-word attention on the vision side, word-pixel
attention on the language side, tanh-gated residuals and the multi-scale alignment module.

Module names follow the released checkpoints (`vis_project`, `image_lang_att`, `project_mm`, ...),
so their weights load without renaming; the Sequential indices are part of those names.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

# The released code masks scores with this constant (not -inf), and builds BERT-style additive
# masks with -10000; both are kept as they change the numbers for pad tokens.
MASK_FILL = 1e4


def pointwise(block: nn.Sequential, tokens: torch.Tensor) -> torch.Tensor:
    """Applies Sequential(Conv1d(kernel 1), activation) to (B, N, C) tokens without moving
    channels first: a 1x1 Conv1d is a Linear over channels (the released weights are Conv1d)."""
    conv, *rest = block
    out = F.linear(tokens, conv.weight.squeeze(-1), conv.bias)
    for module in rest:
        out = module(out)
    return out


def tanh_gate(dim: int, activation: type[nn.Module]) -> nn.Sequential:
    """Gate of the gated residual x + gate(r) * r: Linear -> act -> Linear -> Tanh (no biases)."""
    return nn.Sequential(nn.Linear(dim, dim, bias=False), activation(), nn.Linear(dim, dim, bias=False), nn.Tanh())


class PixelWordAttention(nn.Module):
    """Each pixel attends over the words: query per pixel, key/value per word.

    x (B, N, D), text (B, T, Ct), mask (B, T) -> out (B, N, D) and weights (B, heads, N, T).
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.f_query = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.f_key = nn.Sequential(nn.Conv1d(text_dim, dim, 1))
        self.f_value = nn.Sequential(nn.Conv1d(text_dim, dim, 1))
        self.W = nn.Sequential(nn.Linear(dim, dim), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        h = self.num_heads
        m = mask.to(x.dtype).unsqueeze(1)  # (B, 1, T)
        text_cf = text.transpose(1, 2)
        query = self.f_query(x).view(b, n, h, d // h).transpose(1, 2)  # (B, h, N, d/h)
        key = (self.f_key(text_cf) * m).view(b, h, d // h, -1)  # (B, h, d/h, T)
        value = (self.f_value(text_cf) * m).view(b, h, d // h, -1)
        scores = query @ key * d**-0.5  # scaled by the full key width, not per head
        scores = scores + (MASK_FILL * m.unsqueeze(1) - MASK_FILL)
        weights = scores.softmax(dim=-1)  # (B, h, N, T)
        out = (weights @ value.transpose(2, 3)).transpose(1, 2).reshape(b, n, d)
        return self.W(out), weights


class VisionFusion(nn.Module):
    """Vision-side fusion (PWAM): r = project_mm(vis_project(x) * attend(x, words)).

    x (B, N, D) -> r (B, N, D), attention weights (B, heads, N, T).
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int) -> None:
        super().__init__()
        self.vis_project = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.GELU())
        self.image_lang_att = PixelWordAttention(dim, text_dim, num_heads)
        self.project_mm = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.GELU())

    def forward(self, x: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attended, weights = self.image_lang_att(x, text, mask)
        return pointwise(self.project_mm, pointwise(self.vis_project, x) * attended), weights


class WordPixelAttention(nn.Module):
    """Each word attends over the pixels (language side).

    Kept from the released model, whose weights were trained this way: queries are multiplied by
    the additive mask, so real tokens get all-zero queries (uniform attention over pixels) and pads
    near one-hot attention; the final InstanceNorm over tokens then lets pads influence real tokens.
    """

    def __init__(self, text_dim: int, visual_dim: int) -> None:
        super().__init__()
        self.f_query = nn.Sequential(nn.Conv1d(text_dim, text_dim, 1))
        self.f_key = nn.Sequential(nn.Conv1d(visual_dim, text_dim, 1), nn.InstanceNorm1d(text_dim))
        self.f_value = nn.Sequential(nn.Conv1d(visual_dim, text_dim, 1), nn.InstanceNorm1d(text_dim))
        self.W = nn.Sequential(nn.Conv1d(text_dim, text_dim, 1), nn.InstanceNorm1d(text_dim))

    def forward(self, text: torch.Tensor, visual: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """text (B, T, Ct), visual (B, N, C), additive_mask (B, 1, T) = (1 - m) * -10000 -> (B, T, Ct)."""
        ct = text.shape[-1]
        query = self.f_query(text.transpose(1, 2)) * additive_mask  # (B, Ct, T)
        key = self.f_key(visual.transpose(1, 2))  # (B, Ct, N): 44 MB at 480 px, so freed before the value
        scores = query.transpose(1, 2) @ key * ct**-0.5  # (B, T, N)
        del key
        scores = scores + (MASK_FILL * additive_mask.transpose(1, 2) - MASK_FILL)
        out = scores.softmax(dim=-1) @ self.f_value(visual.transpose(1, 2)).transpose(1, 2)  # (B, T, Ct)
        return self.W(out.transpose(1, 2)).transpose(1, 2)


class LanguageFusion(nn.Module):
    """Language-side fusion: r = project_mm(vis_project(l) * attend(l, pixels)); despite its name,
    `vis_project` acts on the language features (as in the released weights)."""

    def __init__(self, text_dim: int, visual_dim: int) -> None:
        super().__init__()
        self.vis_project = nn.Sequential(nn.Linear(text_dim, text_dim), nn.GELU())
        self.image_lang_att = WordPixelAttention(text_dim, visual_dim)
        self.project_mm = nn.Sequential(nn.Conv1d(text_dim, text_dim, 1), nn.GELU())

    def forward(self, text: torch.Tensor, visual: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        fused = self.vis_project(text) * self.image_lang_att(text, visual, additive_mask)
        return pointwise(self.project_mm, fused)


def pyramid_branch(dim: int, pool_size: int) -> nn.Sequential:
    """Pool to p x p, Conv1x1 D->4D, channels-first LayerNorm, Conv1x1 4D->D, GELU, Conv1x1 D->D/4."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(pool_size),
        nn.Conv2d(dim, 4 * dim, 1, bias=False),
        LayerNorm2d(4 * dim, eps=1e-6),
        nn.Conv2d(4 * dim, dim, 1, bias=False),
        nn.GELU(),
        nn.Conv2d(dim, dim // 4, 1, bias=False),
    )
