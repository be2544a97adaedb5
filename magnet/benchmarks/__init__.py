"""Benchmarks that print figures: `python -m magnet.benchmarks.inference` and
`python -m magnet.benchmarks.training`.

This module holds what both share: model configurations from a preset plus `--override`
key=value pairs, synthetic expressions, memory readings, a reference fp32 matmul rate, and
plain-text tables. Nothing here asserts a time; the tests check that the figures exist and agree.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import json
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..checkpoint import CHECKPOINT_HELP
from ..config import PRESETS, MagNetConfig, get_config

if TYPE_CHECKING:
    from ..data.tokenizer import ExpressionTokenizer
    from ..modeling import MagNet

REAL_TOKENS = 8  # a typical referring expression: [CLS] + 6 word pieces + [SEP], padded to max_tokens
CLS_ID, SEP_ID = 101, 102  # bert-base-uncased
GB = 1e9
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags shared by both benchmarks."""
    parser.add_argument("--preset", default="swin-b", choices=sorted(PRESETS), help="model preset (random weights)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a MagNetConfig field of the preset, e.g. --override depths=1,1,1,1 "
        "(values are Python literals; repeat the flag for several fields)",
    )
    parser.add_argument("--size", type=int, default=None, help="input image side (default: the preset's image_size)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available, else cpu)")
    parser.add_argument(
        "--amp", choices=sorted(AMP_DTYPES), default=None, help="autocast dtype (default: bf16 on CUDA, none elsewhere)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """["depths=1,1,1,1", "embed_dim=16"] -> {"depths": (1, 1, 1, 1), "embed_dim": 16}.

    Values are Python literals: numbers, tuples, a dict for `grounding`."""
    known = {f.name for f in dataclasses.fields(MagNetConfig)}
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SystemExit(f"--override takes KEY=VALUE, got {item!r}")
        if key not in known:
            raise SystemExit(f"--override {key}: not a MagNetConfig field; choose from {sorted(known)}")
        try:
            values[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            raise SystemExit(
                f"--override {key}: {raw!r} is not a Python literal "
                "(write numbers, tuples like 2,2,6,2, or dicts like {'hidden_size': 64})"
            ) from None
    return values


def model_config(preset: str, overrides: dict[str, Any], size: int | None = None) -> MagNetConfig:
    """The preset's configuration with `overrides` applied (and `image_size` = size when given)."""
    values = dict(overrides)
    if size is not None:
        values["image_size"] = size
    try:
        return dataclasses.replace(get_config(preset), **values)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"invalid model configuration: {exc}") from None


def resolve_amp(name: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `--amp` (default: bf16 on CUDA, none elsewhere)."""
    if name is None:
        name = "bf16" if device.type == "cuda" else "none"
    return AMP_DTYPES[name]


def amp_name(dtype: torch.dtype | None) -> str:
    return next(k for k, v in AMP_DTYPES.items() if v == dtype)


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_threads(threads: int | None) -> int:
    """Applies `--threads` and returns the intra-op thread count in use."""
    if threads is not None:
        if threads < 1:
            raise SystemExit("--threads must be >= 1")
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """--checkpoint and --threads, for the benchmarks that score a trained checkpoint on CPU."""
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")


def add_synthetic_split_arguments(parser: argparse.ArgumentParser, default_splits: str, scenes: int = 300) -> None:
    """--split (repeatable; `default_splits` says what is used without it) and --scenes per split,
    for the benchmarks that score the synthetic held-out splits."""
    from ..data.synthetic import HELD_OUT_SPLITS

    parser.add_argument(
        "--split",
        action="append",
        choices=HELD_OUT_SPLITS,
        help=f"synthetic split (repeatable; default {default_splits})",
    )
    parser.add_argument("--scenes", type=int, default=scenes, help=f"scenes per split (default {scenes})")


def load_for_scoring(args: argparse.Namespace) -> tuple[MagNet, ExpressionTokenizer]:
    """(model on CPU, its tokenizer) from the parsed --checkpoint, after applying --threads."""
    set_threads(args.threads)
    return load_on_cpu(args.checkpoint)


def load_on_cpu(path: str | Path) -> tuple[MagNet, ExpressionTokenizer]:
    """(model on CPU, its tokenizer) from a checkpoint file."""
    from ..checkpoint import load_model
    from ..data.tokenizer import ExpressionTokenizer

    model = load_model(path, device="cpu")
    return model, ExpressionTokenizer.for_model(model.config)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic_expressions(
    batch: int, config: MagNetConfig, generator: torch.Generator, real_tokens: int = REAL_TOKENS
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (batch, max_tokens) int64: [CLS], random word pieces,
    [SEP], then padding, like the tokenizer's output for a short expression."""
    length = config.max_tokens
    real = max(2, min(real_tokens, length))
    high = min(config.vocab_size, 30000)
    low = min(1000, high - 1)  # skip [PAD], [unused*] and the special ids
    ids = torch.zeros(batch, length, dtype=torch.long)
    ids[:, 1 : real - 1] = torch.randint(low, high, (batch, real - 2), generator=generator)
    ids[:, 0], ids[:, real - 1] = min(CLS_ID, high - 1), min(SEP_ID, high - 1)
    mask = torch.zeros(batch, length, dtype=torch.long)
    mask[:, :real] = 1
    return ids, mask


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far: VmHWM on Linux, else getrusage's ru_maxrss.
    (Linux's ru_maxrss carries the parent's peak over into a child started with vfork + exec,
    as subprocess does, so a small child of a large process would report the parent's peak.)"""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def cuda_peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def reset_cuda_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def matmul_rate(device: torch.device, size: int = 2048, seconds: float = 1.0) -> float:
    """Achieved float32 GFLOP/s of (size x size) @ (size x size) matmuls on `device`, timed for
    about `seconds` after one warm-up (2 * size**3 FLOPs each, the FlopCounterMode convention)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device)
    b = torch.randn(size, size, generator=generator).to(device)
    torch.mm(a, b)
    synchronize(device)
    count, start = 0, time.perf_counter()
    elapsed = 0.0
    chunk = 1 if device.type == "cpu" else 10  # fewer synchronisations on accelerators
    while elapsed < seconds:
        for _ in range(chunk):
            torch.mm(a, b)
        synchronize(device)
        count += chunk
        elapsed = time.perf_counter() - start
    return 2 * size**3 * count / elapsed / 1e9


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right_align: bool = True) -> str:
    """Plain-text table: first column left-aligned, the others right-aligned unless right_align=False."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        line = "  ".join(
            c.ljust(w) if i == 0 or not right_align else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
        )
        lines.append(line.rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe_device(device: torch.device, threads: int) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({threads} threads)"


def run_benchmark(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    report: Callable[[dict[str, Any]], str],
    argv: list[str] | None,
) -> dict[str, Any]:
    """The shared command line of the benchmarks: run, print the report, optionally write --json."""
    args = parser.parse_args(argv)
    results = run(args)
    print(report(results), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results
