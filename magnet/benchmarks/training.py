"""Training throughput of MagNet: steps/s, samples/s and peak memory of the real training step.

    python -m magnet.benchmarks.training --preset small --device cpu --steps 5 --batch 8
    python -m magnet.benchmarks.training --preset synthetic-cpu --batch 16 --compare small:8   # side by side
    python -m magnet.benchmarks.training --preset swin-b --size 480 --device cuda --batch 16

Random weights and synthetic batches (random images, one random rectangle per target mask,
expressions of 8 real tokens), already on the device, so data loading is not measured. Each step
is what `magnet.train.train` does for one batch: the forward under autocast, the Mask Grounding
head on masked words, every loss (`magnet.train.LossStep`), backward, gradient clipping and AdamW.
The first --warmup steps are not timed. On CUDA, a batch that runs out of memory is halved and
tried again; the report says which batch fitted.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Any

import torch

from ..checkpoint import count_parameters, pick_device
from ..data.tokenizer import ExpressionTokenizer
from ..train import LossStep, TrainConfig, build_model, build_optimizer, optimizer_step
from . import (
    GB,
    add_common_arguments,
    amp_name,
    cuda_peak_bytes,
    describe_device,
    format_table,
    model_config,
    parse_overrides,
    peak_rss_bytes,
    reset_cuda_peak,
    resolve_amp,
    run_benchmark,
    set_threads,
    synchronize,
    synthetic_expressions,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magnet.benchmarks.training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_arguments(parser)
    parser.set_defaults(preset="small")
    parser.add_argument("--batch", type=int, default=8, help="samples per step (halved on CUDA out-of-memory)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (>= 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model's forward as `train --compile` does (compiled in the first warm-up step)",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="PRESET[:BATCH]",
        help="also time this preset (at its own batch, default --batch) in the same run; "
        "the report puts them side by side",
    )
    return parser


def synthetic_batch(
    batch: int, size: int, config, generator: torch.Generator, device: torch.device
) -> dict[str, torch.Tensor]:
    """A training batch as `magnet.data.dataset.collate` builds it: image (B, 3, S, S), mask
    (B, S, S) float 0/1 (one rectangle covering 10-60% of each side), input_ids and
    attention_mask (B, max_tokens)."""
    images = torch.randn(batch, 3, size, size, generator=generator)
    masks = torch.zeros(batch, size, size)
    for mask in masks:
        h, w = (int(size * f) for f in 0.1 + 0.5 * torch.rand(2, generator=generator))
        top, left = (int(torch.randint(0, size - extent + 1, (1,), generator=generator)) for extent in (h, w))
        mask[top : top + h, left : left + w] = 1
    ids, attention = synthetic_expressions(batch, config, generator)
    return {
        k: v.to(device)
        for k, v in {"image": images, "mask": masks, "input_ids": ids, "attention_mask": attention}.items()
    }


def time_steps(
    model,
    optimizer,
    scaler,
    cfg: TrainConfig,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    amp: torch.dtype | None,
    steps: int,
    warmup: int,
) -> tuple[list[float], float, float]:
    """Seconds of each timed training step (`magnet.train.optimizer_step`, the step of the
    training loop), the last loss and the seconds of the untimed warm-up steps (with
    `TrainConfig.compile`, the compilation is in the first of them)."""
    tokenizer = ExpressionTokenizer.for_model(model.config)
    loss_step = LossStep(model, cfg, tokenizer, device, amp)
    times, loss, warmup_s = [], float("nan"), 0.0
    for step in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        terms = optimizer_step(
            loss_step, itertools.repeat(batch), optimizer, scaler, cfg, step, rank=0, world=1, last_good=None
        )
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
        else:
            warmup_s += time.perf_counter() - start
        loss = terms["loss"]
    return times, loss, warmup_s


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark; returns the figures (also printed by `main`)."""
    if args.steps < 1 or args.warmup < 0 or args.batch < 1:
        raise SystemExit("--steps and --batch must be >= 1, --warmup >= 0")
    device = pick_device(args.device)
    threads = set_threads(args.threads)
    amp = resolve_amp(args.amp, device)
    torch.manual_seed(args.seed)
    overrides = parse_overrides(args.override)
    config = model_config(args.preset, overrides, args.size)  # validates the overrides early
    cfg = TrainConfig(
        preset=args.preset,
        model={**overrides, "image_size": config.image_size},
        grounding=True,
        batch_size=args.batch,
        amp=amp is not None,
        compile=args.compile,
        device=str(device),
        seed=args.seed,
    )

    baseline_rss = peak_rss_bytes()
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp == torch.float16)
    generator = torch.Generator().manual_seed(args.seed)
    batch_size, tried = args.batch, []
    while True:
        tried.append(batch_size)
        reset_cuda_peak(device)
        batch = synthetic_batch(batch_size, config.image_size, model.config, generator, device)
        try:
            times, loss, warmup_s = time_steps(
                model, optimizer, scaler, cfg, batch, device, amp, args.steps, args.warmup
            )
            break
        except torch.cuda.OutOfMemoryError:
            if device.type != "cuda" or batch_size == 1:
                raise
        # outside the except block, whose traceback holds the failed step's activations
        del batch
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        batch_size //= 2
    total = sum(times)
    return {
        "model": args.preset,
        "overrides": overrides,
        "image_size": config.image_size,
        "device": str(device),
        "device_name": describe_device(device, threads),
        "threads": threads,
        "amp": amp_name(amp),
        "compiled": args.compile,
        "torch": torch.__version__,
        "parameters": count_parameters(model),
        "batch": batch_size,
        "batches_tried": tried,
        "steps": len(times),
        "warmup": args.warmup,
        "warmup_s": warmup_s,
        "median_step_s": statistics.median(times),
        "min_step_s": min(times),
        "max_step_s": max(times),
        "steps_per_s": len(times) / total,
        "samples_per_s": len(times) * batch_size / total,
        "final_loss": loss,
        "baseline_rss_bytes": baseline_rss,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_increase_bytes": peak_rss_bytes() - baseline_rss,
        "cuda_peak_bytes": cuda_peak_bytes(device),
    }


