"""MagNet assembly: Swin stages and BERT blocks interleaved with cross-modal fusion, then the
Mask2Former head. Follows the official inference architecture (see README, "Model")."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.swin_transformer import PatchMerging

from ..config import MagNetConfig
from .backbone import PatchEmbed, make_swin_blocks, merge_patches, run_swin_blocks
from .fusion import VisionFusion, pyramid_branch, tanh_gate
from .grounding import MaskGroundingHead
from .head import SegmentationHead
from .text import TextEncoder, additive_mask


@dataclass
class MagNetOutput:
    """What `MagNet.forward` returns, for B samples of H x W pixels and T tokens.

    Attributes:
        pred_logits: (B, Q, K+1) class logits of the last decoder layer (Q = `num_queries`,
            K = `num_classes`); not used by the mask post-processing, see `probabilities`.
        pred_masks: (B, Q, H/4, W/4) mask logits of the last decoder layer.
        aux_outputs: the earlier predictions of the decoder (before its first layer and after each
            layer but the last), each {"pred_logits": (B, Q, K+1), "pred_masks": (B, Q, H/4, W/4)};
            the training losses supervise them too.
        mask_features: (B, head_dim, H/4, W/4) per-pixel embeddings of the pixel decoder, which the
            decoder's query embedding is multiplied with to give the mask logits.
        text_features: (B, T, Ct) language features after the last fusion.
        attention_mask: (B, T) the attention mask as given: 1 for real tokens, 0 for pads.
        visual_features: the four fused maps s1..s4, (B, C_i, H_i, W_i) at strides 4, 8, 16, 32
            (C_i = `config.stage_dims()[i]`); the segmentation head's input.
        backbone_features: the four Swin stage outputs before their fusion, (B, C_i, H_i, W_i) at
            strides 4, 8, 16, 32 (what the object-class training loss reads).
        vision_attentions: with `output_attentions=True`, one (B, T, H_i, W_i) map per stage: the
            vision-side pixel-to-word attention weights, heads averaged (the released model's
            token-to-region grounding maps); None otherwise.
        intermediates: with `output_intermediates=True`, the tensors of the official reference
            data under their names there (`stage1.visual_out`, `s1`, ..., `prob`); empty otherwise.
    """

    pred_logits: torch.Tensor
    pred_masks: torch.Tensor
    aux_outputs: list[dict[str, torch.Tensor]]
    mask_features: torch.Tensor
    text_features: torch.Tensor
    attention_mask: torch.Tensor
    visual_features: list[torch.Tensor]
    backbone_features: list[torch.Tensor] = field(default_factory=list)
    vision_attentions: list[torch.Tensor] | None = None
    intermediates: dict[str, torch.Tensor] = field(default_factory=dict)

    def probabilities(self, input_size: tuple[int, int], output_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Mask probabilities (B, 1, H, W): the official post-processing at the model's
        `input_size` (sigmoid of `upsample_mask_logits`), then, when `output_size` is given and
        differs, bilinear (align_corners=False) to that size, e.g. the photo's. The class logit
        does not enter: the released model weighs masks by a softmax over queries, which is
        always 1 for its single query."""
        return postprocess_masks(self.pred_masks[:, :1], input_size, output_size)


