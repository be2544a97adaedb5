"""Does a checkpoint lose overall IoU on the wrong object or on loose edges? Hits and misses.

    python -m magnet.benchmarks.misses --checkpoint checkpoints/magnet-synthetic-cpu.safetensors \\
        --split testA --split testB --pictures runs/misses

Each expression of the synthetic split is a hit (IoU >= 0.5: the object was found) or a miss.
Per split and expression type: the overall IoU, the misses (how many, and their share of the
summed union: what the wrong objects cost) and the hits' own overall IoU (what the edges cost).
With --pictures, every miss is drawn at the scene's size, the target outlined green and the
prediction red, its expression below; `misses.json` lists them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.dataset import ReferringDataset
from ..data.sources import DataSpec, build_dataset
from ..evaluate import score_samples
from ..metrics import IoUAccumulator
from ..modeling import MagNet, resize_probabilities
from ..visualize import legend_strip, outline_masks
from . import add_checkpoint_arguments, add_synthetic_split_arguments, format_table, load_for_scoring

HIT = 0.5  # the IoU from which an expression counts as found (P@0.5's threshold)
TARGET, PREDICTION = "#22c55e", "#ef4444"


def hits_and_misses(scored: IoUAccumulator, kind: str | None = None) -> dict[str, float]:
    """`count`, `overall_iou`, `misses`, `miss_percent`, `miss_union_percent` (the misses' share of
    the summed union) and `hit_overall_iou` (NaN without hits), over the samples of type `kind` (all
    when None); figures in percent."""
    intersections = np.array(scored.intersections, dtype=np.float64)
    unions = np.array(scored.unions, dtype=np.float64)
    chosen = np.ones(len(unions), dtype=bool) if kind is None else np.array(scored.types, dtype=object) == kind
    intersections, unions = intersections[chosen], unions[chosen]
    miss = scored.ious()[chosen] < HIT
    total = max(unions.sum(), 1.0)
    hit_union = unions[~miss].sum()
    return {
        "count": int(chosen.sum()),
        "overall_iou": 100 * intersections.sum() / total,
        "misses": int(miss.sum()),
        "miss_percent": 100 * miss.mean() if len(miss) else 0.0,
        "miss_union_percent": 100 * unions[miss].sum() / total,
        "hit_overall_iou": 100 * intersections[~miss].sum() / hit_union if hit_union else float("nan"),
    }


@torch.inference_mode()
def draw_miss(model: MagNet, dataset: ReferringDataset, index: int, threshold: float = 0.5) -> tuple[np.ndarray, str]:
    """The scene of sample `index` at its own size with the target (green) and the prediction (red)
    outlined and its expression written below, and that expression."""
    item = dataset[index]
    image, target = dataset.load_original(index)
    size = tuple(item["image"].shape[-2:])
    prob = model(item["image"][None], item["input_ids"][None], item["attention_mask"][None]).probabilities(size)
    predicted = resize_probabilities(prob.float(), target.shape)[0, 0].numpy() > threshold
    picture = outline_masks(np.asarray(image.convert("RGB")), [target > 0, predicted], [TARGET, PREDICTION])
    caption = legend_strip([f"target: {item['text']}", "prediction"], [TARGET, PREDICTION], picture.shape[1])
    return np.concatenate([picture, caption], axis=0), item["text"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magnet.benchmarks.misses",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_arguments(parser)
    add_synthetic_split_arguments(parser, "testA and testB")
    parser.add_argument("--pictures", default=None, help="folder for a picture of every miss and misses.json")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """Prints the table; returns split -> type ("all" first) -> figures."""
    args = build_parser().parse_args(argv)
    model, tokenizer = load_for_scoring(args)
    spec = DataSpec(path="synthetic", synthetic_val_scenes=args.scenes)
    folder = Path(args.pictures) if args.pictures else None
    results, rows, listed = {}, [], []
    for split in args.split or ["testA", "testB"]:
        dataset, _ = build_dataset(spec, split, model.config.image_size, tokenizer)
        scored = score_samples(model, dataset, device="cpu", progress=False)
        kinds = sorted({k for k in scored.types if k is not None})
        results[split] = {"all": hits_and_misses(scored), **{k: hits_and_misses(scored, k) for k in kinds}}
        for kind, r in results[split].items():
            rows.append(
                [
                    split,
                    kind,
                    r["count"],
                    f"{r['overall_iou']:.2f}",
                    f"{r['misses']} ({r['miss_percent']:.1f} %)",
                    f"{r['miss_union_percent']:.1f} %",
                    f"{r['hit_overall_iou']:.2f}",
                ]
            )
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            for index, iou in enumerate(scored.ious()):
                if iou < HIT:
                    name = f"{split}-{index:04d}.png"
                    picture, text = draw_miss(model, dataset, index)
                    Image.fromarray(picture).save(folder / name)
                    listed.append(
                        {
                            "picture": name,
                            "split": split,
                            "index": index,
                            "type": scored.types[index],
                            "text": text,
                            "iou": round(float(iou), 3),
                        }
                    )
    if folder is not None:
        (folder / "misses.json").write_text(json.dumps(listed, indent=1))
    headers = [
        "split",
        "type",
        "expressions",
        "overall IoU",
        "misses (IoU < 0.5)",
        "misses' share of union",
        "hits' overall IoU",
    ]
    print(format_table(headers, rows))
    return results


if __name__ == "__main__":
    main()
