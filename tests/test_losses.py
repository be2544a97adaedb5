"""Losses checked against values computed by hand with `math`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor, nn

from magnet.errors import ConfigError
from magnet.losses import (
    LossConfig,
    downsample_target,
    grounding_loss,
    pixel_to_pixel_loss,
    pixel_to_text_loss,
    segmentation_loss,
    total_loss,
)

SEG_ONLY = LossConfig(deep_supervision=False, grounding_weight=0, align_p2p_weight=0, align_p2t_weight=0)


@dataclass
class Outputs:
    """Stands in for MagNetOutput: the fields the losses read."""

    pred_logits: Tensor
    pred_masks: Tensor
    aux_outputs: list[dict[str, Tensor]] = field(default_factory=list)
    mask_features: Tensor | None = None
    text_features: Tensor | None = None
    attention_mask: Tensor | None = None


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def bce(x: float, t: float) -> float:
    return -(t * math.log(sigmoid(x)) + (1 - t) * math.log(1 - sigmoid(x)))


def dice(xs: list[float], ts: list[float]) -> float:
    ps = [sigmoid(x) for x in xs]
    return 1 - (2 * sum(p * t for p, t in zip(ps, ts)) + 1) / (sum(ps) + sum(ts) + 1)


def ce_object(a: float, b: float) -> float:
    return -math.log(math.exp(a) / (math.exp(a) + math.exp(b)))


def identity_projection(dim: int) -> nn.Linear:
    proj = nn.Linear(dim, dim)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(dim))
        proj.bias.zero_()
    return proj


# ----------------------------------------------------------------------------- segmentation


def test_segmentation_terms_match_hand_computation():
    logits = [[0.0, 2.0], [-1.0, 1.0]], [[-3.0, -3.0], [-3.0, -3.0]]
    targets = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]
    class_logits = [1.5, -0.5], [0.2, 0.7]
    outputs = Outputs(pred_logits=torch.tensor(class_logits)[:, None], pred_masks=torch.tensor(logits)[:, None])

    terms = segmentation_loss(outputs, torch.tensor(targets), SEG_ONLY)

    flat_x = [sum(s, []) for s in logits]
    flat_t = [sum(s, []) for s in targets]
    want_bce = sum(bce(x, t) for xs, ts in zip(flat_x, flat_t) for x, t in zip(xs, ts)) / 8
    want_dice = (dice(flat_x[0], flat_t[0]) + dice(flat_x[1], flat_t[1])) / 2  # per sample, then mean
    want_ce = (ce_object(*class_logits[0]) + ce_object(*class_logits[1])) / 2
    assert terms["loss_mask"].item() == pytest.approx(want_bce, rel=1e-5)
    assert terms["loss_dice"].item() == pytest.approx(want_dice, rel=1e-5)
    assert terms["loss_class"].item() == pytest.approx(want_ce, rel=1e-5)
    assert terms["loss_seg"].item() == pytest.approx(2 * want_ce + 5 * want_bce + 5 * want_dice, rel=1e-5)


def test_hard_expression_weights_shift_the_mask_terms_to_wrong_predictions():
    # sample 0 is a third right (IoU 1/3), sample 1 right (empty prediction of an empty target)
    logits = [[0.0, 2.0], [-1.0, 1.0]], [[-3.0, -3.0], [-3.0, -3.0]]
    targets = [[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]
    outputs = Outputs(pred_logits=torch.zeros(2, 1, 2), pred_masks=torch.tensor(logits)[:, None])
    cfg = dataclasses.replace(SEG_ONLY, hard_expression_weight=2.0)

    terms = segmentation_loss(outputs, torch.tensor(targets), cfg)

    raw = [1 + 2.0 * (1 - 1 / 3), 1.0]  # 1 + α (1 - IoU), then normalised to mean 1
    weights = [w / (sum(raw) / 2) for w in raw]
    flat_x = [sum(s, []) for s in logits]
    flat_t = [sum(s, []) for s in targets]
    bce_means = [sum(bce(x, t) for x, t in zip(xs, ts)) / 4 for xs, ts in zip(flat_x, flat_t)]
    dices = [dice(xs, ts) for xs, ts in zip(flat_x, flat_t)]
    assert weights == pytest.approx([1.4, 0.6])
    assert terms["loss_mask"].item() == pytest.approx(sum(w * b for w, b in zip(weights, bce_means)) / 2, rel=1e-5)
    assert terms["loss_dice"].item() == pytest.approx(sum(w * d for w, d in zip(weights, dices)) / 2, rel=1e-5)
    unweighted = segmentation_loss(outputs, torch.tensor(targets), SEG_ONLY)
    assert terms["loss_dice"].item() > unweighted["loss_dice"].item()  # the wrong sample has the larger Dice


def test_mask_logits_are_upsampled_with_align_corners():
    # 2x2 -> 4x4 with align_corners=True keeps the corners on the corners: the plane 3u + 6v sampled
    # at u, v in {0, 1/3, 2/3, 1} (align_corners=False would clamp at the borders instead)
    outputs = Outputs(pred_logits=torch.zeros(1, 1, 2), pred_masks=torch.tensor([[[[0.0, 3.0], [6.0, 9.0]]]]))
    terms = segmentation_loss(outputs, torch.ones(1, 4, 4), SEG_ONLY)
    upsampled = [x + y for y in (0.0, 2.0, 4.0, 6.0) for x in (0.0, 1.0, 2.0, 3.0)]
    assert terms["loss_mask"].item() == pytest.approx(sum(bce(x, 1.0) for x in upsampled) / 16, rel=1e-5)
    assert terms["loss_dice"].item() == pytest.approx(dice(upsampled, [1.0] * 16), rel=1e-5)


def test_deep_supervision_sums_every_layer():
    torch.manual_seed(0)
    layers = [(torch.randn(2, 1, 2), torch.randn(2, 1, 4, 4)) for _ in range(3)]
    targets = (torch.rand(2, 8, 8) > 0.5).float()
    final, *aux = layers
    outputs = Outputs(final[0], final[1], [{"pred_logits": c, "pred_masks": m} for c, m in aux])

    supervised = segmentation_loss(outputs, targets, LossConfig(deep_supervision=True))
    only_final = segmentation_loss(outputs, targets, LossConfig(deep_supervision=False))
    single = [segmentation_loss(Outputs(c, m), targets, SEG_ONLY) for c, m in layers]

    for name in ("loss_mask", "loss_dice", "loss_class", "loss_seg"):
        assert supervised[name].item() == pytest.approx(sum(s[name].item() for s in single), rel=1e-5)
        assert only_final[name].item() == pytest.approx(single[0][name].item(), rel=1e-5)


# ----------------------------------------------------------------------------- grounding


def test_grounding_loss_averages_masked_positions_only():
    rows = [[5.0, 0.0, 0.0, 0.0], [0.5, -1.0, 2.0, 0.0], [1.0, 1.0, 0.0, 3.0]]
    labels = torch.tensor([[-100, 2, 0]])

    loss = grounding_loss(torch.tensor([rows]), labels)

    def nll(row: list[float], label: int) -> float:
        return -row[label] + math.log(sum(math.exp(v) for v in row))

    assert loss.item() == pytest.approx((nll(rows[1], 2) + nll(rows[2], 0)) / 2, rel=1e-5)


def test_grounding_loss_without_masked_words_is_zero_with_gradient():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    loss = grounding_loss(logits, torch.full((2, 3), -100))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


# ----------------------------------------------------------------------------- alignment

# four pixels of a 2x2 feature map (D = 2); the top row is inside the target
PIXELS = [(1.0, 0.0), (0.6, 0.8), (0.0, 1.0), (-1.0, 0.0)]
TARGET_2X2 = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])


def pixel_map(pixels: list[tuple[float, float]], scale: float = 3.0) -> Tensor:
    """(1, D, 2, 2) features from four row-major pixel vectors, scaled to check the normalisation."""
    return scale * torch.tensor(pixels).T.reshape(1, 2, 2, 2)


def test_pixel_to_text_matches_hand_computation():
    tau = 0.5
    # sentence = mean over the two real tokens = (1, 0); the pad token must be ignored
    text = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [100.0, 100.0]]])
    attention_mask = torch.tensor([[1, 1, 0]])

    loss = pixel_to_text_loss(pixel_map(PIXELS), TARGET_2X2, text, attention_mask, identity_projection(2), tau)

    scores = [x for x, _ in PIXELS]  # f_i · (1, 0)
    negatives = sum(math.exp(s / tau) for s in scores[2:])
    want = -sum(math.log(math.exp(s / tau) / (math.exp(s / tau) + negatives)) for s in scores[:2]) / 2
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_pixel_to_pixel_matches_hand_computation():
    tau = 0.5
    loss = pixel_to_pixel_loss(pixel_map(PIXELS), TARGET_2X2, tau, max_negatives=1024)

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    mean = [(PIXELS[0][k] + PIXELS[1][k]) / 2 for k in range(2)]
    prototype = [v / math.sqrt(dot(mean, mean)) for v in mean]
    want = 0.0
    for anchor in PIXELS[:2]:
        positive = math.exp(dot(anchor, prototype) / tau)
        negatives = sum(math.exp(dot(anchor, n) / tau) for n in PIXELS[2:])
        want -= math.log(positive / (positive + negatives)) / 2
    assert loss.item() == pytest.approx(want, rel=1e-5)


def test_target_is_area_averaged_then_thresholded_at_half():
    target = torch.zeros(1, 4, 4)
    target[0, :2, :2] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])  # 2/4 covered -> inside
    target[0, :2, 2:] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # 1/4 -> outside
    target[0, 2:, :2] = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # 3/4 -> inside
    assert downsample_target(target, (2, 2)).tolist() == [[[True, False], [True, False]]]


def separable_batch(inverted: bool = False, noise: float = 0.05) -> tuple[Tensor, Tensor]:
    """(2, 8, 8, 8) features: inside pixels near e0 and outside near e1 (swapped when inverted)."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.zeros(2, 8, 8)
    targets[0, :, :4] = 1
    targets[1, 2:6, 2:6] = 1
    inside, outside = torch.eye(8)[1 if inverted else 0], torch.eye(8)[0 if inverted else 1]
    features = torch.where(targets[:, None].bool(), inside[None, :, None, None], outside[None, :, None, None])
    return features + noise * torch.randn(features.shape, generator=generator), targets


