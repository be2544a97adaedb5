"""Training losses of MagNet: segmentation, Mask Grounding and cross-modal alignment.

Notation, per sample: x are the mask logits upsampled to the target size (bilinear,
align_corners=True, as at inference), p = σ(x), t ∈ {0, 1} the target mask over its N = H·W
pixels, c ∈ R² the class logits of the single query (index 0 = object, 1 = no object).

Segmentation, for the final prediction and, with deep supervision, every auxiliary decoder layer ℓ;
each term is averaged over the batch, then summed over the layers:

    L_mask  = Σ_ℓ 1/N Σ_n [ -t_n log p_n - (1 - t_n) log(1 - p_n) ]
    L_dice  = Σ_ℓ [ 1 - (2 Σ_n p_n t_n + 1) / (Σ_n p_n + Σ_n t_n + 1) ]
    L_class = Σ_ℓ -log softmax(c)_0                 (every expression refers to one object)
    L_seg   = λ_class L_class + λ_bce L_mask + λ_dice L_dice

Mask Grounding, over the set M of masked word positions of the batch, z the predicted word logits
and y the original word ids (0 when M is empty):

    L_ground = -1/|M| Σ_{(b,l) ∈ M} log softmax(z_{b,l})_{y_{b,l}}

Alignment, on the mask features F (D, h, w) of the pixel decoder: f_i = F_i / ‖F_i‖ for each of
the h·w pixels. The target is area-averaged to (h, w); a pixel is inside (set P) when at least half
of it is covered, outside (set O) otherwise. For a sample with P and O both non-empty:

    pixel-to-pixel:  c = normalise(1/|P| Σ_{i∈P} f_i),  K ⊆ O a uniform draw of at most
                     `align_max_negatives` outside pixels, A ⊆ P one of at most 512 anchors
        L_p2p = -1/|A| Σ_{i∈A} log[ exp(f_i·c/τ) / (exp(f_i·c/τ) + Σ_{j∈K} exp(f_i·f_j/τ)) ]

    pixel-to-text:   ē = mean of the text features over the real tokens (attention_mask = 1,
                     [CLS] and [SEP] included), s = normalise(lang_proj(ē)), s_i = f_i·s
        L_p2t = -1/|P| Σ_{i∈P} log[ exp(s_i/τ) / (exp(s_i/τ) + Σ_{j∈O} exp(s_j/τ)) ]

The sentence feature is the masked mean rather than the [CLS] feature: no objective in MagNet trains
[CLS] to summarise the sentence, while the mean sees every word. Each alignment term is averaged over
the samples that have both sets; a sample with an empty or full mask adds nothing, and a batch
without any such sample gives 0 (still attached to the graph, so backward works).

Object classes (a training aid for data that knows the class of every object in the image, as the
synthetic scenes know each shape): for each of the four Swin stage outputs V_s (C_s, h, w), each
object k's mean feature v_k over its pixels (area-weighted at the map's size) is read through a fixed
readout R_s (C_s, K) with orthonormal columns, the same in every run, and y_k is its class:

    L_obj = 1/4 Σ_s 1/|objects| Σ_k -log softmax(v_k R_s)_{y_k}

The readout is fixed, not learned, so that the term adds no parameters to the model or the training
state, and the features stay free in every other direction (colour, size, place stay readable).

Total, each extra term computed only when its weight is non-zero:

    L = L_seg + λ_ground L_ground + λ_p2p L_p2p + λ_p2t L_p2t + λ_obj L_obj
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from magnet.masking import IGNORE_INDEX
from magnet.modeling import upsample_mask_logits

from .errors import ConfigError

OBJECT_CLASS_SOURCES = ("backbone", "mask_features")  # the maps the object-class loss can read


@dataclass
class LossConfig:
    """Weights and settings of every training loss. Defaults follow Mask2Former and MagNet."""

    class_weight: float = 2.0  # λ_class: cross-entropy on the query's object / no-object logits
    mask_bce_weight: float = 5.0  # λ_bce: per-pixel binary cross-entropy on the mask
    dice_weight: float = 5.0  # λ_dice: Dice loss on the mask
    deep_supervision: bool = True  # supervise every auxiliary decoder layer as well
    # Mask2Former's class weight of "no object". It goes into the cross-entropy, but every target here
    # is "object" (one positive query per expression), so it cannot change the loss's value.
    no_object_weight: float = 0.1
    # α of the per-expression weights 1 + α (1 - IoU of the final prediction), normalised to mean 1
    # over the batch, on the mask terms: a wrong object counts up to 1 + α times a right one; 0 = off.
    hard_expression_weight: float = 0.0
    grounding_weight: float = 1.0  # λ_ground: Mask Grounding masked-word loss; 0 = off
    align_p2p_weight: float = 0.5  # λ_p2p: pixel-to-pixel alignment; 0 = off
    align_p2t_weight: float = 0.5  # λ_p2t: pixel-to-text alignment; 0 = off
    temperature: float = 0.1  # τ of both alignment terms
    align_max_negatives: int = 1024  # outside pixels drawn as pixel-to-pixel negatives, per sample
    # λ_obj: each object's class read from its mean features (data with object classes only); 0 = off
    object_class_weight: float = 0.0
    # Which maps L_obj reads, each source weighted alike: "backbone" (the four Swin stage outputs,
    # averaged) and/or "mask_features" (the pixel decoder's map that the query's mask is read from).
    object_class_maps: tuple[str, ...] = ("backbone",)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"LossConfig.{f.name} must be >= 0, got {value}")
        if self.temperature <= 0:
            raise ConfigError(f"LossConfig.temperature must be > 0, got {self.temperature}")
        if self.align_max_negatives < 1:
            raise ConfigError(f"LossConfig.align_max_negatives must be >= 1, got {self.align_max_negatives}")
        if isinstance(self.object_class_maps, str):  # --set loss.object_class_maps=backbone,mask_features
            self.object_class_maps = tuple(self.object_class_maps.split(","))
        self.object_class_maps = tuple(self.object_class_maps)
        unknown = set(self.object_class_maps) - set(OBJECT_CLASS_SOURCES)
        if unknown or not self.object_class_maps:
            raise ConfigError(
                f"LossConfig.object_class_maps must name one or more of {list(OBJECT_CLASS_SOURCES)}, "
                f"got {list(self.object_class_maps)}"
            )


class ModelOutputs(Protocol):
    """The fields of `MagNetOutput` that the losses read."""

    pred_logits: Tensor  # (B, 1, 2)
    pred_masks: Tensor  # (B, 1, H/4, W/4)
    aux_outputs: list[dict[str, Tensor]]
    mask_features: Tensor  # (B, D, H/4, W/4)
    text_features: Tensor  # (B, L, Ct)
    attention_mask: Tensor  # (B, L)
    backbone_features: list[Tensor]  # (B, C_s, h, w) Swin stage outputs


# --------------------------------------------------------------------------------------------
# Segmentation
# --------------------------------------------------------------------------------------------


def mask_bce_loss(mask_logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """Binary cross-entropy of (B, H, W) logits against (B, H, W) 0/1 targets, mean over pixels
    (with `weights`: each sample's mean over its pixels, weighted, then the batch mean)."""
    if weights is None:
        return F.binary_cross_entropy_with_logits(mask_logits, targets)
    per_pixel = F.binary_cross_entropy_with_logits(mask_logits, targets, reduction="none")
    return (per_pixel.flatten(1).mean(1) * weights).mean()


def dice_loss(mask_logits: Tensor, targets: Tensor, weights: Tensor | None = None) -> Tensor:
    """1 - (2 Σ p t + 1) / (Σ p + Σ t + 1) per sample of (B, H, W) logits and targets, batch mean
    (weighted by `weights` when given)."""
    probs = mask_logits.sigmoid().flatten(1)
    targets = targets.flatten(1)
    overlap = 2 * (probs * targets).sum(1) + 1
    total = probs.sum(1) + targets.sum(1) + 1
    per_sample = 1 - overlap / total
    return (per_sample if weights is None else per_sample * weights).mean()


def expression_weights(mask_logits: Tensor, targets: Tensor, strength: float) -> Tensor:
    """(B,) weights 1 + strength (1 - IoU) of each thresholded prediction, normalised to mean 1 (no
    gradient): the expressions the model gets wrong weigh more without changing the loss's scale.
    An empty prediction of an empty target counts as IoU 1."""
    with torch.no_grad():
        predicted, wanted = (mask_logits > 0).flatten(1), (targets > 0.5).flatten(1)
        overlap = (predicted & wanted).sum(1).float()
        union = (predicted | wanted).sum(1).float()
        iou = torch.where(union > 0, overlap / union.clamp(min=1), torch.ones_like(union))
        weights = 1 + strength * (1 - iou)
        return weights / weights.mean()


def class_loss(pred_logits: Tensor, no_object_weight: float) -> Tensor:
    """Cross-entropy of the single query's (B, 1, C+1) class logits against class 0 ("object")."""
    logits = pred_logits[:, 0]
    weight = torch.ones(logits.shape[-1], dtype=logits.dtype, device=logits.device)
    weight[-1] = no_object_weight
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target, weight=weight)


