"""Mask2Former-style segmentation head with a single query: a multi-scale deformable-attention
pixel decoder over the four fused feature maps and a masked-attention transformer decoder.
Pure PyTorch (grid_sample), no compiled ops. Names follow the released checkpoints."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import MagNetConfig


def sine_position_embedding(feature: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """Normalised 2-D sine position embedding (B, 2*num_feats, H, W), [y, x] channel order."""
    b, _, h, w = feature.shape
    ones = torch.ones(b, h, w, device=feature.device, dtype=torch.float32)
    eps, scale = 1e-6, 2 * math.pi
    y = ones.cumsum(1)
    x = ones.cumsum(2)
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=feature.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_x = x[..., None] / dim_t
    pos_y = y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2).to(feature.dtype)


class ValueMaps:
    """The projected value maps (B, S, heads, d) of all levels in the layout that this device's
    sampling kernel reads, prepared once for any number of query chunks. Two equivalent kernels:
    per-level grid_sample on GPUs (fast forward and backward there) and one embedding_bag over a
    zero-bordered table on CPU (several times faster there than grid_sample)."""

    def __init__(self, value: torch.Tensor, shapes: list[tuple[int, int]]) -> None:
        self.value, self.shapes = value, shapes
        self.table = None if value.is_cuda else _bag_table(value, shapes)
        self.sizes_xy = level_sizes_xy(shapes, value.device)

    def sample(self, locations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Bilinear sampling with zero padding of each level at `locations`, weighted by `weights`
        and summed; shapes as `_sampling_grid_sample`."""
        if self.table is None:
            return _sampling_grid_sample(self.value, self.shapes, locations, weights)
        heads, d = self.value.shape[2:]
        return _bag_sample(self.table, self.shapes, locations, weights, heads, d).to(self.value.dtype)


def level_sizes_xy(shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """(levels, 2) float32 (width, height) of each level, filled on `device` rather than copied from
    the host: a host-to-device copy would wait for the GPU and cannot be captured in a CUDA graph."""
    sizes = torch.empty(len(shapes), 2, device=device)
    for level, (h, w) in enumerate(shapes):
        sizes[level, 0].fill_(w)  # fill_ takes the number as a kernel argument; item assignment copies it
        sizes[level, 1].fill_(h)
    return sizes


def _sampling_grid_sample(
    value: torch.Tensor, shapes: list[tuple[int, int]], locations: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """value (B, S, heads, d), locations (B, Q, heads, levels, points, 2) normalised (x, y),
    weights (B, Q, heads, levels, points) -> (B, Q, heads * d)."""
    b, _, heads, d = value.shape
    _, q, _, levels, points, _ = locations.shape
    grids = 2 * locations - 1
    sampled = []
    start = 0
    for level, (h, w) in enumerate(shapes):
        v = value[:, start : start + h * w].flatten(2).transpose(1, 2).reshape(b * heads, d, h, w)
        start += h * w
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1).to(v.dtype)  # (B*heads, Q, points, 2)
        sampled.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B*heads, d, Q, levels*points)
    w = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points).to(stacked.dtype)
    return (stacked * w).sum(-1).view(b, heads * d, q).transpose(1, 2)


def _bag_table(value: torch.Tensor, shapes: list[tuple[int, int]]) -> torch.Tensor:
    """value (B, S, heads, d) -> one table (B*heads, S', d) of all levels, each with a one-pixel
    zero border, so that an out-of-map corner only needs clamping onto it (that is grid_sample's
    zero padding)."""
    b, _, heads, d = value.shape
    tables, start = [], 0
    for h, w in shapes:
        level = value[:, start : start + h * w].view(b, h, w, heads * d)
        start += h * w
        level = F.pad(level, (0, 0, 1, 1, 1, 1)).view(b, h + 2, w + 2, heads, d)
        tables.append(level.permute(0, 3, 1, 2, 4).reshape(b * heads, (h + 2) * (w + 2), d))
    return torch.cat(tables, 1)


