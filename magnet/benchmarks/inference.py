"""Inference cost of MagNet: latency, memory, FLOPs and how well the FLOPs use the hardware.

    python -m magnet.benchmarks.inference --preset swin-b --size 480 --device cpu --runs 5
    python -m magnet.benchmarks.inference --device cuda            # bf16 autocast by default
    python -m magnet.benchmarks.inference --device cuda --cuda-graphs   # forwards replayed as CUDA graphs
    python -m magnet.benchmarks.inference --checkpoint checkpoints/magnet_refcoco.pth

Random weights (seeded) unless --checkpoint is given; one random image and expressions of
max_tokens ids of which 8 are real ([CLS] + 6 words + [SEP]). For each batch size B (one image,
B expressions: the image expanded, as MagNetPredictor does), the median / min / max latency of
--runs forwards after --warmup forwards, and the peak memory.

Figures:
- GFLOPs per forward (batch 1) from torch.utils.flop_counter.FlopCounterMode, which counts
  2 * multiply-accumulates of matmuls, convolutions and attention. It does not count
  embedding_bag (the pixel decoder's deformable sampling), grid_sample, softmax, norms or
  element-wise ops, so the figure is a slight undercount of the real work.
- achieved GFLOP/s = GFLOPs / median batch-1 latency, and efficiency = achieved / the fp32
  matmul rate of this device and thread count, measured in the same run: the mean of one
  measurement before and one after the forwards, since other work on a shared machine changes
  both (under bf16 autocast on a GPU the efficiency can exceed 1: the reference is fp32).
- peak RSS (VmHWM on Linux; it only grows, so the batch-4 figure includes batch 1) and its
  increase over the RSS before the model was built; on CUDA, torch.cuda.max_memory_allocated.

The targets printed beside the figures apply to swin-b at 480 px.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..checkpoint import count_parameters, load_model, pick_device, save_checkpoint
from ..cuda_graphs import GraphedForward
from ..modeling import MagNet
from . import (
    GB,
    add_common_arguments,
    amp_name,
    autocast,
    cuda_peak_bytes,
    describe_device,
    format_table,
    matmul_rate,
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

# Targets for swin-b at 480 px on a 2-core CPU, printed beside the figures (met or not).
CPU_SECONDS_PER_EXPRESSION = 4.0  # on 2 cores
CPU_EFFICIENCY = 0.5
CPU_PEAK_RSS = 2.5 * GB
BATCH4_RATIO = 3.0  # 4 expressions of one image in less than 3x the time of one
GPU_SECONDS_PER_EXPRESSION = 0.040  # with autocast


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magnet.benchmarks.inference",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_arguments(parser)
    parser.add_argument(
        "--checkpoint", default=None, help="benchmark this checkpoint (.pth or .safetensors) instead of a preset"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed forwards per batch size (>= 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards before the timed ones")
    parser.add_argument("--batch", default="1,4", help="comma-separated batch sizes (expressions of one image)")
    parser.add_argument(
        "--predictor-expressions",
        type=int,
        default=4,
        help="also time MagNetPredictor.predict with this many expressions in one call against as many "
        "one-expression calls, at the predictor's own batching for the device (0: skip)",
    )
    parser.add_argument(
        "--probe-one-expression",
        action="store_true",
        help="only segment one expression with MagNetPredictor in this fresh process and print its peak RSS "
        "as JSON (the benchmark runs itself this way on CPU for the RSS figure)",
    )
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay each forward (and the predictor's) as a CUDA graph captured in the warm-up (CUDA only)",
    )
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the reference fp32 matmul")
    parser.add_argument("--matmul-seconds", type=float, default=1.0, help="how long to time the reference matmul")
    return parser


def build(args: argparse.Namespace, device: torch.device) -> MagNet:
    """The model to benchmark, in eval mode on `device`."""
    if args.checkpoint:
        if args.override:
            raise SystemExit("--override applies to presets; a checkpoint brings its own configuration")
        model = load_model(args.checkpoint, device="cpu")
        if args.size is not None:
            model.config.image_size = args.size
        return model.to(device).eval()
    config = model_config(args.preset, parse_overrides(args.override), args.size)
    return MagNet(config).to(device).eval()


def count_gflops(
    model: MagNet, inputs: tuple[torch.Tensor, ...], device: torch.device, amp: torch.dtype | None
) -> tuple[float, dict[str, float]]:
    """GFLOPs of one forward, in total and per top-level part (vision, text, head, other)."""
    with torch.inference_mode(), autocast(device, amp), FlopCounterMode(display=False) as counter:
        model(*inputs)
    total = counter.get_total_flops()
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    parts: dict[str, float] = {}
    for child, _ in model.named_children():
        prefix = f"{root}.{child}"
        names = [n for n in by_module if n == prefix or n.startswith(prefix + ".")]
        # Modules whose forward is never called themselves (e.g. `text`, whose blocks run one by
        # one between vision stages) have no entry: sum the outermost entries below them.
        outermost = [n for n in names if not any(n.startswith(m + ".") for m in names if m != n)]
        flops = sum(by_module[n] for n in outermost)
        if flops:
            parts[child] = flops / 1e9
    parts["other"] = max(0.0, total / 1e9 - sum(parts.values()))
    return total / 1e9, parts


def time_forwards(
    forward: Callable[..., Any],
    inputs: tuple[torch.Tensor, ...],
    device: torch.device,
    amp: torch.dtype | None,
    runs: int,
    warmup: int,
) -> list[float]:
    """Seconds of each of `runs` timed forwards, after `warmup` untimed ones."""
    times = []
    with torch.inference_mode(), autocast(device, amp):
        for i in range(warmup + runs):
            synchronize(device)
            start = time.perf_counter()
            forward(*inputs)
            synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


PREDICTOR_EXPRESSIONS = (
    "the red circle on the left",
    "the small blue square",
    "the green triangle above the star",
    "the second largest shape",
)


def time_predictor(
    model: MagNet, device: torch.device, count: int, runs: int, seed: int, cuda_graphs: bool = False
) -> dict[str, Any]:
    """Seconds of MagNetPredictor.predict with `count` expressions in one call and of `count`
    one-expression calls on the same (cached) image, the predictor batching as it does by default
    on this device; medians of `runs` repetitions after one untimed warm-up of each."""
    from ..predictor import MagNetPredictor

    predictor = MagNetPredictor(model, device=device, cuda_graphs=cuda_graphs)
    size = model.config.image_size
    image = torch.randint(0, 256, (size, size, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    image = image.numpy()
    texts = [PREDICTOR_EXPRESSIONS[i % len(PREDICTOR_EXPRESSIONS)] for i in range(count)]

    def one_call() -> None:
        predictor.predict(image, texts)

    def single_calls() -> None:
        for text in texts:
            predictor.predict(image, text)

    timings: dict[str, list[float]] = {"one_call": [], "single_calls": []}
    for i in range(runs + 1):
        for name, call in (("one_call", one_call), ("single_calls", single_calls)):
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            if i > 0:
                timings[name].append(time.perf_counter() - start)
    one, singles = statistics.median(timings["one_call"]), statistics.median(timings["single_calls"])
    return {
        "expressions": count,
        "max_batch": predictor.max_batch,
        "one_call_s": one,
        "single_calls_s": singles,
        "ratio": one / singles,
        "peak_rss_bytes": peak_rss_bytes(),
    }


def probe_one_expression(args: argparse.Namespace) -> dict[str, Any]:
    """What a user's process needs: imports, `load_model` of a checkpoint file, MagNetPredictor
    and one expression on a random image at the model's input size. Run in a fresh process, so
    that its peak RSS holds nothing of the benchmark's own (matmul references, batches, FLOP
    counting); without --checkpoint the parent hands over the preset's seeded weights as a file."""
    from ..predictor import MagNetPredictor

    set_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = build(args, torch.device("cpu"))
    load_s = time.perf_counter() - start
    size = model.config.image_size
    image = torch.randint(
        0, 256, (size, size, 3), generator=torch.Generator().manual_seed(args.seed), dtype=torch.uint8
    )
    MagNetPredictor(model, device="cpu").predict(image.numpy(), PREDICTOR_EXPRESSIONS[0])
    return {"peak_rss_bytes": peak_rss_bytes(), "load_s": load_s}