def report(results: dict[str, Any]) -> str:
    """The figures as text."""
    fitted = results["batch"]
    batch_note = (
        f"{fitted}"
        if results["batches_tried"] == [fitted]
        else f"{fitted} (tried {', '.join(map(str, results['batches_tried']))}; larger ones ran out of memory)"
    )
    rows = [
        ["parameters", f"{results['parameters']:,}"],
        ["batch", batch_note],
        ["timed steps", f"{results['steps']} (after {results['warmup']} warm-up, {results['warmup_s']:.1f} s)"],
        [
            "step s (median / min / max)",
            f"{results['median_step_s']:.3f} / {results['min_step_s']:.3f} / {results['max_step_s']:.3f}",
        ],
        ["steps/s", f"{results['steps_per_s']:.3f}"],
        ["samples/s", f"{results['samples_per_s']:.2f}"],
        [
            "peak RSS",
            f"{results['peak_rss_bytes'] / GB:.2f} GB (+{results['rss_increase_bytes'] / GB:.2f} GB over "
            f"{results['baseline_rss_bytes'] / GB:.2f} GB before the model)",
        ],
        ["final loss", f"{results['final_loss']:.4f}"],
    ]
    if results["cuda_peak_bytes"] is not None:
        rows.insert(7, ["CUDA peak allocated", f"{results['cuda_peak_bytes'] / GB:.2f} GB"])
    header = (
        f"MagNet training step: {results['model']}{' ' + str(results['overrides']) if results['overrides'] else ''}, "
        f"{results['image_size']}x{results['image_size']}, {results['device_name']}, amp {results['amp']}, "
        f"{'torch.compile, ' if results['compiled'] else ''}"
        f"torch {results['torch']}; Mask Grounding head and all losses"
    )
    return header + "\n" + format_table(["figure", "value"], rows, right_align=False)


def run_compared(args: argparse.Namespace) -> dict[str, Any]:
    """`run` for --preset, then for each --compare preset; their figures under "compared"."""
    results = run(args)
    results["compared"] = []
    for item in args.compare:
        preset, _, batch = item.partition(":")
        other = argparse.Namespace(
            **{
                **vars(args),
                "preset": preset,
                "batch": int(batch or args.batch),
                "override": [],
                "size": None,
                "compare": [],
            }
        )
        results["compared"].append(run(other))
    return results


def report_compared(results: dict[str, Any]) -> str:
    """One report per configuration, then a side-by-side table when there are several."""
    every = [results, *results.get("compared", [])]
    text = "\n\n".join(report(r) for r in every)
    if len(every) > 1:
        rows = [
            [
                f"{r['model']} {r['image_size']} px",
                r["batch"],
                f"{r['median_step_s']:.3f}",
                f"{r['samples_per_s']:.2f}",
                f"{r['samples_per_s'] / every[-1]['samples_per_s']:.1f}x",
                f"{r['peak_rss_bytes'] / GB:.2f}",
            ]
            for r in every
        ]
        text += "\n\nSide by side (speed-up against the last one):\n" + format_table(
            ["configuration", "batch", "step s", "samples/s", "speed-up", "peak RSS GB"], rows
        )
    return text


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark, prints the figures and returns them."""
    return run_benchmark(build_parser(), run_compared, report_compared, argv)


if __name__ == "__main__":
    main()