def _bag_sample(
    table: torch.Tensor,
    shapes: list[tuple[int, int]],
    locations: torch.Tensor,
    weights: torch.Tensor,
    heads: int,
    d: int,
) -> torch.Tensor:
    """The same sampling as `_sampling_grid_sample` as one `embedding_bag` over the four bilinear
    corners of every sampling point in a `_bag_table`, the attention weight folded into the corner
    weights; it never materialises the (levels x points) samples. Index arithmetic is done once
    per point in int32; only the final corner stacks are four times larger. Returns (B, Q,
    heads * d) float32."""
    b, q = locations.shape[:2]
    device = table.device
    hw = torch.tensor(shapes, device=device, dtype=torch.int32)
    height, width = hw[:, 0].view(1, 1, 1, -1, 1), hw[:, 1].view(1, 1, 1, -1, 1)
    row = width + 2
    sizes = (hw[:, 0] + 2) * (hw[:, 1] + 2)
    starts = (sizes.cumsum(0, dtype=torch.int32) - sizes).view(1, 1, 1, -1, 1)
    tables_start = (torch.arange(b * heads, device=device, dtype=torch.int32) * table.shape[1]).view(b, heads, 1, 1, 1)
    # (B, heads, Q, levels, points) layout from here on, so the corner stacks come out contiguous
    locations = locations.permute(0, 2, 1, 3, 4, 5).contiguous()
    weights = weights.permute(0, 2, 1, 3, 4).contiguous()
    x = locations[..., 0] * width - 0.5  # pixel coordinates, pixel centres at integers
    y = locations[..., 1] * height - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.to(torch.int32), y0.to(torch.int32)
    step_x = ((x0 >= -1) & (x0 < width)).to(torch.int32)  # 0 when both corners fall on the border
    step_y = ((y0 >= -1) & (y0 < height)).to(torch.int32) * row
    base = tables_start + starts + (y0.clamp(min=-1).minimum(height) + 1) * row + x0.clamp(min=-1).minimum(width) + 1
    indices = torch.stack((base, base + step_x, base + step_y, base + step_x + step_y), -1)
    top = (1 - fy) * weights
    bottom = fy * weights
    corner_weights = torch.stack((top * (1 - fx), top * fx, bottom * (1 - fx), bottom * fx), -1)
    # float32: CUDA has no reduced-precision backward for per-sample weights, and it is cheap here
    out = _WeightedBagSum.apply(
        indices.view(b * heads * q, -1), table.reshape(-1, d).float(), corner_weights.reshape(b * heads * q, -1).float()
    )
    return out.view(b, heads, q, d).permute(0, 2, 1, 3).reshape(b, q, heads * d)