def fresh_process_probe(args: argparse.Namespace, model: MagNet) -> dict[str, Any]:
    """`probe_one_expression`'s figures (peak RSS in bytes, seconds of `load_model`) from a new
    Python process that loads `model` (the benchmarked one) from a checkpoint file."""
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint
        if not checkpoint:
            checkpoint = str(save_checkpoint(model, Path(folder) / "probe.safetensors"))
        argv = ["--checkpoint", checkpoint, "--seed", str(args.seed)]
        argv += ["--size", str(args.size)] if args.size is not None else []
        argv += ["--threads", str(args.threads)] if args.threads is not None else []
        command = [sys.executable, "-m", "magnet.benchmarks.inference", *argv, "--probe-one-expression"]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark; returns the figures (also printed by `main`)."""
    if args.probe_one_expression:
        return probe_one_expression(args)
    if args.runs < 1 or args.warmup < 0:
        raise SystemExit("--runs must be >= 1 and --warmup >= 0")
    try:
        batches = sorted({int(b) for b in args.batch.split(",") if b.strip()})
    except ValueError:
        raise SystemExit(f"--batch takes comma-separated integers, got {args.batch!r}") from None
    if not batches or batches[0] < 1:
        raise SystemExit(f"--batch needs positive sizes, got {args.batch!r}")
    device = pick_device(args.device)
    if args.cuda_graphs and device.type != "cuda":
        raise SystemExit(f"--cuda-graphs needs a CUDA device (--device cuda), not {device}")
    if args.cuda_graphs and args.warmup < 1:
        raise SystemExit("--cuda-graphs captures in the warm-up: give --warmup >= 1")
    threads = set_threads(args.threads)
    amp = resolve_amp(args.amp, device)
    torch.manual_seed(args.seed)

    baseline_rss = peak_rss_bytes()
    model = build(args, device)
    config = model.config
    size = config.image_size
    generator = torch.Generator().manual_seed(args.seed)
    image = torch.randn(1, 3, size, size, generator=generator).to(device)
    ids, mask = synthetic_expressions(max(batches), config, generator)
    ids, mask = ids.to(device), mask.to(device)

    def inputs(b: int) -> tuple[torch.Tensor, ...]:
        return image.expand(b, -1, -1, -1), ids[:b], mask[:b]

    forward = GraphedForward(model, amp) if args.cuda_graphs else model
    matmul_before = matmul_rate(device, args.matmul_size, args.matmul_seconds)
    per_batch: dict[int, dict[str, Any]] = {}
    for b in batches:
        reset_cuda_peak(device)
        times = time_forwards(forward, inputs(b), device, amp, args.runs, args.warmup)
        median = statistics.median(times)
        per_batch[b] = {
            "median_s": median,
            "min_s": min(times),
            "max_s": max(times),
            "per_expression_s": median / b,
            "times_s": times,
            "peak_rss_bytes": peak_rss_bytes(),
            "cuda_peak_bytes": cuda_peak_bytes(device),
        }
    gflops, gflops_parts = count_gflops(model, inputs(1), device, amp)
    matmul_after = matmul_rate(device, args.matmul_size, args.matmul_seconds)
    matmul = (matmul_before + matmul_after) / 2

    first = per_batch[batches[0]]
    for figures in per_batch.values():
        figures["ratio_to_first"] = figures["median_s"] / first["median_s"]
    achieved = gflops * batches[0] / first["median_s"]  # FLOPs scale with the batch
    results: dict[str, Any] = {
        "model": args.checkpoint or args.preset,
        "overrides": parse_overrides(args.override),
        "image_size": size,
        "device": str(device),
        "device_name": describe_device(device, threads),
        "threads": threads,
        "amp": amp_name(amp),
        "cuda_graphs": args.cuda_graphs,
        "torch": torch.__version__,
        "parameters": count_parameters(model),
        "gflops": gflops * batches[0],
        "gflops_batch": batches[0],
        "gflops_parts": {k: v * batches[0] for k, v in gflops_parts.items()},
        "matmul_gflops_per_s": matmul,
        "matmul_gflops_per_s_before_after": [matmul_before, matmul_after],
        "matmul_size": args.matmul_size,
        "achieved_gflops_per_s": achieved,
        "efficiency": achieved / matmul,
        "baseline_rss_bytes": baseline_rss,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_increase_bytes": peak_rss_bytes() - baseline_rss,
        "batches": {str(b): v for b, v in per_batch.items()},
    }
    if 1 in per_batch and 4 in per_batch:
        results["batch4_ratio"] = per_batch[4]["median_s"] / per_batch[1]["median_s"]
    if device.type == "cpu":
        probe = fresh_process_probe(args, model)
        results["one_expression_process_peak_rss_bytes"] = probe["peak_rss_bytes"]
        results["load_model_s"] = probe["load_s"]
    if args.predictor_expressions > 0:
        results["predictor"] = time_predictor(
            model, device, args.predictor_expressions, min(args.runs, 3), args.seed, args.cuda_graphs
        )
    results["targets"] = check_targets(results, per_batch, device, amp)
    return results


def check_targets(
    results: dict[str, Any], per_batch: dict[int, dict[str, Any]], device: torch.device, amp: torch.dtype | None
) -> list[dict[str, Any]]:
    """The targets with this run's figures: [{name, figure, target, met}]."""
    targets = []
    one = per_batch.get(1)
    if device.type == "cuda":
        if one is not None:
            note = "" if amp is not None else " (target assumes autocast)"
            targets.append(
                {
                    "name": "GPU latency per expression" + note,
                    "figure": f"{one['per_expression_s'] * 1e3:.1f} ms",
                    "target": f"<= {GPU_SECONDS_PER_EXPRESSION * 1e3:.0f} ms",
                    "met": one["per_expression_s"] <= GPU_SECONDS_PER_EXPRESSION,
                }
            )
    else:
        if one is not None:
            targets.append(
                {
                    "name": "CPU latency per expression (target: 2 cores)",
                    "figure": f"{one['median_s']:.2f} s",
                    "target": f"<= {CPU_SECONDS_PER_EXPRESSION:.0f} s",
                    "met": one["median_s"] <= CPU_SECONDS_PER_EXPRESSION,
                }
            )
            targets.append(
                {
                    "name": "CPU peak RSS, one expression (fresh process)",
                    "figure": f"{results['one_expression_process_peak_rss_bytes'] / GB:.2f} GB",
                    "target": f"<= {CPU_PEAK_RSS / GB:.1f} GB",
                    "met": results["one_expression_process_peak_rss_bytes"] <= CPU_PEAK_RSS,
                }
            )
        targets.append(
            {
                "name": "efficiency (achieved / fp32 matmul)",
                "figure": f"{results['efficiency']:.2f}",
                "target": f">= {CPU_EFFICIENCY}",
                "met": results["efficiency"] >= CPU_EFFICIENCY,
            }
        )
    if "batch4_ratio" in results:
        targets.append(
            {
                "name": "batch of 4 expressions / one",
                "figure": f"{results['batch4_ratio']:.2f}x",
                "target": f"< {BATCH4_RATIO:.0f}x",
                "met": results["batch4_ratio"] < BATCH4_RATIO,
            }
        )
    if "predictor" in results:
        p = results["predictor"]
        targets.append(
            {
                "name": f"predictor: {p['expressions']} expressions in one call / as many single calls",
                "figure": f"{p['ratio']:.2f}x",
                "target": "<= 1x" if device.type == "cpu" else "< 1x",
                # 5 % for timing noise: on CPU both run the same forwards one by one
                "met": p["ratio"] <= 1.05 if device.type == "cpu" else p["ratio"] < 1.0,
            }
        )
    return targets


