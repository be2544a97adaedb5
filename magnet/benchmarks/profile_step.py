"""Where a training step's time goes: forward and backward per model part, optimizer, losses.

    python -m magnet.benchmarks.profile_step --preset small --batch 8 --steps 3
    python -m magnet.benchmarks.profile_step --preset synthetic-cpu

Forward time of a part is measured between its forward pre-hook and forward hook; backward time
between its backward pre-hook and backward hook (autograd on the CPU runs the parts one after the
other, so the intervals do not overlap). Parts nest: "deformable sampling" lies inside "pixel
decoder", so the rows do not add up to the step; "other" is the step minus the top-level rows.
Random weights and a synthetic batch, as in `magnet.benchmarks.training`.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections import defaultdict
from typing import Any

import torch

from ..checkpoint import pick_device
from ..data.tokenizer import ExpressionTokenizer
from ..modeling import MagNet
from ..train import LossStep, TrainConfig, build_model, build_optimizer
from . import add_common_arguments, format_table, model_config, parse_overrides, run_benchmark, set_threads, synchronize
from .training import synthetic_batch


def model_parts(model: MagNet) -> dict[str, list[torch.nn.Module]]:
    """Named groups of modules; the first group of each nesting level is top-level."""
    vision = model.vision
    parts: dict[str, list[torch.nn.Module]] = {
        "patch embedding": [vision.patch_embed],
        **{f"Swin stage {i + 1} blocks": list(stage.blocks) for i, stage in enumerate(vision.layers)},
        "vision fusion (PWAM, pyramids, gates)": [
            m
            for stage in vision.layers
            for m in (stage.fusion, stage.res_gate, *stage.pyramids, *stage.fusions, stage.mixer)
        ],
        "patch merging": [stage.downsample for stage in vision.layers if stage.downsample is not None],
        "BERT layers": list(model.text.encoder.layer),
        "language fusion": [*model.text.pwams, *model.text.res_gates],
        "pixel decoder": [model.head.pixel_decoder],
        "transformer decoder": [model.head.predictor],
    }
    if model.grounding is not None:
        parts["Mask Grounding head"] = [model.grounding]
    return parts


NESTED = {
    "deformable attention (in pixel decoder)": lambda m: [
        mod for mod in m.head.pixel_decoder.modules() if type(mod).__name__ == "MultiScaleDeformableAttention"
    ]
}


class _Marker(torch.autograd.Function):
    """Identity whose backward stamps the time into `call[key]` (the earliest or latest stamp)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, timer: PartTimer, call: dict, key: str) -> torch.Tensor:
        ctx.stamp = (timer, call, key)
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        timer, call, key = ctx.stamp
        now = timer.now()
        call[key] = min(call[key], now) if key == "start" else max(call[key], now)
        return grad, None, None, None


