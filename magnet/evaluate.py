"""Evaluation: `python -m magnet evaluate --checkpoint C --data D --split S`.

Two protocols: the official one compares prediction and target at the model's input
resolution (target resized by nearest neighbour); `original_resolution` maps the probability
map back to each photo's size and compares with the full-resolution mask."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .checkpoint import CHECKPOINT_HELP, load_model, pick_device
from .data.dataset import ReferringDataset, collate, uniform_batches
from .data.sources import DataSpec, build_dataset
from .data.tokenizer import ExpressionTokenizer
from .edge_refine import photo_tensor, refine_probabilities, to_image_size
from .errors import ConfigError
from .flip_tta import mirrored_tokens, probabilities
from .metrics import IoUAccumulator
from .modeling import MagNet
from .regions import keep_one_region

log = logging.getLogger(__name__)


def evaluate_model(model: MagNet, dataset: ReferringDataset, **options: Any) -> dict[str, Any]:
    """Overall IoU, mean IoU, precision@0.5..0.9 (and per expression type) over a dataset;
    `options` are score_samples' (batch_size, device, original_resolution, threshold, ...)."""
    return score_samples(model, dataset, **options).summary()


@torch.inference_mode()
def score_samples(
    model: MagNet,
    dataset: ReferringDataset,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    original_resolution: bool = False,
    threshold: float = 0.5,
    progress: bool = True,
    num_workers: int = 0,
    flip_tta: bool = False,
    edge_refine_radius: int | None = None,
    single_region: bool | None = None,
) -> IoUAccumulator:
    """Every sample's intersection and union (in dataset order), for summaries and paired
    comparisons; `flip_tta` averages each mask with the mirrored one (`magnet.flip_tta`);
    `edge_refine_radius` (None: the checkpoint's, 0: off) snaps masks to the image's edges
    (`magnet.edge_refine`), at the input size or, with `original_resolution`, at each photo's;
    `single_region` (None: the checkpoint's) then cuts each mask to one region (`magnet.regions`)."""
    from tqdm.auto import tqdm

    device = pick_device(device)
    was_training = model.training
    model.eval()
    pipeline = model.config.with_pipeline(edge_refine_radius=edge_refine_radius, single_region=single_region)
    radius, one_region = pipeline.edge_refine_radius, pipeline.single_region
    accumulator = IoUAccumulator()
    tokenizer = ExpressionTokenizer.for_model(model.config) if flip_tta else None
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    for batch in tqdm(loader, disable=not progress, desc="evaluate"):
        if batch is None:
            continue
        scored: dict[int, tuple[np.ndarray, np.ndarray, str | None]] = {}
        for part in uniform_batches(batch):  # one forward per input shape
            images = part["image"].to(device)
            mirrored = mirrored_tokens(tokenizer, part["text"], device) if tokenizer else None
            prob = probabilities(
                model, images, part["input_ids"].to(device), part["attention_mask"].to(device), mirrored
            )
            if radius and not original_resolution:
                prob = refine_probabilities(prob, images, radius)
            if one_region and not original_resolution:
                prob = keep_one_region(prob, threshold)
            for k, index in enumerate(part["index"].tolist()):
                if original_resolution:
                    image, target = dataset.load_original(index)
                    photo = photo_tensor(image, device) if radius else None
                    full = to_image_size(prob[k : k + 1], images[k : k + 1], target.shape, radius, photo)
                    full = (keep_one_region(full, threshold) if one_region else full)[0, 0]
                    scored[index] = (full.cpu().numpy() > threshold, target, part["type"][k])
                else:
                    scored[index] = (
                        (prob[k, 0] > threshold).cpu().numpy(),
                        part["mask"][k].numpy() > 0.5,
                        part["type"][k],
                    )
        for index in batch["index"].tolist():  # in dataset order, for paired comparisons
            accumulator.add(*scored[index])
    model.train(was_training)
    return accumulator


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m magnet evaluate", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    parser.add_argument("--data", required=True, help="a .jsonl file, or a refer-toolkit root with --dataset")
    parser.add_argument("--dataset", default=None, help="refcoco, refcoco+ or refcocog")
    parser.add_argument(
        "--split-by",
        default=None,
        help="refer-toolkit split scheme, e.g. unc or umd (default: the dataset's usual one)",
    )
    parser.add_argument("--image-root", default=None, help="folder of the COCO train2014 images (refer-toolkit layout)")
    parser.add_argument("--split", action="append", help="split(s) to evaluate (default: val); repeat for several")
    parser.add_argument("--original-resolution", action="store_true", help="compare at each photo's own size")
    parser.add_argument(
        "--flip-tta",
        action="store_true",
        help="also read each image mirrored (left/right swapped in the text) and average: not the official protocol",
    )
    parser.add_argument(
        "--edge-refine-radius",
        type=int,
        default=None,
        metavar="PX",
        help="snap masks to the image's edges with a guided filter of this radius in input pixels; "
        "0: off, the official protocol's raw masks (default: the checkpoint's setting)",
    )
    parser.add_argument(
        "--single-region",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cut a mask that falls apart into regions to its most certain one (--no-single-region: the "
        "official protocol's masks; default: the checkpoint's setting)",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="samples per forward (default: 8)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    parser.add_argument(
        "--synthetic-scenes",
        type=int,
        default=DataSpec.synthetic_val_scenes,
        help=f"with --data synthetic: scenes per split (default: {DataSpec.synthetic_val_scenes}; more for tighter figures)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: best available)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad sample")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.synthetic_scenes < 1:
        raise ConfigError(f"--synthetic-scenes must be at least 1, got {args.synthetic_scenes}")
    if args.edge_refine_radius is not None and args.edge_refine_radius < 0:
        raise ConfigError(f"--edge-refine-radius must be >= 0 (0: off), got {args.edge_refine_radius}")
    model = load_model(args.checkpoint, device=args.device)
    pipeline = model.config.with_pipeline(edge_refine_radius=args.edge_refine_radius, single_region=args.single_region)
    edge_refine_radius, single_region = pipeline.edge_refine_radius, pipeline.single_region
    if edge_refine_radius:
        print(
            f"masks edge-refined (guided filter, radius {edge_refine_radius} px; --edge-refine-radius 0 for the raw masks)"
        )
    if single_region:
        print("masks cut to their most certain region (--no-single-region for the whole masks)")
    tokenizer = ExpressionTokenizer.for_model(model.config)
    spec = DataSpec(
        path=args.data,
        dataset=args.dataset,
        split_by=args.split_by,
        image_root=args.image_root,
        synthetic_val_scenes=args.synthetic_scenes,
    )
    results: dict[str, Any] = {
        "checkpoint": args.checkpoint,
        "protocol": "original" if args.original_resolution else "official",
        "flip_tta": args.flip_tta,
        "edge_refine_radius": edge_refine_radius,
        "single_region": single_region,
    }
    for split in args.split or ["val"]:
        dataset, report = build_dataset(
            spec,
            split,
            model.config.image_size,
            tokenizer,
            strict=args.strict,
            limit=args.limit,
            keep_aspect=model.config.keep_aspect,
        )
        metrics = evaluate_model(
            model,
            dataset,
            batch_size=args.batch_size,
            device=model.device,
            original_resolution=args.original_resolution,
            flip_tta=args.flip_tta,
            edge_refine_radius=edge_refine_radius,
            single_region=single_region,
        )
        metrics["skipped"] = report.summary()
        results[split] = metrics
        print(
            f"{split}: overall IoU {metrics['overall_iou']:.2f}  mean IoU {metrics['mean_iou']:.2f}  "
            + "  ".join(f"P@{t} {metrics[f'precision@{t}']:.1f}" for t in ("0.5", "0.7", "0.9"))
            + f"  (n={metrics['count']})"
        )
        for kind, sub in sorted(metrics.get("by_type", {}).items()):
            print(
                f"  {kind:>10}: overall IoU {sub['overall_iou']:.2f}  mean IoU {sub['mean_iou']:.2f}  n={sub['count']}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0