def _prediction_layers(outputs: ModelOutputs, deep_supervision: bool) -> list[tuple[Tensor, Tensor]]:
    """(class logits, mask logits) of the final decoder layer, then of each auxiliary layer."""
    layers = [(outputs.pred_logits, outputs.pred_masks)]
    if deep_supervision:
        layers += [(aux["pred_logits"], aux["pred_masks"]) for aux in outputs.aux_outputs]
    return layers


def segmentation_loss(outputs: ModelOutputs, target_masks: Tensor, cfg: LossConfig) -> dict[str, Tensor]:
    """Mask and class losses of every supervised decoder layer.

    target_masks: (B, H, W) float 0/1 at the input image's resolution.
    Returns `loss_mask`, `loss_dice`, `loss_class` (each summed over layers) and their weighted sum
    `loss_seg`.
    """
    targets = target_masks.float()
    size = tuple(targets.shape[-2:])
    per_layer = []
    weights = None
    for pred_logits, pred_masks in _prediction_layers(outputs, cfg.deep_supervision):
        mask_logits = upsample_mask_logits(pred_masks.float(), size)[:, 0]
        if cfg.hard_expression_weight and weights is None:  # from the final layer, the first listed
            weights = expression_weights(mask_logits, targets, cfg.hard_expression_weight)
        per_layer.append(
            {
                "loss_mask": mask_bce_loss(mask_logits, targets, weights),
                "loss_dice": dice_loss(mask_logits, targets, weights),
                "loss_class": class_loss(pred_logits.float(), cfg.no_object_weight),
            }
        )
    terms = {name: torch.stack([layer[name] for layer in per_layer]).sum() for name in per_layer[0]}
    terms["loss_seg"] = (
        cfg.class_weight * terms["loss_class"]
        + cfg.mask_bce_weight * terms["loss_mask"]
        + cfg.dice_weight * terms["loss_dice"]
    )
    return terms