def test_alignment_prefers_features_that_separate_the_target():
    separated, targets = separable_batch()
    inverted, _ = separable_batch(inverted=True)
    random = torch.randn(separated.shape, generator=torch.Generator().manual_seed(1))
    text, attention_mask = torch.eye(8)[0].expand(2, 3, 8), torch.ones(2, 3)  # sentence = e0
    proj = identity_projection(8)

    def p2p(features):
        return pixel_to_pixel_loss(features, targets, 0.1, 1024).item()

    def p2t(features):
        return pixel_to_text_loss(features, targets, text, attention_mask, proj, 0.1).item()

    assert p2p(separated) < p2p(random)
    assert p2t(separated) < p2t(random) < p2t(inverted)


def test_empty_and_full_masks_contribute_nothing():
    features, targets = separable_batch()
    valid = (features[:1], targets[:1])
    batch_features = torch.cat([features[:1], features[:1], features[:1]])
    batch_targets = torch.cat([targets[:1], torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    text, attention_mask, proj = torch.randn(1, 3, 8), torch.ones(1, 3), identity_projection(8)

    p2p_valid = pixel_to_pixel_loss(*valid, 0.1, 1024)
    p2p_batch = pixel_to_pixel_loss(batch_features, batch_targets, 0.1, 1024)
    p2t_valid = pixel_to_text_loss(*valid, text, attention_mask, proj, 0.1)
    p2t_batch = pixel_to_text_loss(
        batch_features, batch_targets, text.expand(3, 3, 8), attention_mask.expand(3, 3), proj, 0.1
    )
    assert p2p_batch.item() == pytest.approx(p2p_valid.item(), rel=1e-5)
    assert p2t_batch.item() == pytest.approx(p2t_valid.item(), rel=1e-5)


def test_batch_without_usable_masks_gives_finite_zero():
    features = torch.randn(2, 8, 4, 4, requires_grad=True)
    targets = torch.stack([torch.zeros(16, 16), torch.ones(16, 16)])
    text = torch.randn(2, 3, 8, requires_grad=True)

    p2p = pixel_to_pixel_loss(features, targets, 0.1, 1024)
    p2t = pixel_to_text_loss(features, targets, text, torch.ones(2, 3), identity_projection(8), 0.1)
    (p2p + p2t).backward()

    assert p2p.item() == 0.0 and p2t.item() == 0.0
    assert torch.isfinite(features.grad).all() and not features.grad.any()


def test_negative_sampling_is_deterministic_by_seed():
    features, targets = separable_batch(noise=0.5)

    def loss(seed: int | None, limit: int) -> float:
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return pixel_to_pixel_loss(features, targets, 0.1, limit, generator).item()

    assert loss(3, 4) == loss(3, 4)
    assert loss(3, 4) != loss(4, 4)
    assert loss(3, 4) < loss(None, 1024)  # fewer negatives, smaller denominator
    assert loss(3, 64) == pytest.approx(loss(None, 1024))  # no more outside pixels than the limit: all used


# ----------------------------------------------------------------------------- total


def full_outputs() -> tuple[Outputs, Tensor, Tensor, Tensor, nn.Linear]:
    generator = torch.Generator().manual_seed(0)

    def leaf(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator).requires_grad_()

    outputs = Outputs(
        pred_logits=leaf(2, 1, 2),
        pred_masks=leaf(2, 1, 4, 4),
        aux_outputs=[{"pred_logits": leaf(2, 1, 2), "pred_masks": leaf(2, 1, 4, 4)}],
        mask_features=leaf(2, 8, 4, 4),
        text_features=leaf(2, 5, 6),
        attention_mask=torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]),
    )
    targets = torch.zeros(2, 16, 16)
    targets[:, 4:12, 4:12] = 1
    grounding_logits = leaf(2, 5, 11)
    grounding_labels = torch.tensor([[-100, 3, -100, -100, -100], [-100, -100, 7, -100, -100]])
    return outputs, targets, grounding_logits, grounding_labels, nn.Linear(6, 8)


