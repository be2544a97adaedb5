"""Does Mask Grounding help? `python -m magnet.ablation` reruns the whole ablation.

Three variants trained on the same data with the same preset, recipe and number of steps, from
one base config (default magnet/configs/synthetic-cpu.yaml), once per seed:

    seg            segmentation loss only (no Mask Grounding head, no alignment loss)
    seg+mg         + Mask Grounding (head and masked-word loss, weight 1)
    seg+mg+align   + Mask Grounding + pixel-to-pixel and pixel-to-text alignment (0.5 each)

Each run trains in this process, one after another (seed by seed, so that the first seeds give
paired comparisons early), into <out-root>/<variant>-seed<k>; an interrupted run resumes from its
last checkpoint, so after an interruption rerun the same command. A finished run is evaluated on
synthetic val, testA, testB and shifted (overall IoU per split and per expression type; with
--grounding also the grounding benchmark's expression pointing game per source) and recorded in
<out>/runs/<variant>-seed<k>.json: its settings, validation curve, speed and figures. A recorded
run is never trained again, even when its run folder is gone, so the ablation can be committed and
continued run by run across sessions (--max-runs caps how many runs one invocation trains). A run
in training holds a lock file in its folder, so ablations started side by side take different
runs. From the recorded runs, --out gets

    results.json   every figure of every run, mean ± std per variant over the seeds, and the
                   paired differences against the baseline of the same seed (same data order)
    table.md       both tables and one conclusion line per effect (also printed)
    curves.png     validation overall IoU against step, a line per run, the mean over seeds bold

An effect is "larger than the seed spread" when the mean paired difference exceeds its standard
deviation over seeds and every seed moves in the same direction; otherwise "within the seed spread".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import platform
import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import load_model
from .data.sources import DataSpec, build_dataset
from .data.synthetic import HELD_OUT_SPLITS
from .data.tokenizer import ExpressionTokenizer
from .errors import ConfigError, exit_code_of
from .evaluate import evaluate_model
from .train import TrainConfig, config_from_args, train

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    """One arm of the ablation: what it adds and the training settings that make it so."""

    description: str
    settings: dict[str, Any]  # TrainConfig fields, nested with dots as `--set` takes them


VARIANTS: dict[str, Variant] = {
    "seg": Variant(
        "segmentation loss only",
        {"grounding": False, "loss.grounding_weight": 0.0, "loss.align_p2p_weight": 0.0, "loss.align_p2t_weight": 0.0},
    ),
    "seg+mg": Variant(
        "+ Mask Grounding",
        {"grounding": True, "loss.grounding_weight": 1.0, "loss.align_p2p_weight": 0.0, "loss.align_p2t_weight": 0.0},
    ),
    "seg+mg+align": Variant(
        "+ Mask Grounding + alignment",
        {"grounding": True, "loss.grounding_weight": 1.0, "loss.align_p2p_weight": 0.5, "loss.align_p2t_weight": 0.5},
    ),
}
# (variant, baseline, the effect their difference measures); a comparison runs when both were chosen.
COMPARISONS = [
    ("seg+mg", "seg", "Mask Grounding"),
    ("seg+mg+align", "seg", "Mask Grounding + alignment"),
    ("seg+mg+align", "seg+mg", "alignment on top of Mask Grounding"),
]
# Table columns: (header, figure). Relational and ordinal expressions are testB's two types.
COLUMNS = [
    ("val", "val/overall_iou"),
    ("testA", "testA/overall_iou"),
    ("testB", "testB/overall_iou"),
    ("shifted", "shifted/overall_iou"),
    ("relational (testB)", "testB/relational/overall_iou"),
    ("ordinal (testB)", "testB/ordinal/overall_iou"),
]
CONCLUSION_FIGURES = COLUMNS[:4]
# Set by the ablation itself (flags or variants), so not through --set.
OWN_FIELDS = {"max_steps", "seed", "out_dir", "time_budget_s", "resume", "eval_every", "save_every"}
# Fields that do not change the trained weights: a recorded run may differ from the plan in these.
WEIGHT_NEUTRAL_FIELDS = {"resume", "eval_every", "save_every", "keep_last", "log_every", "num_workers", "out_dir"}


# ----------------------------------------------------------------------------- the runs
def run_config(
    config: Path, variant: str, seed: int, steps: int | None, out_root: Path, every: tuple[int, int], sets: list[str]
) -> TrainConfig:
    """The TrainConfig of one run: the base YAML read as `python -m magnet train --config` reads it,
    the user's --set items, then the run's own step count, seed, folder and the variant's losses."""
    eval_every, save_every = every
    argv = ["--config", str(config), "--time-budget-s", "0", "--seed", str(seed), "--resume"]
    argv += ["--out-dir", str(run_dir(out_root, variant, seed))]
    argv += ["--eval-every", str(eval_every), "--save-every", str(save_every)]
    if steps is not None:
        argv += ["--max-steps", str(steps)]
    for item in sets:
        argv += ["--set", item]
    for key, value in VARIANTS[variant].settings.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]  # JSON literals are YAML: false, 0.5
    return config_from_args(argv)


