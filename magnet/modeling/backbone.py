"""Swin Transformer pieces of MagNet's visual encoder, as in the original Swin segmentation
backbone that the released weights were trained with: maps are padded to a multiple of the window,
also a map no larger than one window (timm would shrink the window to the map), and every second
block is shifted whatever the map size (timm would drop the shift for such a map)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp
from timm.models.swin_transformer import PatchMerging, WindowAttention, window_partition, window_reverse


class PatchEmbed(nn.Module):
    """(B, 3, H, W) -> tokens (B, H/p * W/p, C): input padded right/bottom to a multiple of p,
    p x p stride-p convolution, LayerNorm."""

    def __init__(self, patch_size: int, embed_dim: int, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        p = self.patch_size
        h, w = images.shape[-2:]
        images = F.pad(images, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.proj(images)
        size = (x.shape[2], x.shape[3])
        return self.norm(x.flatten(2).transpose(1, 2)), size


def shifted_window_mask(padded_size: tuple[int, int], window: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive mask (num_windows, window^2, window^2) that keeps the regions of the cyclically
    shifted (padded) map apart: 0 within a region, -100 across regions."""
    hp, wp = padded_size
    regions = torch.zeros(1, hp, wp, 1, device=device)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in bands:
        for ws in bands:
            regions[:, hs, ws, :] = label
            label += 1
    windows = window_partition(regions, (window, window)).view(-1, window * window)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)


class SwinBlock(nn.Module):
    """One (shifted) window attention block; the map is padded to the window before shifting."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shifted: bool, mlp_ratio: float) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2 if shifted else 0
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads=num_heads, window_size=window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, x: torch.Tensor, size: tuple[int, int], shift_mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, H*W, C) -> (B, H*W, C); `shift_mask` from `shifted_window_mask` for shifted blocks."""
        b, _, c = x.shape
        h, w = size
        ws, s = self.window_size, self.shift_size
        y = self.norm1(x).view(b, h, w, c)
        y = F.pad(y, (0, 0, 0, (ws - w % ws) % ws, 0, (ws - h % ws) % ws))
        hp, wp = y.shape[1:3]
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        windows = window_partition(y, (ws, ws)).view(-1, ws * ws, c)
        windows = self._attend(windows, b, shift_mask if s else None)
        y = window_reverse(windows.view(-1, ws, ws, c), (ws, ws), hp, wp)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y[:, :h, :w, :].reshape(b, h * w, c)
        return x + self.mlp(self.norm2(x))

    def _attend(self, windows: torch.Tensor, b: int, mask: torch.Tensor | None) -> torch.Tensor:
        """Window attention over (B*nW, N, C). Without autograd the windows go through in chunks
        of WINDOW_CHUNK per image: at 480 px the first stage's attention logits for all 100
        windows take 33 MB per copy. Each window's result is that of one pass. Only on the CPU
        (cache-sized working sets); a GPU takes all windows in one pass."""
        per_image = windows.shape[0] // b
        if torch.is_grad_enabled() or not windows.is_cpu or per_image <= WINDOW_CHUNK:
            return self.attn(windows, mask=mask)
        windows = windows.view(b, per_image, *windows.shape[1:])
        out = torch.empty_like(windows)
        for start in range(0, per_image, WINDOW_CHUNK):
            part = slice(start, start + WINDOW_CHUNK)
            chunk = windows[:, part].reshape(-1, *windows.shape[2:])
            out[:, part] = self.attn(chunk, mask=None if mask is None else mask[part]).view_as(out[:, part])
        return out.view(-1, *windows.shape[2:])


WINDOW_CHUNK = 25  # windows per image and chunk without autograd


def make_swin_blocks(dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float) -> nn.ModuleList:
    """The blocks of one Swin stage, alternating regular and shifted windows."""
    return nn.ModuleList(
        SwinBlock(dim, num_heads, window_size, shifted=j % 2 == 1, mlp_ratio=mlp_ratio) for j in range(depth)
    )


def run_swin_blocks(blocks: nn.ModuleList, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Runs a stage's blocks on tokens (B, H*W, C); the shift mask is built once per stage for the
    padded size."""
    ws = blocks[0].window_size
    padded = (-(-size[0] // ws) * ws, -(-size[1] // ws) * ws)
    shift_mask = shifted_window_mask(padded, ws, ws // 2, x.device).to(x.dtype) if len(blocks) > 1 else None
    for block in blocks:
        x = block(x, size, shift_mask)
    return x


def merge_patches(
    merging: PatchMerging, x: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Patch merging on tokens: (B, H*W, C) -> (B, ceil(H/2)*ceil(W/2), 2C)."""
    b, _, c = x.shape
    y = merging(x.view(b, size[0], size[1], c))
    return y.flatten(1, 2), (y.shape[1], y.shape[2])