# --------------------------------------------------------------------------------------------
# Mask Grounding
# --------------------------------------------------------------------------------------------


def grounding_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy of (..., V) word logits at the masked positions of (...) `labels`.

    `labels` holds the original word id where a word was masked and -100 elsewhere. Without any
    masked position the loss is 0, still attached to `logits`' graph.
    """
    if not (labels != IGNORE_INDEX).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


# --------------------------------------------------------------------------------------------
# Cross-modal alignment
# --------------------------------------------------------------------------------------------


def downsample_target(target_masks: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, H, W) 0/1 masks -> (B, h, w) bool: True where at least half of the cell is covered."""
    coverage = F.interpolate(target_masks[:, None].float(), size=size, mode="area")[:, 0]
    return coverage >= 0.5


def sentence_features(text_features: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of (B, L, Ct) features over the real tokens of (B, L) `attention_mask` -> (B, Ct)."""
    weights = attention_mask.to(text_features.dtype).unsqueeze(-1)
    return (text_features * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _pixel_sets(mask_features: Tensor, target_masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised pixel features (B, h·w, D), inside flags (B, h·w) and which samples have both
    inside and outside pixels (B,)."""
    features = F.normalize(mask_features.float().flatten(2).transpose(1, 2), dim=-1)
    inside = downsample_target(target_masks, tuple(mask_features.shape[-2:])).flatten(1)
    has_both = inside.any(1) & ~inside.all(1)
    return features, inside, has_both


NEG_FILL = -1e4  # "no such pair" in log-space; finite, so empty rows keep finite gradients


def _random_subset(candidates: Tensor, limit: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Per row of (B, N) bool `candidates`, up to `limit` of the True positions drawn uniformly
    without replacement -> indices (B, k) and which of them are real picks (B, k)."""
    k = min(limit, candidates.shape[1])
    device = generator.device if generator is not None else candidates.device
    keys = torch.rand(candidates.shape, generator=generator, device=device).to(candidates.device)
    keys = keys.masked_fill(~candidates, -1.0)
    picked = keys.topk(k, dim=1).indices
    return picked, candidates.gather(1, picked)


def _per_sample_mean(values: Tensor, weights: Tensor, samples: Tensor, anchor: Tensor) -> Tensor:
    """Mean over `samples` (B,) bool of the weighted mean of (B, N) values; 0 on `anchor`'s graph
    when no sample counts."""
    per_sample = (values * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    if not samples.any():
        return anchor.sum() * 0.0
    return per_sample[samples].mean()


def pixel_to_pixel_loss(
    mask_features: Tensor,
    target_masks: Tensor,
    temperature: float,
    max_negatives: int,
    generator: torch.Generator | None = None,
    max_anchors: int = 512,
) -> Tensor:
    """L_p2p of the module docstring, batched. mask_features: (B, D, h, w); target_masks: (B, H, W) 0/1.
    Up to `max_anchors` inside pixels per sample are drawn as anchors (all of them when fewer)."""
    features, inside, has_both = _pixel_sets(mask_features, target_masks)
    weights = inside.to(features.dtype)
    prototype = F.normalize(
        (features * weights[..., None]).sum(1) / weights.sum(1, keepdim=True).clamp_min(1.0), dim=-1
    )
    anchor_index, anchor_valid = _random_subset(inside, max_anchors, generator)
    negative_index, negative_valid = _random_subset(~inside, max_negatives, generator)
    dim = features.shape[-1]
    anchors = features.gather(1, anchor_index[..., None].expand(-1, -1, dim))  # (B, A, D)
    negatives = features.gather(1, negative_index[..., None].expand(-1, -1, dim))  # (B, K, D)
    positive = torch.einsum("bad,bd->ba", anchors, prototype) / temperature
    negative = torch.einsum("bad,bkd->bak", anchors, negatives) / temperature
    negative = negative.masked_fill(~negative_valid[:, None, :], NEG_FILL)
    nll = torch.logaddexp(positive, torch.logsumexp(negative, dim=2)) - positive
    return _per_sample_mean(nll, anchor_valid.to(nll.dtype), has_both, mask_features)


def pixel_to_text_loss(
    mask_features: Tensor,
    target_masks: Tensor,
    text_features: Tensor,
    attention_mask: Tensor,
    lang_proj: nn.Module,
    temperature: float,
) -> Tensor:
    """L_p2t of the module docstring, batched.

    mask_features: (B, D, h, w); target_masks: (B, H, W) 0/1; text_features: (B, L, Ct);
    attention_mask: (B, L); lang_proj maps Ct -> D (the model's `lang_proj`).
    """
    features, inside, has_both = _pixel_sets(mask_features, target_masks)
    sentence = F.normalize(lang_proj(sentence_features(text_features, attention_mask)).float(), dim=-1)
    scores = torch.einsum("bnd,bd->bn", features, sentence) / temperature  # (B, h·w)
    negative_lse = torch.logsumexp(scores.masked_fill(inside, NEG_FILL), dim=1, keepdim=True)
    nll = torch.logaddexp(scores, negative_lse) - scores
    return _per_sample_mean(nll, inside.to(nll.dtype), has_both, mask_features)


def alignment_loss(
    outputs: ModelOutputs,
    target_masks: Tensor,
    cfg: LossConfig,
    lang_proj: nn.Module | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The enabled alignment terms: `loss_align_p2p` and/or `loss_align_p2t` (unweighted)."""
    terms = {}
    if cfg.align_p2p_weight > 0:
        terms["loss_align_p2p"] = pixel_to_pixel_loss(
            outputs.mask_features, target_masks, cfg.temperature, cfg.align_max_negatives, generator
        )
    if cfg.align_p2t_weight > 0:
        if lang_proj is None:
            raise ConfigError(
                "pixel-to-text alignment needs the model's `lang_proj`; pass it, or set LossConfig.align_p2t_weight=0"
            )
        terms["loss_align_p2t"] = pixel_to_text_loss(
            outputs.mask_features,
            target_masks,
            outputs.text_features,
            outputs.attention_mask,
            lang_proj,
            cfg.temperature,
        )
    return terms


# --------------------------------------------------------------------------------------------
# Everything together
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Object classes
# --------------------------------------------------------------------------------------------


def object_masks(objects: Tensor, count: int) -> Tensor:
    """(B, K, S, S) float 0/1 masks of objects 1..K = `count` from (B, S, S) label maps `objects`
    (0 background, k object k)."""
    return F.one_hot(objects.long(), count + 1)[..., 1:].permute(0, 3, 1, 2).float()


def object_features(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Each object's mean feature: (B, K, C) for (B, C, h, w) `maps` and (B, K, S, S) `masks`
    (`object_masks`), each map cell weighted by the share of it the object covers; and (B, K) bool,
    the object covers part of the map."""
    share = F.adaptive_avg_pool2d(masks.to(maps.dtype), maps.shape[-2:])
    area = share.sum((-2, -1))
    pooled = torch.einsum("bkhw,bchw->bkc", share, maps) / area.clamp_min(1e-6)[..., None]
    return pooled, area > 0


def class_readout(dim: int, classes: int, device: torch.device | None = None) -> Tensor:
    """The fixed (dim, classes) readout of L_obj: orthonormal columns drawn from seed 0."""
    if classes > dim:
        raise ConfigError(
            f"object_class_weight reads {classes} classes from {dim}-wide features; it needs dim >= classes"
        )
    generator = torch.Generator().manual_seed(0)
    readout, _ = torch.linalg.qr(torch.randn(dim, classes, generator=generator))
    return readout.to(device)


def object_class_loss(
    features: Sequence[Tensor],
    objects: Tensor,
    classes: Tensor,
    num_classes: int,
    weights: Sequence[float] | None = None,
) -> Tensor:
    """L_obj: features, (B, C_s, h, w) maps; objects (B, S, S) label maps; classes (B, K) int64, the
    class of object k + 1 (-1: no such object); weights, one per map (default: the mean over maps).
    0 (attached to the graph) when no object is seen."""
    count = min(int(objects.max()), classes.shape[1])  # the slots past the most crowded image stay empty
    classes = classes[:, :count]
    masks = object_masks(objects, count)  # once for every map
    terms = []
    for maps in features:
        pooled, seen = object_features(maps.float(), masks)
        chosen = seen & (classes >= 0)
        logits = pooled[chosen] @ class_readout(maps.shape[1], num_classes, maps.device)
        terms.append(F.cross_entropy(logits, classes[chosen]) if chosen.any() else maps.sum() * 0.0)
    if weights is None:
        return torch.stack(terms).mean()
    return torch.stack(terms) @ torch.tensor(weights, dtype=terms[0].dtype, device=terms[0].device)


def total_loss(
    outputs: ModelOutputs,
    target_masks: Tensor,
    cfg: LossConfig,
    *,
    grounding_logits: Tensor | None = None,
    grounding_labels: Tensor | None = None,
    lang_proj: nn.Module | None = None,
    generator: torch.Generator | None = None,
    objects: Tensor | None = None,
    object_classes: Tensor | None = None,
    num_object_classes: int = 0,
) -> dict[str, Tensor]:
    """Every enabled loss of one batch.

    target_masks: (B, H, W) float 0/1; grounding_logits: (B, L, V) from the Mask Grounding head and
    grounding_labels: (B, L) from `magnet.masking.mask_tokens`, both needed when
    `cfg.grounding_weight > 0`; lang_proj: the model's Ct -> D projection, needed when
    `cfg.align_p2t_weight > 0`; generator: draws the pixel-to-pixel negatives; objects (B, S, S)
    label maps, object_classes (B, K) and their number of classes, needed when
    `cfg.object_class_weight > 0` (L_obj reads the maps `cfg.object_class_maps` names).
    Returns the unweighted scalar terms (`loss_mask`, `loss_dice`, `loss_class`, `loss_seg`, and
    `loss_grounding`, `loss_align_p2p`, `loss_align_p2t`, `loss_object_class` when enabled) and the
    weighted total `loss`.
    """
    terms = segmentation_loss(outputs, target_masks, cfg)
    loss = terms["loss_seg"]
    if cfg.grounding_weight > 0:
        if grounding_logits is None or grounding_labels is None:
            raise ConfigError(
                "the grounding loss needs grounding_logits and grounding_labels; "
                "build the model with a grounding head, or set LossConfig.grounding_weight=0"
            )
        terms["loss_grounding"] = grounding_loss(grounding_logits, grounding_labels)
        loss = loss + cfg.grounding_weight * terms["loss_grounding"]
    align = alignment_loss(outputs, target_masks, cfg, lang_proj, generator)
    weights = {"loss_align_p2p": cfg.align_p2p_weight, "loss_align_p2t": cfg.align_p2t_weight}
    for name, value in align.items():
        loss = loss + weights[name] * value
    terms.update(align)
    if cfg.object_class_weight > 0:
        if objects is None or object_classes is None:
            raise ConfigError(
                "object_class_weight needs data that knows every object's class (the synthetic scenes); "
                "set loss.object_class_weight: 0 for other data"
            )
        sources = {"backbone": outputs.backbone_features, "mask_features": [outputs.mask_features]}
        maps, weights = [], []  # each source alike, its maps alike within it
        for name in cfg.object_class_maps:
            maps += sources[name]
            weights += [1 / (len(cfg.object_class_maps) * len(sources[name]))] * len(sources[name])
        terms["loss_object_class"] = object_class_loss(maps, objects, object_classes, num_object_classes, weights)
        loss = loss + cfg.object_class_weight * terms["loss_object_class"]
    terms["loss"] = loss
    return terms