def run_name(variant: str, seed: int) -> str:
    """How a run is called in logs, messages, its folder and its record: "seg+mg-seed0"."""
    return f"{variant}-seed{seed}"


def run_dir(out_root: Path, variant: str, seed: int) -> Path:
    return out_root / run_name(variant, seed)


def record_path(out: Path, variant: str, seed: int) -> Path:
    return out / "runs" / f"{run_name(variant, seed)}.json"


def read_metrics(out: Path) -> list[dict[str, Any]]:
    """The rows of a run's metrics.jsonl, one per step and kind (a resumed run rewrites the steps
    after its last checkpoint: the later row wins)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows: dict[tuple[int, bool], dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["step"], "val_overall_iou" in row] = row
    return sorted(rows.values(), key=lambda r: r["step"])


def is_finished(cfg: TrainConfig) -> bool:
    """The run folder holds last.safetensors and metrics at the final step."""
    out = Path(cfg.out_dir)
    return (out / "last.safetensors").exists() and any(r["step"] == cfg.max_steps for r in read_metrics(out))


def config_as_json(cfg: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def changed_settings(before: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """The fields that change the trained weights and differ between a recorded config and cfg."""
    now = config_as_json(cfg)
    return sorted(k for k in (now.keys() | before.keys()) - WEIGHT_NEUTRAL_FIELDS if before.get(k) != now.get(k))


def check_run_folder(cfg: TrainConfig) -> None:
    """A run folder that holds a run of other settings is not reused: its results would be mixed
    with the new ones."""
    path = Path(cfg.out_dir) / "config.json"
    changed = changed_settings(json.loads(path.read_text()), cfg) if path.exists() else []
    if changed:
        raise ConfigError(
            f"{cfg.out_dir} holds a run with other settings ({', '.join(changed)}); "
            "remove that folder or pass another --out-root"
        )


def read_record(path: Path, cfg: TrainConfig) -> dict[str, Any] | None:
    """The recorded run at path (None when there is none), checked against the planned settings."""
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    changed = changed_settings(record["config"], cfg)
    if changed:
        raise ConfigError(
            f"{path} records a run with other settings ({', '.join(changed)}); "
            "delete that file to train the run again, or pass another --out"
        )
    return record


def new_record(variant: str, seed: int, cfg: TrainConfig) -> dict[str, Any]:
    """What a finished run leaves for the report, before evaluation: settings, validation curve and
    the speed it trained at (median seconds per step between logged rows, robust to a resume)."""
    rows = read_metrics(Path(cfg.out_dir))
    train_rows = [r for r in rows if "val_overall_iou" not in r and "time" in r]
    pace = [
        (b["time"] - a["time"]) / (b["step"] - a["step"])
        for a, b in zip(train_rows, train_rows[1:])
        if b["time"] > a["time"]  # a resumed process counts time from zero again
    ]
    return {
        "variant": variant,
        "seed": seed,
        "config": config_as_json(cfg),
        "curve": [{"step": r["step"], "val_overall_iou": r["val_overall_iou"]} for r in rows if "val_overall_iou" in r],
        "seconds_per_step": round(statistics.median(pace), 3) if pace else None,
        "trained_on": machine_description(cfg.device),
        "evaluation": {},
    }


def machine_description(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


@contextlib.contextmanager
def claim(folder: Path) -> Iterator[bool]:
    """Holds folder's lock file while the block runs -> whether this process got it. Two ablations
    started side by side (e.g. one per CPU core) so split the runs between them; a lock left by a
    process that died is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "ablation.lock"
    try:
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        if _holder_alive(lock):
            yield False
            return
        lock.unlink(missing_ok=True)
        descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(descriptor, "w") as file:
        file.write(str(os.getpid()))
    try:
        yield True
    finally:
        lock.unlink(missing_ok=True)


