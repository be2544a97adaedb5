"""How fast does a Swin backbone learn the shapes of the synthetic scenes? A benchmark for
choosing the default model's backbone.

    python -m magnet.benchmarks.shape_learning --seconds 240
    python -m magnet.benchmarks.shape_learning --candidate "patch 2=patch_size=2" --checkpoint C

The default model misses objects of another shape (model card, "Where it goes wrong"), and its
Swin features hold almost no shape; a training stage of two hours is too slow a way to find out
whether another backbone would. Here each candidate backbone (the Swin stages of a MagNet
configuration, without the text fusion) learns to name each object's shape directly: its stage
outputs are averaged over each object's pixels, one linear classifier per stage predicts the shape
(six classes, cross-entropy summed over the stages), and the backbone and classifiers train
together with AdamW on the same pre-drawn training scenes for the same CPU time. The figure is the
shape accuracy on held-out validation scenes along the way (the best stage, and each stage at the
end). A backbone that cannot learn shape here in minutes will not learn it from the referring loss
in a stage.

Candidates are `--candidate "NAME=KEY=VALUE[;KEY=VALUE...]"` overrides of `--preset`
(`synthetic-cpu` by default; values as in `--override` of the other benchmarks) at `--size`;
`--checkpoint` adds the checkpoint's own Swin with its trained weights.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import MagNetConfig
from ..data.synthetic.scenes import SHAPES
from ..losses import class_readout, object_features, object_masks
from ..modeling import MagNet
from ..modeling.backbone import merge_patches, run_swin_blocks
from . import add_common_arguments, format_table, model_config, parse_overrides, run_benchmark, set_threads

DEFAULT_CANDIDATES = (
    "as is=",
    "patch 2=patch_size=2",
    "window 12=window_size=12",
    "wider=embed_dim=48;num_heads=(2,4,8,16)",
)


@dataclass
class ShapeBatch:
    """Normalised images (B, 3, S, S), their label maps (B, S, S) (0 background, k object k) and
    each object's shape (B, K) (-1: no object k + 1)."""

    images: torch.Tensor
    objects: torch.Tensor
    shapes: torch.Tensor

    def known(self) -> torch.Tensor:
        """The shapes of the objects, in the order of the readers' logits."""
        return self.shapes[self.shapes >= 0]


class ShapeReader(nn.Module):
    """A MagNet's Swin stages without the fusion, reading each object's shape from its mean stage
    output: through a learned linear classifier per stage, or (`fixed`) through the fixed readout
    of the object-class training loss (`magnet.losses.class_readout`)."""

    def __init__(self, model: MagNet, fixed: bool = False) -> None:
        super().__init__()
        self.patch_embed = model.vision.patch_embed
        self.blocks = nn.ModuleList(stage.blocks for stage in model.vision.layers)
        self.downsample = nn.ModuleList(stage.downsample or nn.Identity() for stage in model.vision.layers)
        dims = model.config.stage_dims()
        self.readouts = [class_readout(d, len(SHAPES)) for d in dims] if fixed else None
        self.classifiers = None if fixed else nn.ModuleList(nn.Linear(d, len(SHAPES)) for d in dims)

    def forward(self, batch: ShapeBatch) -> list[torch.Tensor]:
        """Shape logits (N, 6) of the N objects of the batch, one tensor per stage."""
        visual, size = self.patch_embed(batch.images)
        masks = object_masks(batch.objects, batch.shapes.shape[1])  # once for every stage
        logits = []
        for n, (blocks, downsample) in enumerate(zip(self.blocks, self.downsample)):
            visual = run_swin_blocks(blocks, visual, size)
            maps = visual.transpose(1, 2).reshape(visual.shape[0], -1, *size)
            pooled = object_features(maps, masks)[0][batch.shapes >= 0]
            logits.append(self.classifiers[n](pooled) if self.readouts is None else pooled @ self.readouts[n])
            if not isinstance(downsample, nn.Identity):
                visual, size = merge_patches(downsample, visual, size)
        return logits


def draw_batches(split: str, scenes: int, per_batch: int, size: int, seed: int) -> list[ShapeBatch]:
    """The scenes of a synthetic split as batches of `per_batch` images at `size` px."""
    from PIL import Image

    from ..data.synthetic.splits import draw_split_scene
    from ..data.transforms import preprocess_image, resize_mask

    batches = []
    for start in range(0, scenes, per_batch):
        images, objects, shapes = [], [], []
        for index in range(start, min(start + per_batch, scenes)):
            scene, _, image, labels = draw_split_scene(split, index, seed)  # drawn at 256 px, as in training
            images.append(preprocess_image(Image.fromarray(image), size))
            objects.append(torch.from_numpy(resize_mask(labels, size).copy()))
            shapes.append([SHAPES.index(obj.shape) for obj in scene.objects])
        slots = max(len(row) for row in shapes)
        padded = torch.tensor([row + [-1] * (slots - len(row)) for row in shapes])
        batches.append(ShapeBatch(torch.stack(images), torch.stack(objects), padded))
    return batches


@torch.no_grad()
def accuracy(reader: ShapeReader, batches: Sequence[ShapeBatch]) -> list[float]:
    """Percent of held-out objects whose shape each stage's classifier names."""
    reader.eval()
    right = torch.zeros(len(reader.blocks))
    total = 0
    for batch in batches:
        for n, logits in enumerate(reader(batch)):
            right[n] += (logits.argmax(1) == batch.known()).sum()
        total += len(batch.known())
    reader.train()
    return (100 * right / max(total, 1)).tolist()