def test_total_loss_weights_every_term_and_backpropagates():
    outputs, targets, logits, labels, proj = full_outputs()
    cfg = LossConfig(grounding_weight=1.5, align_p2p_weight=0.25, align_p2t_weight=0.75)

    terms = total_loss(outputs, targets, cfg, grounding_logits=logits, grounding_labels=labels, lang_proj=proj)
    terms["loss"].backward()

    want = (
        terms["loss_seg"]
        + 1.5 * terms["loss_grounding"]
        + 0.25 * terms["loss_align_p2p"]
        + 0.75 * terms["loss_align_p2t"]
    )
    assert terms["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    assert all(t.dim() == 0 for t in terms.values())
    for grad in (
        outputs.pred_logits.grad,
        outputs.pred_masks.grad,
        outputs.aux_outputs[0]["pred_masks"].grad,
        outputs.mask_features.grad,
        outputs.text_features.grad,
        logits.grad,
        proj.weight.grad,
    ):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_disabled_terms_are_not_computed():
    outputs, targets, *_ = full_outputs()
    cfg = LossConfig(grounding_weight=0, align_p2p_weight=0, align_p2t_weight=0)
    terms = total_loss(outputs, targets, cfg)
    assert set(terms) == {"loss_mask", "loss_dice", "loss_class", "loss_seg", "loss"}
    assert terms["loss"].item() == pytest.approx(terms["loss_seg"].item())


def test_missing_inputs_of_enabled_terms_raise():
    outputs, targets, logits, labels, _ = full_outputs()
    with pytest.raises(ValueError, match="grounding_weight=0"):
        total_loss(outputs, targets, LossConfig(align_p2p_weight=0, align_p2t_weight=0))
    with pytest.raises(ValueError, match="align_p2t_weight=0"):
        total_loss(outputs, targets, LossConfig(), grounding_logits=logits, grounding_labels=labels)


def test_loss_config_rejects_negative_weights():
    with pytest.raises(ValueError, match="dice_weight"):
        LossConfig(dice_weight=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        LossConfig(temperature=0.0)


def test_object_features_average_each_object_over_its_share_of_every_cell():
    from magnet.losses import object_features, object_masks

    objects = torch.zeros(1, 4, 4, dtype=torch.uint8)
    objects[0, :2, :2] = 1  # exactly the top-left cell of a 2 x 2 map
    objects[0, 2:, :] = 2  # the bottom row of cells
    objects[0, 0, 3] = 2  # a quarter of the top-right cell
    maps = torch.arange(8, dtype=torch.float32).view(1, 2, 2, 2)  # channel 0: 0 1 / 2 3
    pooled, seen = object_features(maps, object_masks(objects, 3))
    assert seen.tolist() == [[True, True, False]]
    assert pooled[0, 0].tolist() == [0.0, 4.0]
    # object 2: cells 2 and 3 whole (area 1 each) and a quarter of cell 1
    assert pooled[0, 1, 0].item() == pytest.approx((2 + 3 + 0.25 * 1) / 2.25)


def test_object_class_loss_is_low_when_the_features_point_along_the_readout_of_each_class():
    from magnet.losses import class_readout, object_class_loss

    readout = class_readout(8, 3)
    torch.testing.assert_close(readout.T @ readout, torch.eye(3))  # orthonormal columns
    assert torch.equal(readout, class_readout(8, 3))  # the same in every run
    objects = torch.zeros(2, 4, 4, dtype=torch.uint8)
    objects[:, :2, :2], objects[:, 2:, 2:] = 1, 2
    classes = torch.tensor([[0, 2, -1], [1, 1, -1]])
    right = torch.zeros(2, 8, 2, 2)
    for b in range(2):
        for k, (rows, cols) in enumerate([(0, 0), (1, 1)]):
            right[b, :, rows, cols] = 20 * readout[:, classes[b, k]]
    other = torch.randn(8) * 5  # a direction the readout ignores: colour, size ...
    other = other - readout @ (readout.T @ other)
    low = object_class_loss([right + other[:, None, None]], objects, classes, 3)
    assert low.item() < 1e-6
    wrong = object_class_loss([right.roll(1, dims=0)], objects, classes, 3)  # the other image's classes
    assert wrong.item() > 5
    empty = object_class_loss([right], torch.zeros_like(objects), classes, 3)
    assert empty.item() == 0 and empty.requires_grad is False  # no object seen: nothing to learn


def test_total_loss_adds_the_object_class_term_and_names_the_data_it_needs():
    from magnet.losses import object_class_loss

    outputs = Outputs(torch.zeros(1, 1, 2), torch.zeros(1, 1, 4, 4))
    outputs.backbone_features = [torch.randn(1, 8, 2, 2, requires_grad=True), torch.randn(1, 16, 1, 1)]
    objects = torch.ones(1, 4, 4, dtype=torch.uint8)
    classes = torch.tensor([[2]])
    cfg = dataclasses.replace(SEG_ONLY, object_class_weight=0.5)
    terms = total_loss(outputs, torch.ones(1, 4, 4), cfg, objects=objects, object_classes=classes, num_object_classes=3)
    expected = object_class_loss(outputs.backbone_features, objects, classes, 3)
    assert terms["loss_object_class"].item() == pytest.approx(expected.item())
    assert terms["loss"].item() == pytest.approx(terms["loss_seg"].item() + 0.5 * expected.item())
    with pytest.raises(ConfigError, match="synthetic scenes"):
        total_loss(outputs, torch.ones(1, 4, 4), cfg)


def test_the_object_class_term_weighs_each_named_source_alike():
    from magnet.losses import object_class_loss

    outputs = Outputs(torch.zeros(1, 1, 2), torch.zeros(1, 1, 4, 4), mask_features=torch.randn(1, 8, 4, 4))
    outputs.backbone_features = [torch.randn(1, 8, 2, 2), torch.randn(1, 16, 1, 1)]
    objects = torch.zeros(1, 4, 4, dtype=torch.uint8)
    objects[0, :2], objects[0, 2:] = 1, 2
    classes = torch.tensor([[2, 0]])
    data = {"objects": objects, "object_classes": classes, "num_object_classes": 3}
    cfg = dataclasses.replace(SEG_ONLY, object_class_weight=1.0, object_class_maps=("mask_features",))
    alone = total_loss(outputs, torch.ones(1, 4, 4), cfg, **data)["loss_object_class"]
    torch.testing.assert_close(alone, object_class_loss([outputs.mask_features], objects, classes, 3))
    both = dataclasses.replace(cfg, object_class_maps=("backbone", "mask_features"))
    backbone = object_class_loss(outputs.backbone_features, objects, classes, 3)
    torch.testing.assert_close(
        total_loss(outputs, torch.ones(1, 4, 4), both, **data)["loss_object_class"], (alone + backbone) / 2
    )
    assert LossConfig(object_class_maps="backbone,mask_features").object_class_maps == ("backbone", "mask_features")
    for wrong in ((), ("fused",)):
        with pytest.raises(ConfigError, match="object_class_maps must name one or more of"):
            LossConfig(object_class_maps=wrong)