def _map_tensors(value: Any, fn) -> Any:
    """`value` with fn applied to every tensor inside it (tensors, sequences, dicts, dataclasses)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: _map_tensors(v, fn) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _map_tensors(getattr(value, f.name), fn) for f in dataclasses.fields(value) if f.init}
        )
    return value


class PartTimer:
    """Forward and backward seconds of groups of modules.

    Forward: between each call's pre-hook and hook. Backward of one call: identity markers wrap
    the call's inputs and outputs; the backward runs from the first gradient that reaches an
    output marker to the last one that leaves an input marker (an input marker is used by this
    call alone, so its gradient is complete when the call's backward is)."""

    def __init__(self, groups: dict[str, list[torch.nn.Module]], device: torch.device) -> None:
        self.device = device
        self.forward: dict[str, float] = defaultdict(float)
        self.calls: list[tuple[str, dict[str, float]]] = []
        self._handles = []
        for name, modules in groups.items():
            for module in modules:
                self._handles += [
                    module.register_forward_pre_hook(self._pre(name), with_kwargs=True),
                    module.register_forward_hook(self._post(name), with_kwargs=True),
                ]

    def now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def _wrap(self, call: dict, key: str):
        def fn(tensor: torch.Tensor) -> torch.Tensor:
            return _Marker.apply(tensor, self, call, key) if tensor.requires_grad else tensor

        return fn

    def _pre(self, name: str):
        def hook(module: torch.nn.Module, args: Any, kwargs: Any):
            call = {"forward_start": self.now(), "start": float("inf"), "end": 0.0}
            module._profile_call = call  # type: ignore[attr-defined]
            self.calls.append((name, call))
            return _map_tensors(args, self._wrap(call, "end")), _map_tensors(kwargs, self._wrap(call, "end"))

        return hook

    def _post(self, name: str):
        def hook(module: torch.nn.Module, args: Any, kwargs: Any, output: Any):
            call = module._profile_call  # type: ignore[attr-defined]
            self.forward[name] += self.now() - call["forward_start"]
            return _map_tensors(output, self._wrap(call, "start"))

        return hook

    def backward(self) -> dict[str, float]:
        """Backward seconds per group of the calls so far."""
        seconds: dict[str, float] = defaultdict(float)
        for name, call in self.calls:
            if call["end"] > call["start"]:
                seconds[name] += call["end"] - call["start"]
        return seconds

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magnet.benchmarks.profile_step",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_arguments(parser)
    parser.set_defaults(preset="small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after one warm-up step)")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = pick_device(args.device)
    threads = set_threads(args.threads)
    torch.manual_seed(args.seed)
    overrides = parse_overrides(args.override)
    config = model_config(args.preset, overrides, args.size)
    cfg = TrainConfig(
        preset=args.preset,
        model={**overrides, "image_size": config.image_size},
        grounding=True,
        batch_size=args.batch,
        amp=False,
        device=str(device),
        seed=args.seed,
    )
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    tokenizer = ExpressionTokenizer.for_model(model.config)
    loss_step = LossStep(model, cfg, tokenizer, device)
    batch = synthetic_batch(
        args.batch, config.image_size, model.config, torch.Generator().manual_seed(args.seed), device
    )
    groups = {**model_parts(model), **{name: find(model) for name, find in NESTED.items()}}
    phases: dict[str, float] = defaultdict(float)
    timer = None
    for step in range(args.steps + 1):
        if step == 1:  # the first step warms up allocators and caches
            timer = PartTimer(groups, device)
        generator = torch.Generator().manual_seed(step)
        marks = [time.perf_counter()]
        optimizer.zero_grad(set_to_none=True)
        outputs_start = time.perf_counter()
        terms = loss_step(batch, generator)
        synchronize(device)
        marks.append(time.perf_counter())
        terms["loss"].backward()
        synchronize(device)
        marks.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        optimizer.step()
        synchronize(device)
        marks.append(time.perf_counter())
        if step >= 1:
            phases["forward (with losses)"] += marks[1] - outputs_start
            phases["backward"] += marks[2] - marks[1]
            phases["clip + AdamW"] += marks[3] - marks[2]
            phases["step"] += marks[3] - marks[0]
    assert timer is not None
    timer.remove()
    n = args.steps
    backward = timer.backward()
    parts = {name: (timer.forward[name] / n, backward[name] / n) for name in groups}
    top = [name for name in parts if name not in NESTED]
    forward_other = phases["forward (with losses)"] / n - sum(parts[p][0] for p in top)
    backward_other = phases["backward"] / n - sum(parts[p][1] for p in top)
    return {
        "preset": args.preset,
        "overrides": overrides,
        "image_size": config.image_size,
        "batch": args.batch,
        "threads": threads,
        "device": str(device),
        "phases": {k: v / n for k, v in phases.items()},
        "parts": parts,
        "other": (forward_other, backward_other),
    }


def report(results: dict[str, Any]) -> str:
    step = results["phases"]["step"]
    rows = []
    for name, (fwd, bwd) in results["parts"].items():
        rows.append([name, f"{fwd * 1000:.0f}", f"{bwd * 1000:.0f}", f"{(fwd + bwd) / step * 100:.1f}"])
    fwd, bwd = results["other"]
    rows.append(
        [
            "other (text embeddings, losses, glue)",
            f"{fwd * 1000:.0f}",
            f"{bwd * 1000:.0f}",
            f"{(fwd + bwd) / step * 100:.1f}",
        ]
    )
    rows.append(["clip + AdamW", "", "", f"{results['phases']['clip + AdamW'] / step * 100:.1f}"])
    phases = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in results["phases"].items())
    header = (
        f"Training step of {results['preset']} {results['overrides'] or ''} at {results['image_size']} px, "
        f"batch {results['batch']}, {results['device']} ({results['threads']} threads): {phases}"
    )
    return header + "\n" + format_table(["part", "forward ms", "backward ms", "% of step"], rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_benchmark(build_parser(), run, report, argv)


if __name__ == "__main__":
    main()