def _holder_alive(lock: Path) -> bool:
    try:
        pid = int(lock.read_text())
    except (ValueError, FileNotFoundError):
        return True  # being written this instant, or just released: leave the run to the other process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_record(
    path: Path, record: dict[str, Any], cfg: TrainConfig, eval_limit: int, grounding_scenes: int | None
) -> None:
    """Evaluates what the record lacks and, if anything was measured, writes it to path."""
    if evaluate_record(record, cfg, eval_limit, grounding_scenes):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
        log.info("%s evaluated, recorded in %s", run_name(record["variant"], record["seed"]), path)


# ----------------------------------------------------------------------------- evaluation
def evaluate_record(record: dict[str, Any], cfg: TrainConfig, eval_limit: int, grounding_scenes: int | None) -> bool:
    """Fills record["evaluation"] with what it lacks -> whether anything was measured: IoU metrics
    per split ({split: evaluate_model's summary}) and, when grounding_scenes is given, the
    expression pointing game per grounding source. Measuring needs the run's last.safetensors."""
    evaluation = record["evaluation"]
    needs_iou = evaluation.get("iou", {}).get("eval_limit") != eval_limit
    needs_grounding = bool(grounding_scenes) and evaluation.get("grounding", {}).get("scenes") != grounding_scenes
    if not (needs_iou or needs_grounding):
        return False
    weights = Path(cfg.out_dir) / "last.safetensors"
    if not is_finished(cfg):
        measured = evaluation.get("iou", {}).get("eval_limit")
        raise ConfigError(
            f"{run_name(record['variant'], record['seed'])} is recorded without this evaluation and its weights are "
            f"not in {cfg.out_dir}: pass --eval-limit {measured} (and no --grounding) to report what was "
            "measured, or delete its record to train it again"
        )
    model = load_model(weights, device=cfg.device)
    if needs_iou:
        tokenizer = ExpressionTokenizer.for_model(model.config)
        spec = DataSpec(path="synthetic", synthetic_val_scenes=eval_limit, synthetic_seed=cfg.data.synthetic_seed)
        splits = {}
        for split in HELD_OUT_SPLITS:
            dataset, _ = build_dataset(
                spec, split, model.config.image_size, tokenizer, limit=eval_limit, keep_aspect=model.config.keep_aspect
            )
            splits[split] = evaluate_model(
                model, dataset, batch_size=cfg.batch_size, device=model.device, progress=False
            )
        evaluation["iou"] = {"eval_limit": eval_limit, "splits": splits}
    if needs_grounding:
        from .grounding_eval import evaluate_grounding
        from .predictor import MagNetPredictor

        benchmark = evaluate_grounding(
            MagNetPredictor(model, device=cfg.device),
            ["testA", "testB"],
            grounding_scenes,
            seed=cfg.data.synthetic_seed,
            progress=False,
        )
        expression = {source: table["expression"] for source, table in benchmark["sources"].items()}
        evaluation["grounding"] = {"scenes": grounding_scenes, "expression": expression}
    return True


def run_figures(evaluation: dict[str, Any], with_grounding: bool) -> dict[str, float]:
    """The figures compared across runs, by name: "<split>/overall_iou",
    "<split>/<type>/overall_iou" and (with_grounding) "grounding/<source>/expression"."""
    figures = {}
    for split, metrics in evaluation["iou"]["splits"].items():
        figures[f"{split}/overall_iou"] = metrics["overall_iou"]
        for kind, sub in metrics.get("by_type", {}).items():
            figures[f"{split}/{kind}/overall_iou"] = sub["overall_iou"]
    if with_grounding:
        for source, percent in evaluation["grounding"]["expression"].items():
            figures[f"grounding/{source}/expression"] = percent
    return figures


