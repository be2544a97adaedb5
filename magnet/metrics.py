"""Referring segmentation metrics, as the LAVT / MagNet evaluation code reports them.

For sample n with predicted mask P_n and target T_n: I_n = |P_n ∩ T_n|, U_n = |P_n ∪ T_n|,
IoU_n = I_n / U_n, and IoU_n = 1 when both masks are empty (U_n = 0: nothing to find, nothing found).

    overall IoU  = 100 · Σ_n I_n / Σ_n U_n       (100 when every union is empty)
    mean IoU     = 100 · mean_n IoU_n
    precision@θ  = 100 · fraction of samples with IoU_n >= θ,  θ ∈ {0.5, 0.6, 0.7, 0.8, 0.9}

Every value is NaN when no sample was added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

PRECISION_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)

Mask = np.ndarray | torch.Tensor  # bool or 0/1; nonzero = inside


def _as_bool(mask: Mask) -> np.ndarray:
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask).astype(bool)


def intersection_and_union(pred: Mask, target: Mask) -> tuple[int, int]:
    """Pixel counts |pred ∩ target| and |pred ∪ target| of two masks of one shape."""
    pred, target = _as_bool(pred), _as_bool(target)
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction {pred.shape} and target {target.shape} masks differ in shape; "
            "resize the prediction to the target's size first"
        )
    return int(np.logical_and(pred, target).sum()), int(np.logical_or(pred, target).sum())


def mask_iou(pred: Mask, target: Mask) -> float:
    """IoU of two masks of one shape; 1.0 when both are empty."""
    intersection, union = intersection_and_union(pred, target)
    return intersection / union if union else 1.0


def _iou(intersections: np.ndarray, unions: np.ndarray) -> np.ndarray:
    """Per-sample IoU, 1.0 where the union is empty."""
    return np.where(unions > 0, intersections / np.maximum(unions, 1), 1.0)


def _overall_iou(intersections: np.ndarray, unions: np.ndarray) -> np.ndarray:
    """Overall IoU in percent over the last axis (one value per row of a 2-D array); 100 where every
    union is empty."""
    total_union = unions.sum(axis=-1)
    return 100.0 * np.where(total_union > 0, intersections.sum(axis=-1) / np.maximum(total_union, 1), 1.0)


def _summarise(intersections: np.ndarray, unions: np.ndarray) -> dict[str, float]:
    count = len(intersections)
    if count == 0:
        nan = float("nan")
        return {
            "overall_iou": nan,
            "mean_iou": nan,
            **{f"precision@{t}": nan for t in PRECISION_THRESHOLDS},
            "count": 0,
        }
    ious = _iou(intersections, unions)
    return {
        "overall_iou": float(_overall_iou(intersections, unions)),
        "mean_iou": 100.0 * float(ious.mean()),
        **{f"precision@{t}": 100.0 * float((ious >= t).mean()) for t in PRECISION_THRESHOLDS},
        "count": count,
    }


@dataclass
class IoUAccumulator:
    """Collects per-sample intersections and unions, optionally labelled with a type (e.g. a split
    or an expression category), and summarises them; see the module docstring."""

    intersections: list[int] = field(default_factory=list)
    unions: list[int] = field(default_factory=list)
    types: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.intersections)

    def add(self, pred: Mask, target: Mask, sample_type: str | None = None) -> float:
        """Record one sample's (H, W) masks; returns its IoU (0..1)."""
        intersection, union = intersection_and_union(pred, target)
        self.intersections.append(intersection)
        self.unions.append(union)
        self.types.append(sample_type)
        return float(_iou(np.array([intersection]), np.array([union]))[0])

    def add_batch(self, preds: Mask, targets: Mask, types: Sequence[str | None] | None = None) -> list[float]:
        """Record (B, H, W) masks, one sample per row; returns their IoUs."""
        if types is not None and len(types) != len(preds):
            raise ValueError(f"got {len(types)} types for {len(preds)} masks")
        types = types if types is not None else [None] * len(preds)
        return [self.add(p, t, k) for p, t, k in zip(preds, targets, types)]

    def ious(self) -> np.ndarray:
        """Per-sample IoU (0..1), in the order added."""
        return _iou(np.array(self.intersections, dtype=np.int64), np.array(self.unions, dtype=np.int64))

    def summary(self) -> dict[str, Any]:
        """`overall_iou`, `mean_iou`, `precision@0.5` .. `precision@0.9` (percent) and `count`, plus
        `by_type` (type -> the same keys) when any sample has a type."""
        intersections = np.array(self.intersections, dtype=np.int64)
        unions = np.array(self.unions, dtype=np.int64)
        result: dict[str, Any] = _summarise(intersections, unions)
        labels = sorted({t for t in self.types if t is not None})
        if labels:
            kinds = np.array(self.types, dtype=object)
            result["by_type"] = {t: _summarise(intersections[kinds == t], unions[kinds == t]) for t in labels}
        return result


def paired_overall_iou_difference(
    baseline: IoUAccumulator, candidate: IoUAccumulator, resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Candidate minus baseline overall IoU on the same samples (in the same order), with a paired
    bootstrap: `difference`, its 95 % interval `low`..`high`, and `better` (percent of resamples
    where the candidate is ahead). Resampling whole samples keeps each one's I and U together."""
    if len(baseline) != len(candidate) or not len(baseline):
        raise ValueError(f"need the same, non-zero number of samples; got {len(baseline)} and {len(candidate)}")
    base_i, base_u, cand_i, cand_u = (
        np.array(values, dtype=np.int64)
        for values in (baseline.intersections, baseline.unions, candidate.intersections, candidate.unions)
    )
    picks = np.random.default_rng(seed).integers(0, len(baseline), size=(resamples, len(baseline)))
    difference = float(_overall_iou(cand_i, cand_u) - _overall_iou(base_i, base_u))
    sampled = _overall_iou(cand_i[picks], cand_u[picks]) - _overall_iou(base_i[picks], base_u[picks])
    low, high = np.percentile(sampled, [2.5, 97.5])
    return {
        "difference": difference,
        "low": float(low),
        "high": float(high),
        "better": float(100 * (sampled > 0).mean()),
    }
