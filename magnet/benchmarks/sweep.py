"""Choosing the CPU preset by learning curves: every candidate trained for the same CPU budget.

    python -m magnet.benchmarks.sweep measure --out assets/benchmarks/sweep-cpu-steps.json
    python -m magnet.benchmarks.sweep run --steps-from assets/benchmarks/sweep-cpu-steps.json --out runs/sweep
    python -m magnet.benchmarks.sweep plot runs/sweep --steps-from assets/benchmarks/sweep-cpu-steps.json \
        --figure assets/benchmarks/preset-sweep.png

`measure` times each candidate's training step on this machine (`magnet.benchmarks.training`:
the real step, Mask Grounding head and every loss included). `run` trains each run of RUNS for
the number of steps that its candidate's measured CPU step time fits into the budget
(--budget-min, 15 by default; a run's `budget` scales it), on any device, several at a time:
learning per step does not depend on the device, so a GPU can run the CPU budgets side by side
while the x axis stays CPU minutes. `plot` draws validation overall IoU against CPU minutes and
prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import format_table

LEAN_HEAD = {"head_dim": 64, "head_heads": 4, "pixel_encoder_layers": 1, "decoder_layers": 2}


@dataclass(frozen=True)
class Candidate:
    """A model: a preset plus overrides of its fields, trained at `batch_size`."""

    preset: str
    model: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 16


CANDIDATES: dict[str, Candidate] = {
    "small-256": Candidate("small", {"image_size": 256}, batch_size=8),
    "small-128": Candidate("small", {"image_size": 128}),
    "lean-head-128": Candidate("small", {"image_size": 128, **LEAN_HEAD}),
    "lean-head-shallow-swin-128": Candidate(
        "small", {"image_size": 128, **LEAN_HEAD, "embed_dim": 32, "depths": (1, 1, 2, 1)}
    ),
    "lean-head-wide-swin-128": Candidate(
        "small", {"image_size": 128, **LEAN_HEAD, "embed_dim": 48, "num_heads": (2, 4, 8, 16)}
    ),
    "head-96-128": Candidate(
        "small", {"image_size": 128, **LEAN_HEAD, "head_dim": 96, "pixel_encoder_ffn": 384, "decoder_ffn": 384}
    ),
    "head-128-128": Candidate("small", {"image_size": 128, **LEAN_HEAD, "head_dim": 128}),
    "head-96-96": Candidate(
        "small", {"image_size": 96, **LEAN_HEAD, "head_dim": 96, "pixel_encoder_ffn": 384, "decoder_ffn": 384}
    ),
}

# The shared recipe: AdamW with linear warm-up and poly decay to the end of the budget, expression
# types balanced, horizontal flips, fp32.
RECIPE: dict[str, Any] = {"lr": 5e-4, "warmup_steps": 50, "data.synthetic_balance_types": True}


@dataclass(frozen=True)
class Run:
    candidate: str
    recipe: dict[str, Any] = field(default_factory=dict)  # overrides of RECIPE
    budget: float = 1.0  # times --budget-min
    batch_size: int | None = None


RUNS: dict[str, Run] = {
    **{name: Run(name) for name in CANDIDATES},
    "lean-head-128 lr 1e-3": Run("lean-head-128", {"lr": 1e-3}),
    "lean-head-128 lr 2e-4": Run("lean-head-128", {"lr": 2e-4}),
    "lean-head-128 types unbalanced": Run("lean-head-128", {"data.synthetic_balance_types": False}),
    "lean-head-128 batch 32": Run("lean-head-128", batch_size=32),
    "head-96-128 no alignment": Run("head-96-128", {"loss.align_p2p_weight": 0, "loss.align_p2t_weight": 0}),
    "head-96-128 no alignment, no grounding": Run(
        "head-96-128", {"loss.align_p2p_weight": 0, "loss.align_p2t_weight": 0, "loss.grounding_weight": 0}
    ),
    "lean-head-128 x4": Run("lean-head-128", budget=4.0),
    "head-96-128 x4": Run("head-96-128", budget=4.0),
    "lean-head-128 x10": Run("lean-head-128", budget=10.0),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in name)


def measure(args: argparse.Namespace) -> None:
    """CPU seconds per training step of each candidate (and of batch 32 where a run asks for it)."""
    from .training import build_parser as training_parser
    from .training import run as training_run

    wanted = {
        (run.candidate, run.batch_size or CANDIDATES[run.candidate].batch_size)
        for run in RUNS.values()
        if not args.only or run.candidate in args.only
    }
    out = Path(args.out)
    results: dict[str, float] = json.loads(out.read_text())["step_s"] if out.exists() else {}
    for name, batch in sorted(wanted):
        candidate = CANDIDATES[name]
        argv = ["--preset", candidate.preset, "--device", "cpu", "--batch", str(batch), "--steps", str(args.steps)]
        for key, value in candidate.model.items():
            argv += ["--override", f"{key}={value!r}"]
        figures = training_run(training_parser().parse_args(argv))
        results[f"{name}@{batch}"] = figures["median_step_s"]
        print(f"{name} batch {batch}: {figures['median_step_s']:.3f} s per step", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"threads": figures["threads"], "device": figures["device_name"], "step_s": results}, indent=2)
    )


def run_plan(step_times: dict[str, float], budget_min: float, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per run: batch, steps and the `python -m magnet train` flags."""
    plan = {}
    for name in names:
        run = RUNS[name]
        candidate = CANDIDATES[run.candidate]
        batch = run.batch_size or candidate.batch_size
        step_s = step_times[f"{run.candidate}@{batch}"]
        steps = int(budget_min * run.budget * 60 / step_s)
        recipe = {**RECIPE, **run.recipe}
        sets = [f"model.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in candidate.model.items()]
        sets += [f"{k}={v}" for k, v in recipe.items()]
        flags = [
            "--config",
            "magnet/configs/small-synthetic.yaml",
            "--preset",
            candidate.preset,
            "--batch-size",
            str(batch),
            "--max-steps",
            str(steps),
            "--eval-every",
            str(max(10, steps // 8)),
            "--save-every",
            str(10**9),
            "--max-val-samples",
            "300",
            "--no-amp",
            "--num-workers",
            "0",
            "--time-budget-s",
            "0",
            "--log-every",
            "10",
        ]
        for item in sets:
            flags += ["--set", item]
        plan[name] = {"batch": batch, "steps": steps, "cpu_step_s": step_s, "flags": flags}
    return plan


def run(args: argparse.Namespace) -> None:
    step_times = json.loads(Path(args.steps_from).read_text())["step_s"]
    names = args.only or list(RUNS)
    plan = run_plan(step_times, args.budget_min, names)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(plan, indent=2))
    pending = list(plan)
    running: dict[str, subprocess.Popen] = {}
    started = time.time()
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            folder = out / slug(name)
            flags = (
                plan[name]["flags"] + ["--out-dir", str(folder)] + (["--device", args.device] if args.device else [])
            )
            folder.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
            with (folder / "log.txt").open("w") as log:
                running[name] = subprocess.Popen(
                    [sys.executable, "-m", "magnet", "train", *flags], stdout=log, stderr=subprocess.STDOUT, env=env
                )
            print(f"started {name}: {plan[name]['steps']} steps at batch {plan[name]['batch']}", flush=True)
        for name, process in list(running.items()):
            if process.poll() is not None:
                print(f"finished {name} (exit {process.returncode}) after {time.time() - started:.0f} s", flush=True)
                del running[name]
        if args.time_limit and time.time() - started > args.time_limit:
            for name, process in running.items():
                process.terminate()
                print(f"stopped {name} at the time limit", flush=True)
            break
        time.sleep(2)


def load_curves(folder: Path, plan: dict[str, dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Run name -> [(CPU minutes, validation overall IoU)]."""
    curves = {}
    for name, entry in plan.items():
        path = folder / slug(name) / "metrics.jsonl"
        if not path.exists():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        curves[name] = [
            (r["step"] * entry["cpu_step_s"] / 60, r["val_overall_iou"]) for r in rows if "val_overall_iou" in r
        ]
    return curves


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(args.folder)
    step_times = json.loads(Path(args.steps_from).read_text())["step_s"]
    plan = run_plan(step_times, args.budget_min, list(RUNS))
    curves = load_curves(folder, plan)
    rows = []
    panels = {
        "models": "candidates, same CPU budget",
        "recipe": "recipe and loss variants, same budget",
        "longer": "longer budgets",
    }
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    for name, points in curves.items():
        if not points:
            continue
        entry, spec = plan[name], RUNS[name]
        panel = "longer" if spec.budget > 1 else "recipe" if spec.recipe or spec.batch_size else "models"
        ax = axes[list(panels).index(panel)]
        ax.plot(*zip(*points), marker="o", markersize=3, label=name)
        finished = points[-1][0] >= entry["steps"] * entry["cpu_step_s"] / 60 - 1e-6
        rows.append(
            [
                name,
                entry["batch"],
                f"{entry['cpu_step_s']:.2f}",
                f"{entry['batch'] / entry['cpu_step_s']:.1f}",
                entry["steps"],
                f"{points[-1][0]:.0f}" + ("" if finished else " (stopped)"),
                f"{max(v for _, v in points):.1f}",
                f"{points[-1][1]:.1f}",
            ]
        )
    for run_dir in args.cpu_run or []:
        metrics = Path(run_dir) / "metrics.jsonl"
        config = json.loads((Path(run_dir) / "config.json").read_text())
        key = f"{args.cpu_run_candidate}@{config['batch_size']}"
        points = [
            (json.loads(line)["step"] * step_times[key] / 60, json.loads(line)["val_overall_iou"])
            for line in metrics.read_text().splitlines()
            if "val_overall_iou" in line
        ]
        axes[2].plot(*zip(*points), marker="s", markersize=4, color="black", label=f"{Path(run_dir).name} (on the CPU)")
    for ax, title in zip(axes, panels.values()):
        ax.set_xlabel("CPU minutes (2 cores: measured step time x steps)")
        ax.set_ylabel("validation overall IoU (300 scenes)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=90)
    table = format_table(
        ["run", "batch", "CPU s/step", "samples/s", "steps", "CPU min", "best val oIoU", "last val oIoU"], rows
    )
    print(table)
    if args.table:
        Path(args.table).write_text(table + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m magnet.benchmarks.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("measure", help="CPU seconds per training step of each candidate")
    p.add_argument("--out", required=True, help="JSON file for the step times")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--only", action="append", help="measure only these candidates (repeat); the file keeps the others")
    p.set_defaults(func=measure)
    p = commands.add_parser("run", help="train every run for its CPU budget")
    p.add_argument("--steps-from", required=True, help="the JSON file `measure` wrote")
    p.add_argument("--out", required=True, help="folder for the runs")
    p.add_argument("--budget-min", type=float, default=15.0, help="CPU minutes per run (times the run's budget)")
    p.add_argument("--only", action="append", help="run only these (repeat)")
    p.add_argument("--device", default=None, help="device of the runs (default: cuda if available)")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time")
    p.add_argument("--threads", type=int, default=2, help="CPU threads per run")
    p.add_argument("--time-limit", type=float, default=0, help="stop every run after this many seconds (0: none)")
    p.set_defaults(func=run)
    p = commands.add_parser("plot", help="figure and table of the runs")
    p.add_argument("folder")
    p.add_argument("--steps-from", required=True, help="the JSON file `measure` wrote")
    p.add_argument("--budget-min", type=float, default=15.0, help="as given to `run`")
    p.add_argument("--figure", required=True)
    p.add_argument("--table", default=None, help="also write the table to this file")
    p.add_argument("--cpu-run", action="append", help="a training run's folder to draw in the longer panel")
    p.add_argument("--cpu-run-candidate", default="head-96-96", help="the candidate whose step time places it")
    p.set_defaults(func=plot)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