# ----------------------------------------------------------------------------- statistics
def mean_std(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (None for a single value) of a list of figures."""
    return {
        "mean": statistics.mean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def summarise(runs: list[dict[str, Any]], variant: str) -> dict[str, dict[str, Any]]:
    """Per figure of a variant: mean ± std over its seeds."""
    mine = [r["figures"] for r in runs if r["variant"] == variant]
    names = sorted({name for figures in mine for name in figures})
    return {name: mean_std([f[name] for f in mine if name in f]) for name in names}


def paired_differences(runs: list[dict[str, Any]], variant: str, baseline: str) -> dict[str, dict[str, Any]]:
    """Per figure: variant - baseline for each seed both have, their mean ± std, and how many of
    those seeds favour the variant (a higher figure)."""
    ours = {r["seed"]: r["figures"] for r in runs if r["variant"] == variant}
    theirs = {r["seed"]: r["figures"] for r in runs if r["variant"] == baseline}
    seeds = sorted(ours.keys() & theirs.keys())
    names = sorted({name for s in seeds for name in ours[s].keys() & theirs[s].keys()})
    result = {}
    for name in names:
        differences = {s: ours[s][name] - theirs[s][name] for s in seeds if name in ours[s] and name in theirs[s]}
        result[name] = {
            "differences": {str(s): d for s, d in differences.items()},
            **mean_std(list(differences.values())),
            "seeds_favouring": sum(d > 0 for d in differences.values()),
        }
    return result


def verdict(paired: dict[str, Any]) -> str:
    """Whether a paired difference stands out from the spread between seeds, in plain words."""
    differences = list(paired["differences"].values())
    if paired["std"] is None:
        return "a single seed, no spread to compare with"
    same_direction = all(d > 0 for d in differences) or all(d < 0 for d in differences)
    if abs(paired["mean"]) > paired["std"] and same_direction:
        return "larger than the seed spread"
    return "within the seed spread"


def conclusion(effect: str, variant: str, baseline: str, paired: dict[str, dict[str, Any]]) -> str:
    """One line: the effect's paired difference on each split's overall IoU and its verdict."""
    parts = []
    for header, name in CONCLUSION_FIGURES:
        if name in paired:
            p = paired[name]
            parts.append(
                f"{header} {p['mean']:+.2f}{_pm(p['std'])} ({p['seeds_favouring']} of {p['n']} seeds better), "
                f"{verdict(p)}"
            )
    return f"{effect} ({variant} vs {baseline}), overall IoU: " + "; ".join(parts) + "."


# ----------------------------------------------------------------------------- report
def _pm(std: float | None) -> str:
    return "" if std is None else f" ± {std:.2f}"


def _cell(stats: dict[str, Any] | None) -> str:
    return "-" if stats is None else f"{stats['mean']:.2f}{_pm(stats['std'])}"


def format_report(results: dict[str, Any]) -> str:
    """table.md: overall IoU per variant, the grounding pointing game when measured, the paired
    differences and the conclusions."""
    settings, summary = results["settings"], results["summary"]
    planned = ", ".join(str(s) for s in settings["seeds"])
    complete = len(results["runs"]) == len(settings["variants"]) * len(settings["seeds"])  # one run per pair
    over = f"seeds {planned}" if complete else f"the seeds run so far (planned: {planned})"
    headers = [h for h, _ in COLUMNS]
    lines = [
        f"Overall IoU (%) after {settings['steps']} training steps, on {settings['eval_limit']} synthetic scenes "
        f"per split: mean ± std over {over}.",
        "",
        f"Trained on {', '.join(sorted({r['trained_on'] for r in results['runs']})) or 'nothing yet'}.",
        "",
        "| variant | seeds | s/step | " + " | ".join(headers) + " |",
        "|---" * (len(headers) + 3) + "|",
    ]
    for variant in settings["variants"]:
        seeds = ", ".join(str(r["seed"]) for r in results["runs"] if r["variant"] == variant) or "none yet"
        cells = [_cell(summary[variant].get(name)) for _, name in COLUMNS]
        paces = [r["seconds_per_step"] for r in results["runs"] if r["variant"] == variant and r["seconds_per_step"]]
        pace = f"{statistics.median(paces):.2f}" if paces else "-"
        lines.append(f"| {variant} ({VARIANTS[variant].description}) | {seeds} | {pace} | " + " | ".join(cells) + " |")
    sources = sorted({n.split("/")[1] for v in summary.values() for n in v if n.startswith("grounding/")})
    if sources:
        lines += [
            "",
            f"Expression pointing game (%) per grounding source, on {settings['grounding_scenes']} held-out "
            "scenes each of testA and testB: mean ± std over seeds.",
            "",
            "| variant | " + " | ".join(sources) + " |",
            "|---" * (len(sources) + 1) + "|",
        ]
        for variant in settings["variants"]:
            cells = [_cell(summary[variant].get(f"grounding/{s}/expression")) for s in sources]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    if results["paired"]:
        lines += [
            "",
            "Paired differences (variant - baseline, the same seed and data order): mean ± std over seeds "
            "(seeds favouring the variant).",
            "",
            "| comparison | " + " | ".join(headers) + " |",
            "|---" * (len(headers) + 1) + "|",
        ]
        for comparison, paired in results["paired"].items():
            cells = []
            for _, name in COLUMNS:
                p = paired["figures"].get(name)
                cells.append("-" if p is None else f"{p['mean']:+.2f}{_pm(p['std'])} ({p['seeds_favouring']}/{p['n']})")
            lines.append(f"| {comparison} | " + " | ".join(cells) + " |")
        lines += ["", *(f"- {line}" for line in results["conclusions"])]
    return "\n".join(lines) + "\n"


def plot_curves(runs: list[dict[str, Any]], variants: list[str], path: Path) -> None:
    """Validation overall IoU against step: a colour per variant, a thin line per seed, the mean
    over seeds (at the steps every seed has) in bold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for k, variant in enumerate(variants):
        colour = f"C{k}"
        curves = []
        for run in (r for r in runs if r["variant"] == variant):
            curve = {point["step"]: point["val_overall_iou"] for point in run["curve"]}
            curves.append(curve)
            ax.plot(list(curve), list(curve.values()), color=colour, alpha=0.35, linewidth=1)
        common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        mean = [statistics.mean(c[s] for c in curves) for s in common]
        if curves:
            ax.plot(
                common,
                mean,
                color=colour,
                linewidth=2.5,
                label=f"{variant} (mean of {len(curves)} seed{'s' if len(curves) > 1 else ''})",
            )
    ax.set_xlabel("step"), ax.set_ylabel("validation overall IoU (%)"), ax.grid(alpha=0.3)
    ax.set_title("Mask Grounding ablation: a thin line per seed, the mean in bold")
    if runs:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magnet.ablation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path("magnet/configs/synthetic-cpu.yaml"),
        help="base training YAML shared by every run (default: %(default)s)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps of every run (default: the config's max_steps)"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="K", help="seeds to run (default: 0 1 2)"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=list(VARIANTS),
        metavar="NAME",
        help=f"variants to run, out of {', '.join(VARIANTS)} (default: all three)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training field of every run, nested with dots: --set batch_size=8",
    )
    parser.add_argument(
        "--out-root", type=Path, default=Path("runs/ablation"), help="run folders go here (default: %(default)s)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("assets/ablation"),
        help="the run records (runs/*.json), results.json, table.md, curves.png (default: %(default)s)",
    )
    parser.add_argument(
        "--eval-every", type=int, default=250, help="validate every N steps, for the curves (default: %(default)s)"
    )
    parser.add_argument(
        "--save-every", type=int, default=250, help="write a resumable checkpoint every N steps (default: %(default)s)"
    )
    parser.add_argument(
        "--eval-limit", type=int, default=300, help="scenes per evaluation split (default: %(default)s)"
    )
    parser.add_argument(
        "--max-runs",
        type=int,
        default=None,
        metavar="N",
        help="train at most N missing runs this time, then report on the recorded ones (default: all; 0 reports only)",
    )
    parser.add_argument(
        "--grounding", action="store_true", help="also run the grounding benchmark (slow): expression pointing game"
    )
    parser.add_argument(
        "--grounding-scenes",
        type=int,
        default=50,
        help="held-out scenes of testA and of testB for --grounding (default: %(default)s)",
    )
    return parser