def learn_shapes(
    model: MagNet,
    train: Sequence[ShapeBatch],
    val: Sequence[ShapeBatch],
    seconds: float,
    lr: float,
    readings: int,
    fixed: bool = False,
) -> dict[str, Any]:
    """Trains the reader of `model` for `seconds` of step time; held-out accuracy `readings` times
    along the way (evaluation time not counted)."""
    reader = ShapeReader(model, fixed).train()
    optimizer = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=0.05)
    warmup = 20
    curve, steps, spent = [], 0, 0.0
    marks = [seconds * (k + 1) / readings for k in range(readings)]
    while marks:
        start = time.perf_counter()
        batch = train[steps % len(train)]
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (steps + 1) / warmup)
        loss = sum(F.cross_entropy(logits, batch.known()) for logits in reader(batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
        spent += time.perf_counter() - start
        if spent >= marks[0]:
            marks.pop(0)
            stages = accuracy(reader, val)
            curve.append({"seconds": round(spent, 1), "steps": steps, "best": max(stages), "stages": stages})
    return {"curve": curve, "seconds_per_step": spent / steps, "parameters": count_parameters(reader)}


def count_parameters(reader: ShapeReader) -> int:
    return sum(p.numel() for name, p in reader.named_parameters() if not name.startswith("classifiers"))


def parse_candidate(text: str) -> tuple[str, dict[str, Any]]:
    """ "NAME=KEY=VALUE;KEY=VALUE" -> (NAME, overrides); "NAME=" is the preset as it is."""
    name, sep, rest = text.partition("=")
    if not sep or not name.strip() or (rest.strip() and "=" not in rest):
        raise SystemExit(f'--candidate takes "NAME=KEY=VALUE[;KEY=VALUE...]", got {text!r}')
    return name.strip(), parse_overrides([item for item in rest.split(";") if item.strip()])


def candidate_models(args: argparse.Namespace) -> list[tuple[str, MagNet]]:
    """(name, model) of every candidate, each drawn from its own seed; the checkpoint's last."""
    models = []
    for text in args.candidate or DEFAULT_CANDIDATES:
        name, overrides = parse_candidate(text)
        config: MagNetConfig = replace(model_config(args.preset, overrides, args.size), grounding=None)
        torch.manual_seed(args.seed)
        models.append((name, MagNet(config)))
    if args.checkpoint:
        from ..checkpoint import load_model

        trained = load_model(args.checkpoint, device="cpu")
        models.append((f"trained: {Path(args.checkpoint).name}", trained))
    return models


def run(args: argparse.Namespace) -> dict[str, Any]:
    threads = set_threads(args.threads)
    if args.seconds <= 0 or args.readings < 1:
        raise SystemExit("--seconds must be > 0 and --readings >= 1")
    size = args.size or model_config(args.preset, {}).image_size
    train = draw_batches("train", args.train_scenes, args.batch, size, args.seed)
    val = draw_batches("val", args.val_scenes, args.batch, size, args.seed)
    results: dict[str, Any] = {
        "size": size,
        "threads": threads,
        "train_scenes": args.train_scenes,
        "val_objects": sum(len(b.known()) for b in val),
        "chance": 100 / len(SHAPES),
        "candidates": {},
    }
    for name, model in candidate_models(args):
        torch.manual_seed(args.seed)
        results["candidates"][name] = learn_shapes(
            model, train, val, args.seconds, args.lr, args.readings, args.readout == "fixed"
        )
        print(f"{name}: {describe(results['candidates'][name])}", flush=True)
    return results


def describe(result: dict[str, Any]) -> str:
    return ", ".join(f"{r['best']:.1f} % at {r['seconds']:.0f} s" for r in result["curve"])


def report(results: dict[str, Any]) -> str:
    first = next(iter(results["candidates"].values()))
    times = [f"best stage at {r['seconds']:.0f} s" for r in first["curve"]]
    rows = []
    for name, result in results["candidates"].items():
        last = result["curve"][-1]
        rows.append(
            [
                name,
                f"{result['parameters'] / 1e6:.2f} M",
                f"{result['seconds_per_step']:.2f}",
                *(f"{r['best']:.1f}" for r in result["curve"]),
                " / ".join(f"{a:.1f}" for a in last["stages"]),
            ]
        )
    header = (
        f"shape accuracy (%) on {results['val_objects']} held-out objects, {results['size']} px, "
        f"{results['threads']} threads, chance {results['chance']:.1f}"
    )
    table = format_table(["backbone", "params", "s/step", *times, "stages 1-4 at the end"], rows)
    return f"{header}\n{table}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magnet.benchmarks.shape_learning",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_arguments(parser)
    parser.set_defaults(preset="synthetic-cpu", size=192)
    parser.add_argument(
        "--candidate",
        action="append",
        metavar="NAME=OVERRIDES",
        help=f"a backbone to try (repeatable; default: {'; '.join(DEFAULT_CANDIDATES)})",
    )
    parser.add_argument(
        "--readout",
        choices=("learned", "fixed"),
        default="learned",
        help="a learned linear classifier per stage, or the fixed readout of the object-class loss",
    )
    parser.add_argument("--checkpoint", default=None, help="also try this checkpoint's trained Swin")
    parser.add_argument("--seconds", type=float, default=240.0, help="training time per candidate (default 240)")
    parser.add_argument("--readings", type=int, default=4, help="held-out readings along the way (default 4)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (default 1e-3)")
    parser.add_argument("--batch", type=int, default=8, help="scenes per step (default 8, about 36 objects)")
    parser.add_argument("--train-scenes", type=int, default=2000, help="pre-drawn training scenes (default 2,000)")
    parser.add_argument("--val-scenes", type=int, default=100, help="held-out validation scenes (default 100)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_benchmark(build_parser(), run, report, argv)


if __name__ == "__main__":
    main()