def postprocess_masks(
    mask_logits: torch.Tensor, input_size: tuple[int, int], output_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """(B, Q, h, w) mask logits -> (B, Q, H, W) probabilities: the official post-processing at the
    model's `input_size`, then bilinear (align_corners=False) to `output_size` when given."""
    prob = upsample_mask_logits(mask_logits, input_size).sigmoid()
    return prob if output_size is None else resize_probabilities(prob, output_size)


def resize_probabilities(prob: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, Q, h, w) probabilities at the model's input size -> (B, Q, H, W) at an image's size
    (bilinear, align_corners=False: the model's square input spans the whole image)."""
    if tuple(prob.shape[-2:]) == tuple(size):
        return prob
    return F.interpolate(prob, size=tuple(size), mode="bilinear", align_corners=False)


def upsample_mask_logits(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, Q, h, w) mask logits at stride 4 -> (B, Q, H, W) at the model's input size, as the
    official post-processing does (bilinear, align_corners=True); the losses use the same."""
    if tuple(mask_logits.shape[-2:]) == tuple(size):
        return mask_logits
    return F.interpolate(mask_logits, size=size, mode="bilinear", align_corners=True)


class VisionStage(nn.Module):
    """One Swin stage plus its vision-side fusion, gated residual, multi-scale alignment and
    (except the last stage) patch merging."""

    def __init__(self, config: MagNetConfig, index: int) -> None:
        super().__init__()
        dims = config.stage_dims()
        dim = dims[index]
        text_dim = config.text_hidden_size
        self.blocks = make_swin_blocks(
            dim, config.depths[index], config.num_heads[index], config.window_size, config.mlp_ratio
        )
        self.fusion = VisionFusion(dim, text_dim, config.fusion_heads)
        self.res_gate = tanh_gate(dim, nn.GELU)
        self.pyramids = nn.ModuleList(pyramid_branch(dim, p) for p in config.pyramid_sizes)
        self.fusions = nn.ModuleList(
            VisionFusion(dim // 4, text_dim, config.fusion_heads) for _ in config.pyramid_sizes
        )
        self.mixer = nn.Sequential(
            nn.Linear(dim * (len(config.pyramid_sizes) + 4) // 4, dim),
            nn.LayerNorm(dim),
            nn.Linear(dim, dim),
            nn.GELU(),
        )
        last = index == config.num_stages - 1
        self.downsample = None if last else PatchMerging(dim, out_dim=dims[index + 1])

    def fuse(self, visual: torch.Tensor, size: tuple[int, int], text: torch.Tensor, mask: torch.Tensor):
        """visual (B, H*W, D) stage output, text (B, T, Ct), mask (B, T).

        Returns the aligned map s (B, D, H, W), the gated features (B, H*W, D) and the pixel-word
        attention weights (B, heads, H*W, T)."""
        b, n, d = visual.shape
        h, w = size
        fused, weights = self.fusion(visual, text, mask)
        gated = visual + self.res_gate(fused) * fused
        visual_map = visual.transpose(1, 2).reshape(b, d, h, w)
        branches = []
        for pyramid, fusion in zip(self.pyramids, self.fusions):
            pooled = pyramid(visual_map)
            p = pooled.shape[-1]
            out, _ = fusion(pooled.flatten(2).transpose(1, 2), text, mask)
            out = out.transpose(1, 2).reshape(b, -1, p, p)
            branches.append(
                F.interpolate(out, size=size, mode="bilinear", align_corners=True).flatten(2).transpose(1, 2)
            )
        aligned = self.mixer(torch.cat(branches + [fused], dim=-1))
        return aligned.transpose(1, 2).reshape(b, d, h, w), gated, weights


class VisionEncoder(nn.Module):
    def __init__(self, config: MagNetConfig) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(config.patch_size, config.embed_dim)
        self.layers = nn.ModuleList(VisionStage(config, i) for i in range(config.num_stages))


class MagNet(nn.Module):
    """MagNet (Mask-grounded Network) for referring image segmentation.

    forward(images (B, 3, H, W) normalised, input_ids (B, T), attention_mask (B, T)) -> MagNetOutput.
    """

    def __init__(self, config: MagNetConfig) -> None:
        super().__init__()
        self.config = config
        self.vision = VisionEncoder(config)
        self.text = TextEncoder(config)
        self.head = SegmentationHead(config)
        # Sentence feature projection to the mask-feature width; used by the alignment loss
        # (present, unused, in the released checkpoints).
        self.lang_proj = nn.Linear(config.text_hidden_size, config.head_dim)
        self._init_weights()
        self.grounding = None
        if config.grounding is not None:
            self.grounding = MaskGroundingHead(config)
        self.tie_weights()

    def tie_weights(self) -> None:
        """The Mask Grounding decoder shares the text encoder's word embeddings (again after a
        loader has replaced either)."""
        if self.grounding is not None:
            self.grounding.tie_decoder(self.text.embeddings.word_embeddings)

    def _init_weights(self) -> None:
        """The model's initialisation where it departs from torch's defaults.

        Here: BERT's N(0, 0.02) for the text embedding tables, which also serve as the tied Mask
        Grounding decoder (torch's N(0, 1) default gives huge initial word logits).

        The parts from other models keep those models' initialisation and apply it as they are
        built: the deformable attention Deformable DETR's
        (`MultiScaleDeformableAttention.reset_parameters`), the pixel decoder Mask2Former's (xavier
        input projections, N(0, 1) level embeddings), the Mask Grounding head a truncated
        N(0, 0.02) position embedding. They stay there because torch draws each layer's default
        weights from one random stream as the layer is built: moved into one pass after
        construction, these draws would change the initial weights of every part built after
        them for the same seed.
        """
        for table in (
            self.text.embeddings.word_embeddings,
            self.text.embeddings.position_embeddings,
            self.text.embeddings.token_type_embeddings,
        ):
            nn.init.normal_(table.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        """The device the weights are on."""
        return self.lang_proj.weight.device

    def ground(
        self,
        output: MagNetOutput,
        masked_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        target_mask: torch.Tensor,
        positions: torch.Tensor | None = None,
    ):
        """Runs the Mask Grounding head: recover the masked words of `masked_ids` from their
        (fusion-free) language features, the visual features of `output` (the forward of the
        image with the expression) and the target mask (B, 1, H, W). Returns a GroundingOutput
        (word logits at the (B, L) bool `positions` only, when given)."""
        if self.grounding is None:
            raise ValueError("this checkpoint has no Mask Grounding head; train one with `python -m magnet train`")
        text = self.text.encode_plain(masked_ids, attention_mask)
        return self.grounding(text, attention_mask, output.mask_features, target_mask, positions)

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
        output_intermediates: bool = False,
    ) -> MagNetOutput:
        keep: dict[str, torch.Tensor] = {}
        attentions: list[torch.Tensor] = []
        text_mask = additive_mask(attention_mask, images.dtype)
        text = self.text.embeddings(input_ids)
        visual, size = self.vision.patch_embed(images)
        features, backbone = [], []
        for i, stage in enumerate(self.vision.layers):
            visual_out = run_swin_blocks(stage.blocks, visual, size)
            backbone.append(visual_out.transpose(1, 2).reshape(visual_out.shape[0], -1, *size))
            text_out = self.text.run_block(i, text, text_mask)
            aligned, gated, weights = stage.fuse(visual_out, size, text_out, attention_mask)
            text, fused_text = self.text.fuse(i, text_out, visual_out, text_mask)
            if stage.downsample is not None:
                visual, next_size = merge_patches(stage.downsample, gated, size)
            else:
                visual, next_size = gated, size
            features.append(aligned)
            if output_attentions:
                b, t = weights.shape[0], weights.shape[-1]
                attentions.append(weights.mean(1).transpose(1, 2).reshape(b, t, *size))
            if output_intermediates:
                n = i + 1
                keep.update(
                    {
                        f"stage{n}.visual_out": visual_out,
                        f"stage{n}.text_out": text_out,
                        f"s{n}": aligned,
                        f"stage{n}.visual_next": visual,
                        f"stage{n}.text_next": text,
                        f"stage{n}.text_residual": self.text.norms[i](fused_text),
                    }
                )
            size = next_size
        mask_features, predictions = self.head(features)
        (pred_logits, pred_masks), aux = predictions[-1], predictions[:-1]
        output = MagNetOutput(
            pred_logits=pred_logits,
            pred_masks=pred_masks,
            aux_outputs=[{"pred_logits": c, "pred_masks": m} for c, m in aux],
            mask_features=mask_features,
            text_features=text,
            attention_mask=attention_mask,
            visual_features=features,
            backbone_features=backbone,
            vision_attentions=attentions if output_attentions else None,
        )
        if output_intermediates:
            keep.update(
                mask_features=mask_features,
                pred_logits=pred_logits,
                pred_masks=pred_masks,
                prob=output.probabilities(tuple(images.shape[-2:])),
            )
            output.intermediates = keep
        return output
