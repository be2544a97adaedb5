"""IoU metrics on hand-made masks with known intersections and unions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from magnet.metrics import IoUAccumulator, intersection_and_union, mask_iou, paired_overall_iou_difference


def box(top: int, left: int, height: int, width: int, size: int = 10) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


# sample A: 4-pixel boxes overlapping in 2 pixels -> I=2, U=6, IoU=1/3
PRED_A, TARGET_A = box(0, 0, 2, 2), box(0, 1, 2, 2)
# sample B: 9 of a 10-pixel target found, nothing extra -> I=9, U=10, IoU=0.9
PRED_B, TARGET_B = box(5, 0, 1, 9), box(5, 0, 1, 10)


def test_intersection_and_union_of_known_boxes():
    assert intersection_and_union(PRED_A, TARGET_A) == (2, 6)
    assert intersection_and_union(PRED_B, TARGET_B) == (9, 10)
    assert mask_iou(PRED_A, TARGET_A) == 2 / 6
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_overall_iou_pools_pixels_while_mean_iou_averages_samples():
    acc = IoUAccumulator()
    assert acc.add(PRED_A, TARGET_A) == pytest.approx(1 / 3)
    assert acc.add(PRED_B, TARGET_B) == pytest.approx(0.9)

    summary = acc.summary()
    assert summary["overall_iou"] == pytest.approx(100 * 11 / 16)
    assert summary["mean_iou"] == pytest.approx(100 * (1 / 3 + 0.9) / 2)
    assert summary["count"] == 2
    assert "by_type" not in summary


def test_precision_counts_iou_at_or_above_each_threshold():
    acc = IoUAccumulator()
    acc.add(PRED_A, TARGET_A)  # 0.333
    acc.add(PRED_B, TARGET_B)  # exactly 0.9: counts at 0.9 (>=)
    acc.add(box(0, 0, 1, 6), box(0, 0, 1, 10))  # exactly 0.6
    acc.add(box(0, 0, 3, 3), box(0, 0, 3, 3))  # 1.0

    summary = acc.summary()
    assert summary["precision@0.5"] == 75.0
    assert summary["precision@0.6"] == 75.0
    assert summary["precision@0.7"] == 50.0
    assert summary["precision@0.8"] == 50.0
    assert summary["precision@0.9"] == 50.0


def test_empty_prediction_of_empty_target_scores_one():
    empty = np.zeros((4, 4), dtype=bool)
    acc = IoUAccumulator()
    assert acc.add(empty, empty) == 1.0
    assert acc.add(box(0, 0, 1, 1, size=4), empty) == 0.0
    assert acc.add(empty, box(0, 0, 1, 1, size=4)) == 0.0

    summary = acc.summary()
    assert summary["mean_iou"] == pytest.approx(100 / 3)
    assert summary["overall_iou"] == 0.0  # no intersection over 2 union pixels


def test_only_empty_masks_give_perfect_overall_iou():
    acc = IoUAccumulator()
    acc.add(np.zeros((3, 3)), np.zeros((3, 3)))
    assert acc.summary()["overall_iou"] == 100.0


def test_summary_of_nothing_is_nan():
    summary = IoUAccumulator().summary()
    assert summary["count"] == 0
    assert math.isnan(summary["overall_iou"]) and math.isnan(summary["mean_iou"])


def test_breakdown_by_type():
    acc = IoUAccumulator()
    acc.add(PRED_A, TARGET_A, sample_type="testA")
    acc.add(PRED_B, TARGET_B, sample_type="testB")
    acc.add(box(0, 0, 2, 2), box(0, 0, 2, 2), sample_type="testB")

    by_type = acc.summary()["by_type"]
    assert set(by_type) == {"testA", "testB"}
    assert by_type["testA"]["count"] == 1
    assert by_type["testA"]["overall_iou"] == pytest.approx(100 / 3)
    assert by_type["testB"]["count"] == 2
    assert by_type["testB"]["overall_iou"] == pytest.approx(100 * 13 / 14)
    assert by_type["testB"]["mean_iou"] == pytest.approx(100 * 0.95)


def test_torch_and_numpy_batches_agree():
    preds = np.stack([PRED_A, PRED_B])
    targets = np.stack([TARGET_A, TARGET_B])
    from_numpy, from_torch = IoUAccumulator(), IoUAccumulator()
    from_numpy.add_batch(preds, targets, types=["x", "y"])
    from_torch.add_batch(torch.from_numpy(preds), torch.from_numpy(targets).float(), types=["x", "y"])
    assert from_numpy.summary() == from_torch.summary()


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="shape"):
        IoUAccumulator().add(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="types"):
        IoUAccumulator().add_batch(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), types=["only one"])


def accumulator_of(pairs: list[tuple[int, int]]) -> IoUAccumulator:
    return IoUAccumulator(intersections=[i for i, _ in pairs], unions=[u for _, u in pairs], types=[None] * len(pairs))


def test_paired_difference_of_a_candidate_better_on_every_sample():
    baseline = accumulator_of([(5, 10), (2, 10), (9, 10), (0, 10)] * 5)  # overall 40 %
    candidate = accumulator_of([(6, 10), (4, 10), (9, 10), (1, 10)] * 5)  # overall 50 %
    gain = paired_overall_iou_difference(baseline, candidate, resamples=500)
    assert gain["difference"] == pytest.approx(10.0)
    assert 0 < gain["low"] <= gain["difference"] <= gain["high"] and gain["better"] == 100.0
    assert paired_overall_iou_difference(candidate, baseline, resamples=500)["better"] == 0.0


def test_paired_difference_of_a_split_decision_straddles_zero():
    baseline = accumulator_of([(10, 10), (0, 10)] * 20)
    candidate = accumulator_of([(0, 10), (10, 10)] * 20)  # same overall IoU, different samples right
    gain = paired_overall_iou_difference(baseline, candidate, resamples=500)
    assert gain["difference"] == 0.0 and gain["low"] < 0 < gain["high"] and 20 < gain["better"] < 80


def test_paired_difference_needs_the_same_samples():
    with pytest.raises(ValueError, match="same"):
        paired_overall_iou_difference(accumulator_of([(1, 2)]), accumulator_of([(1, 2), (1, 2)]))
