"""The best overall IoU a MagNet can score at a given input size, whatever its training.

    python -m magnet.benchmarks.mask_ceiling --size 96 --size 128 --split val --split testB

The model predicts mask logits at stride 4; the official protocol upsamples them (bilinear,
align_corners=True) to the input size and compares with the target resized to that size. For
each target of the synthetic split, a stride-4 logit map is fitted by gradient descent so that its
upsampled, thresholded map matches the target as well as it can: the overall IoU of these fits is
the resolution's ceiling. The "area" column shows a naive encoding (average-pooled target) for
comparison: it is what a model would score by predicting each stride-4 cell's coverage.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..data.sources import DataSpec, build_dataset
from ..data.synthetic import HELD_OUT_SPLITS
from ..data.tokenizer import ExpressionTokenizer
from ..metrics import mask_iou
from ..modeling.magnet import upsample_mask_logits
from . import format_table, set_threads

STRIDE = 4


def overall_iou(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Overall IoU (%) of a stack of masks: summed intersections over summed unions."""
    return 100.0 * mask_iou(pred, target)


def fit_logits(targets: torch.Tensor, steps: int = 400, lr: float = 0.2) -> torch.Tensor:
    """(N, 1, H, W) binary targets -> (N, 1, H/4, W/4) logits whose official upsampling fits them."""
    size = tuple(targets.shape[-2:])
    logits = ((F.avg_pool2d(targets, STRIDE) - 0.5) * 8).requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        # The factor sharpens the loss around the threshold: it rewards the boundary's position,
        # not confident logits far from it.
        loss = F.binary_cross_entropy_with_logits(upsample_mask_logits(logits, size) * 4, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return logits.detach()


def ceiling(targets: torch.Tensor, steps: int = 400) -> dict[str, float]:
    """Overall IoU (%) of the fitted logits and of the area encoding for (N, 1, H, W) targets."""
    size = tuple(targets.shape[-2:])
    truth = targets > 0.5
    area = upsample_mask_logits(F.avg_pool2d(targets, STRIDE) - 0.5, size) > 0
    fitted = upsample_mask_logits(fit_logits(targets, steps), size) > 0
    return {"fitted": overall_iou(fitted, truth), "area": overall_iou(area, truth)}


def split_targets(split: str, size: int, scenes: int, seed: int) -> torch.Tensor:
    """The target masks of a synthetic split at the model's input size, (N, 1, size, size)."""
    spec = DataSpec(path="synthetic", synthetic_val_scenes=scenes, synthetic_seed=seed)
    dataset, _ = build_dataset(spec, split, size, ExpressionTokenizer())
    return torch.stack([dataset[i]["mask"] for i in range(len(dataset))])[:, None]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magnet.benchmarks.mask_ceiling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--size", type=int, action="append", help="input size (repeatable; default 96)")
    parser.add_argument(
        "--split",
        action="append",
        choices=HELD_OUT_SPLITS,
        help="synthetic split (repeatable; default all four)",
    )
    parser.add_argument("--scenes", type=int, default=300, help="scenes per split (default 300, as evaluate)")
    parser.add_argument("--seed", type=int, default=0, help="data seed of the synthetic splits")
    parser.add_argument("--steps", type=int, default=400, help="gradient steps of each fit")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    rows = []
    for size in args.size or [96]:
        if size % STRIDE:
            raise SystemExit(f"--size {size}: use a multiple of {STRIDE}")
        for split in args.split or HELD_OUT_SPLITS:
            result = ceiling(split_targets(split, size, args.scenes, args.seed), args.steps)
            rows.append([f"{size} px {split}", args.scenes, f"{result['fitted']:.2f}", f"{result['area']:.2f}"])
    print(format_table(["input / split", "scenes", "ceiling oIoU", "area encoding oIoU"], rows))


if __name__ == "__main__":
    main()