def check_arguments(args: argparse.Namespace) -> None:
    """Every mistake that can be caught before the first run, with the fix in the message."""
    if not args.config.is_file():
        raise ConfigError(
            f"config file {args.config} not found; pass --config with a training YAML "
            "(the default one is found from the repository root)"
        )
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant {', '.join(map(repr, unknown))}; choose among {', '.join(VARIANTS)}")
    for name in ("steps", "eval_every", "save_every", "eval_limit", "grounding_scenes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.max_runs is not None and args.max_runs < 0:
        raise ConfigError(f"--max-runs must be 0 or more, got {args.max_runs}")
    for item in args.set:
        key = item.partition("=")[0]
        if key in OWN_FIELDS or key in VARIANTS["seg"].settings:
            raise ConfigError(f"--set {key}: the ablation sets this field itself (see --help)")


def run_ablation(args: argparse.Namespace) -> dict[str, Any]:
    """Trains and records the runs that are missing (at most args.max_runs), then writes
    results.json, table.md and curves.png from every recorded run to args.out -> the results."""
    check_arguments(args)
    variants = list(dict.fromkeys(args.variants))
    seeds = list(dict.fromkeys(args.seeds))
    every = (args.eval_every, args.save_every)
    plan = [
        (v, s, run_config(args.config, v, s, args.steps, args.out_root, every, args.set))
        for s in seeds
        for v in variants
    ]
    records = {}
    for variant, seed, cfg in plan:
        check_run_folder(cfg)
        records[variant, seed] = read_record(record_path(args.out, variant, seed), cfg)
    grounding_scenes = args.grounding_scenes if args.grounding else None
    runs, trained = [], 0
    for k, (variant, seed, cfg) in enumerate(plan, 1):
        name, path = run_name(variant, seed), record_path(args.out, variant, seed)
        record = records[variant, seed]
        if record is None:
            if args.max_runs is not None and trained >= args.max_runs and not is_finished(cfg):
                log.info("run %d of %d: %s left for later (--max-runs %d)", k, len(plan), name, args.max_runs)
                continue
            with claim(Path(cfg.out_dir)) as mine:
                if not mine:
                    log.info("run %d of %d: %s is being trained by another process, skipped", k, len(plan), name)
                    continue
                if not is_finished(cfg):
                    log.info("run %d of %d: %s, %d steps -> %s", k, len(plan), name, cfg.max_steps, cfg.out_dir)
                    train(cfg)
                    trained += 1
                record = new_record(variant, seed, cfg)
                write_record(path, record, cfg, args.eval_limit, grounding_scenes)
        else:
            write_record(path, record, cfg, args.eval_limit, grounding_scenes)
        runs.append({**record, "figures": run_figures(record["evaluation"], grounding_scenes is not None)})
    paired, conclusions = {}, []
    for variant, baseline, effect in COMPARISONS:
        if variant in variants and baseline in variants:
            figures = paired_differences(runs, variant, baseline)
            if figures:  # some seed has both
                paired[f"{variant} vs {baseline}"] = {"effect": effect, "figures": figures}
                conclusions.append(conclusion(effect, variant, baseline, figures))
    results = {
        "settings": {
            "config": str(args.config),
            "steps": plan[0][2].max_steps,
            "seeds": seeds,
            "variants": variants,
            "set": args.set,
            "eval_splits": list(HELD_OUT_SPLITS),
            "eval_limit": args.eval_limit,
            "grounding_scenes": grounding_scenes,
        },
        "variant_settings": {v: dataclasses.asdict(VARIANTS[v]) for v in variants},
        "runs": runs,
        "summary": {v: summarise(runs, v) for v in variants},
        "paired": paired,
        "conclusions": conclusions,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "table.md").write_text(format_report(results))
    plot_curves(runs, variants, args.out / "curves.png")
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)

    def run() -> int:
        run_ablation(args)
        return 0

    code = exit_code_of(run, "interrupted: rerun the same command to resume")
    if code:
        return code
    print((args.out / "table.md").read_text(), end="")
    print(f"wrote {args.out / 'results.json'}, {args.out / 'table.md'} and {args.out / 'curves.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