def report(results: dict[str, Any]) -> str:
    """The figures as text."""
    if set(results) == {"peak_rss_bytes", "load_s"}:  # --probe-one-expression
        return json.dumps(results)
    cuda = results["device"].startswith("cuda")
    parts = ", ".join(f"{k} {v:.4g}" for k, v in results["gflops_parts"].items())
    lines = [
        f"MagNet inference: {results['model']}{' ' + str(results['overrides']) if results['overrides'] else ''}, "
        f"{results['image_size']}x{results['image_size']}, {results['device_name']}, amp {results['amp']}, "
        f"{'CUDA graphs, ' if results.get('cuda_graphs') else ''}torch {results['torch']}",
        f"parameters            {results['parameters']:,}",
        f"GFLOPs per forward    {results['gflops']:.4g} at batch {results['gflops_batch']} ({parts}); "
        "FlopCounterMode, 2*MACs, embedding_bag/grid_sample not counted",
        f"fp32 matmul rate      {results['matmul_gflops_per_s']:.1f} GFLOP/s "
        f"({results['matmul_size']}^2 @ {results['matmul_size']}^2, same device and threads; mean of "
        "{:.1f} before and {:.1f} after the forwards)".format(*results["matmul_gflops_per_s_before_after"]),
        f"achieved              {results['achieved_gflops_per_s']:.4g} GFLOP/s, efficiency {results['efficiency']:.3f}",
        f"peak RSS              {results['peak_rss_bytes'] / GB:.2f} GB "
        f"(+{results['rss_increase_bytes'] / GB:.2f} GB over {results['baseline_rss_bytes'] / GB:.2f} GB before the model)",
    ]
    if "one_expression_process_peak_rss_bytes" in results:
        lines.append(
            f"one expression, fresh  {results['one_expression_process_peak_rss_bytes'] / GB:.2f} GB peak RSS of a new "
            "process: imports, load_model of a checkpoint file, MagNetPredictor, one expression (--probe-one-expression); "
            f"load_model took {results['load_model_s']:.2f} s"
        )
    lines += [
        "",
    ]
    headers = ["batch", "median s", "min s", "max s", "per expr s", "x first", "peak RSS GB"] + (
        ["CUDA peak GB"] if cuda else []
    )
    rows = []
    for b, f in results["batches"].items():
        row = [
            b,
            f"{f['median_s']:.4f}",
            f"{f['min_s']:.4f}",
            f"{f['max_s']:.4f}",
            f"{f['per_expression_s']:.4f}",
            f"{f['ratio_to_first']:.2f}",
            f"{f['peak_rss_bytes'] / GB:.2f}",
        ]
        if cuda:
            row.append(f"{f['cuda_peak_bytes'] / GB:.2f}")
        rows.append(row)
    lines += [format_table(headers, rows), ""]
    if "predictor" in results:
        p = results["predictor"]
        lines += [
            f"MagNetPredictor.predict (max_batch {p['max_batch']} on this device): {p['expressions']} expressions "
            f"in one call {p['one_call_s']:.3f} s, {p['expressions']} single calls {p['single_calls_s']:.3f} s "
            f"({p['ratio']:.2f}x); peak RSS {p['peak_rss_bytes'] / GB:.2f} GB",
            "",
        ]
    preset_note = (
        ""
        if results["model"] == "swin-b" and results["image_size"] == 480 and not results["overrides"]
        else "  (targets are set for swin-b at 480 px)"
    )
    lines.append("targets" + preset_note)
    lines.append(
        format_table(
            ["target", "figure", "goal", "met"],
            [[t["name"], t["figure"], t["target"], "yes" if t["met"] else "NO"] for t in results["targets"]],
        )
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark, prints the figures and returns them."""
    return run_benchmark(build_parser(), run, report, argv)


if __name__ == "__main__":
    main()
