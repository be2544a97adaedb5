"""Is a candidate checkpoint better than the baseline, or only luckier? A paired comparison.

    python -m magnet.benchmarks.compare checkpoints/magnet-synthetic-cpu.safetensors runs/X/best.safetensors \\
        --split testA --split testB --scenes 1200

Both checkpoints score the same synthetic scenes (the evaluation's seeds, scenes 0 to N-1), and a
paired bootstrap over the expressions gives the candidate's overall-IoU gain with a 95 % interval:
an interval that straddles 0 means the splits cannot tell the two apart. Checkpoints of different
input sizes are compared fairly with `--original-resolution` (each scene's own 256 x 256 pixels).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ..data.sources import DataSpec, build_dataset
from ..errors import UserError
from ..evaluate import score_samples
from ..metrics import IoUAccumulator, paired_overall_iou_difference
from . import format_table, load_on_cpu, set_threads


def score_checkpoint(
    path: str, splits: Sequence[str], scenes: int, original_resolution: bool = False
) -> dict[str, IoUAccumulator]:
    """Per split, every expression's intersection and union for one checkpoint, on CPU, at the
    model's input size (the official protocol) or at each scene's own size."""
    model, tokenizer = load_on_cpu(path)
    spec = DataSpec(path="synthetic", synthetic_val_scenes=scenes)
    scored = {}
    for split in splits:
        dataset, _ = build_dataset(
            spec, split, model.config.image_size, tokenizer, keep_aspect=model.config.keep_aspect
        )
        scored[split] = score_samples(
            model, dataset, device="cpu", progress=False, original_resolution=original_resolution
        )
    return scored


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magnet.benchmarks.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("baseline", help="the checkpoint to beat (.safetensors or magnet_*.pth)")
    parser.add_argument("candidate", help="the checkpoint that would replace it")
    parser.add_argument("--split", action="append", default=None, help="synthetic split(s) (default: testA, testB)")
    parser.add_argument("--scenes", type=int, default=1200, help="scenes per split (default 1200)")
    parser.add_argument(
        "--original-resolution",
        action="store_true",
        help="compare at each scene's own size: the fair measure for checkpoints of different input sizes",
    )
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.scenes < 1 or args.resamples < 1:
        raise SystemExit(f"--scenes and --resamples must be at least 1, got {args.scenes} and {args.resamples}")
    splits = args.split or ["testA", "testB"]
    set_threads(args.threads)
    try:
        baseline, candidate = (
            score_checkpoint(path, splits, args.scenes, args.original_resolution)
            for path in (args.baseline, args.candidate)
        )
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    rows = []
    for split in splits:
        gain = paired_overall_iou_difference(baseline[split], candidate[split], args.resamples)
        rows.append(
            [
                split,
                len(baseline[split]),
                f"{baseline[split].summary()['overall_iou']:.2f}",
                f"{candidate[split].summary()['overall_iou']:.2f}",
                f"{gain['difference']:+.2f}",
                f"{gain['low']:+.2f} .. {gain['high']:+.2f}",
                f"{gain['better']:.1f}",
            ]
        )
    headers = ["split", "expressions", "baseline oIoU", "candidate oIoU", "gain", "95 % interval", "% resamples ahead"]
    print(format_table(headers, rows))


if __name__ == "__main__":
    main()