class _WeightedBagSum(torch.autograd.Function):
    """`embedding_bag(indices, table, per_sample_weights=weights, mode="sum")` with a hand-written
    backward that walks the bags in cache-sized chunks: per chunk one index_add_ into the table
    gradient and one batched dot product for the weight gradient. On CPU this is about 2.5x faster
    than embedding_bag's own backward, which sorts every index and materialises every corner.
    (CUDA uses grid_sample instead, see `ValueMaps`.)"""

    CHUNK_BYTES = 1 << 22  # ~4 MB of gathered rows per chunk: stays in cache on common CPUs

    @staticmethod
    def forward(ctx, indices: torch.Tensor, table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(indices, table, weights)
        return F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        indices, table, weights = ctx.saved_tensors
        n, k = indices.shape
        d = table.shape[1]
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        grad_weights = torch.empty_like(weights) if ctx.needs_input_grad[2] else None
        chunk = max(1, _WeightedBagSum.CHUNK_BYTES // (k * d * table.element_size()))
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            flat = indices[rows].reshape(-1)
            g = grad[rows]
            if grad_table is not None:
                grad_table.index_add_(0, flat, (g[:, None, :] * weights[rows, :, None]).reshape(-1, d))
            if grad_weights is not None:
                gathered = table.index_select(0, flat).view(g.shape[0], k, d)
                grad_weights[rows] = torch.bmm(gathered, g[:, :, None]).view(g.shape[0], k)
        return None, grad_table, grad_weights


class MultiScaleDeformableAttention(nn.Module):
    def __init__(self, dim: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.levels, self.heads, self.points = levels, heads, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR initialisation: offsets start on rays around each reference point."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        grid = torch.stack([angles.cos(), angles.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.heads, 1, 1, 2)
        grid = grid.repeat(1, self.levels, self.points, 1) * torch.arange(1, self.points + 1).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self, query: torch.Tensor, reference: torch.Tensor, value: torch.Tensor, shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        """query (B, Q, C), reference (B, Q, 2) normalised (x, y), value (B, S, C) -> (B, Q, C)."""
        return self.attend(query, reference, self.value_maps(value, shapes))

    def value_maps(self, value: torch.Tensor, shapes: list[tuple[int, int]]) -> ValueMaps:
        """value (B, S, C) projected and prepared for sampling (`attend` any subset of queries)."""
        b, s, _ = value.shape
        return ValueMaps(self.value_proj(value).view(b, s, self.heads, -1), shapes)

    def attend(self, query: torch.Tensor, reference: torch.Tensor, maps: ValueMaps) -> torch.Tensor:
        """query (B, Q, C), reference (B, Q, 2) normalised (x, y) -> (B, Q, C)."""
        b, q, _ = query.shape
        offsets = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, q, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, q, self.heads, self.levels, self.points)
        normaliser = maps.sizes_xy.to(query.dtype)
        locations = reference[:, :, None, None, None, :] + offsets / normaliser[None, None, None, :, None, :]
        del offsets
        return self.output_proj(maps.sample(locations, weights))


class DeformableEncoderLayer(nn.Module):
    """Post-norm: deformable self-attention, residual, LayerNorm, FFN (ReLU), residual, LayerNorm."""

    def __init__(self, dim: int, ffn: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(dim, levels, heads, points)
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, src: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, shapes: list[tuple[int, int]]):
        """src, pos (B, Q, C), reference (B, Q, 2) -> (B, Q, C). Without autograd the queries go
        through in chunks of about QUERY_CHUNK_POINTS sampling points, so that no per-query
        temporary (sampling locations, corner indices, the FFN's hidden layer) exists for all
        queries at once: at 480 px there are 19,125 queries x 128 points. Every query's result is
        that of one pass. Other devices take far larger chunks (ACCELERATOR_CHUNK_POINTS): there
        the point is bounding memory, and each chunk costs kernel launches."""
        attn = self.self_attn
        maps = attn.value_maps(src, shapes)
        b, q, _ = src.shape
        budget = QUERY_CHUNK_POINTS if src.is_cpu else ACCELERATOR_CHUNK_POINTS
        chunk = q if torch.is_grad_enabled() else budget // (b * attn.heads * attn.levels * attn.points)
        if chunk >= q:
            return self._queries(src, pos, reference, maps)
        chunk, out = max(1, chunk), torch.empty_like(src)
        for start in range(0, q, chunk):
            rows = slice(start, start + chunk)
            out[:, rows] = self._queries(src[:, rows], pos[:, rows], reference[:, rows], maps)
        return out

    def _queries(self, src: torch.Tensor, pos: torch.Tensor, reference: torch.Tensor, maps: ValueMaps):
        src = self.norm1(src + self.self_attn.attend(src + pos, reference, maps))
        return self.norm2(src + self.linear2(F.relu(self.linear1(src), inplace=True)))


QUERY_CHUNK_POINTS = 1 << 16  # sampling points per chunk without autograd: 256 KB per int32 or float temporary
ACCELERATOR_CHUNK_POINTS = 1 << 22  # one chunk for one expression at 480 px (2.4 M points, ~310 MB of samples)


class DeformableEncoder(nn.Module):
    def __init__(self, dim: int, ffn: int, num_layers: int, levels: int, heads: int, points: int) -> None:
        super().__init__()
        self.level_embed = nn.Parameter(torch.zeros(levels, dim))
        nn.init.normal_(self.level_embed)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(
            DeformableEncoderLayer(dim, ffn, levels, heads, points) for _ in range(num_layers)
        )

    def forward(self, sources: list[torch.Tensor], positions: list[torch.Tensor]) -> list[torch.Tensor]:
        """Maps (B, C, H_l, W_l) per level -> the same maps after the encoder."""
        shapes = [(s.shape[2], s.shape[3]) for s in sources]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in sources], 1)
        pos = torch.cat(
            [p.flatten(2).transpose(1, 2) + self.level_embed[k].view(1, 1, -1) for k, p in enumerate(positions)], 1
        )
        sources.clear()  # the caller hands over these lists: their maps are in src and pos now
        positions.clear()
        reference = torch.cat([_pixel_centres(h, w, src) for h, w in shapes], 0).expand(src.shape[0], -1, -1)
        for layer in self.encoder.layers:
            src = layer(src, pos, reference, shapes)
        maps = src.split([h * w for h, w in shapes], dim=1)
        return [m.transpose(1, 2).reshape(m.shape[0], -1, h, w) for m, (h, w) in zip(maps, shapes)]


def _pixel_centres(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """(H*W, 2) normalised (x, y) centres of an H x W grid (all valid ratios are 1)."""
    ys, xs = torch.meshgrid(
        torch.linspace(0.5, h - 0.5, h, dtype=like.dtype, device=like.device),
        torch.linspace(0.5, w - 0.5, w, dtype=like.dtype, device=like.device),
        indexing="ij",
    )
    return torch.stack((xs.reshape(-1) / w, ys.reshape(-1) / h), -1)


class PixelDecoder(nn.Module):
    """All input maps (fine to coarse, strides 4..32) enter the deformable encoder coarse-first.
    Returns mask features (B, head_dim, H/4, W/4) and the encoder maps at strides 32, 16, 8."""

    def __init__(self, config: MagNetConfig) -> None:
        super().__init__()
        in_dims, dim = config.stage_dims(), config.head_dim
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, dim, 1), nn.GroupNorm(32, dim)) for c in reversed(in_dims)
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)
        self.transformer = DeformableEncoder(
            dim,
            config.pixel_encoder_ffn,
            config.pixel_encoder_layers,
            len(in_dims),
            config.head_heads,
            config.deform_points,
        )
        self.mask_features = nn.Conv2d(dim, dim, 1)
        self.num_pos_feats = dim // 2

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        coarse_first = features[::-1]
        sources = [proj(f) for proj, f in zip(self.input_proj, coarse_first)]
        positions = [sine_position_embedding(f, self.num_pos_feats) for f in coarse_first]
        maps = self.transformer(sources, positions)  # empties both lists once it has concatenated them
        return self.mask_features(maps[-1]), maps[:3]


class CrossAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt, memory, attn_mask, pos, query_pos):
        out = self.multihead_attn(tgt + query_pos, memory + pos, memory, attn_mask=attn_mask, need_weights=False)[0]
        return self.norm(tgt + out)


class SelfAttentionLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt, query_pos):
        q = tgt + query_pos
        return self.norm(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])


class FFNLayer(nn.Module):
    def __init__(self, dim: int, ffn: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, ffn)
        self.linear2 = nn.Linear(ffn, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tgt):
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class MaskedAttentionDecoder(nn.Module):
    """Mask2Former transformer decoder: layer k cross-attends to level k mod 3 (strides 32, 16, 8)
    restricted to the previous prediction's foreground, then self-attention and FFN."""

    num_levels = 3

    def __init__(self, config: MagNetConfig) -> None:
        super().__init__()
        dim, heads, ffn, num_layers = config.head_dim, config.head_heads, config.decoder_ffn, config.decoder_layers
        self.heads = heads
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(dim, heads) for _ in range(num_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(dim, heads) for _ in range(num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(dim, ffn) for _ in range(num_layers))
        self.decoder_norm = nn.LayerNorm(dim)
        self.query_feat = nn.Embedding(config.num_queries, dim)
        self.query_embed = nn.Embedding(config.num_queries, dim)
        self.level_embed = nn.Embedding(self.num_levels, dim)
        self.class_embed = nn.Linear(dim, config.num_classes + 1)
        self.mask_embed = MLP(dim, 3)
        self.num_pos_feats = dim // 2

    def predict(self, output: torch.Tensor, mask_features: torch.Tensor, target_size: tuple[int, int]):
        """output (Q, B, C) -> class logits (B, Q, K+1), mask logits (B, Q, h, w), and the boolean
        attention mask (B*heads, Q, target h*w) for the next layer (True = not attended)."""
        decoded = self.decoder_norm(output).transpose(0, 1)
        logits = self.class_embed(decoded)
        masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(decoded), mask_features)
        attn = F.interpolate(masks, size=target_size, mode="bilinear", align_corners=False)
        attn = attn.sigmoid().flatten(2).unsqueeze(1).repeat(1, self.heads, 1, 1).flatten(0, 1) < 0.5
        return logits, masks, attn.detach()

    def forward(self, maps: list[torch.Tensor], mask_features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """maps: 3 encoder maps (B, C, h, w), coarse first. Returns (class logits, mask logits) before
        the first layer and after each layer; the last pair is the prediction."""
        b = mask_features.shape[0]
        sizes = [m.shape[-2:] for m in maps]
        pos = [sine_position_embedding(m, self.num_pos_feats).flatten(2).permute(2, 0, 1) for m in maps]
        src = [(m.flatten(2) + self.level_embed.weight[k][None, :, None]).permute(2, 0, 1) for k, m in enumerate(maps)]
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, b, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, b, 1)
        logits, masks, attn = self.predict(output, mask_features, sizes[0])
        predictions = [(logits, masks)]
        for i in range(len(self.transformer_cross_attention_layers)):
            level = i % self.num_levels
            attn = attn & ~attn.all(-1, keepdim=True)  # a query that would attend nowhere attends everywhere
            output = self.transformer_cross_attention_layers[i](output, src[level], attn, pos[level], query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            logits, masks, attn = self.predict(output, mask_features, sizes[(i + 1) % self.num_levels])
            predictions.append((logits, masks))
        return predictions


class SegmentationHead(nn.Module):
    """Pixel decoder + masked-attention decoder, sized by the `head_*`, `pixel_encoder_*`,
    `decoder_*`, `deform_points`, `num_queries` and `num_classes` fields of the config."""

    def __init__(self, config: MagNetConfig) -> None:
        super().__init__()
        self.pixel_decoder = PixelDecoder(config)
        self.predictor = MaskedAttentionDecoder(config)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """features: the four fused maps, fine to coarse (B, C_i, H/2^(i+2), W/2^(i+2)). Returns the
        mask features (B, head_dim, H/4, W/4) and `MaskedAttentionDecoder`'s list of (class logits,
        mask logits), the last pair being the prediction."""
        mask_features, maps = self.pixel_decoder(features)
        return mask_features, self.predictor(maps, mask_features)
