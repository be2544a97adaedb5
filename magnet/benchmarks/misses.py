"""Does a checkpoint lose overall IoU on the wrong object or on loose edges? Hits and misses.

    python -m magnet.benchmarks.misses --checkpoint checkpoints/magnet-synthetic-cpu.safetensors \\
        --split testA --split testB --pictures runs/misses

Each expression of the synthetic split is a hit (IoU >= 0.5: the object was found) or a miss.
Per split and expression type: the overall IoU, the misses (how many, and their share of the
summed union: what the wrong objects cost) and the hits' own overall IoU (what the edges cost).
A second table says what each miss took instead: the scene's object that most of the predicted
pixels outside the target fall on, and how its description differs from the target's ("another
shape": same colour and size; "the same description": a twin elsewhere, so a place or a count
went wrong), or "no other object" when the mask covers none (a partial or a loose mask).
With --pictures, every miss is drawn at the scene's size, the target outlined green and the
prediction red, its expression below; `misses.json` lists them.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data.sources import DataSpec, build_dataset
from ..data.synthetic import SyntheticStream
from ..data.synthetic.scenes import Scene
from ..data.synthetic.stream import DrawnItem
from ..evaluate import score_samples
from ..metrics import IoUAccumulator
from ..modeling import MagNet, resize_probabilities
from ..visualize import legend_strip, outline_masks
from . import add_checkpoint_arguments, add_synthetic_split_arguments, format_table, load_for_scoring

HIT = 0.5  # the IoU from which an expression counts as found (P@0.5's threshold)
OTHER_OBJECT_SHARE = 0.2  # a miss "took" another object when that much of its mask lies on one
NO_OTHER_OBJECT = "no other object"
SAME_DESCRIPTION = "the same description"
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
def predict_at_scene_size(
    model: MagNet, dataset: SyntheticStream, index: int, threshold: float = 0.5
) -> tuple[DrawnItem, np.ndarray]:
    """Sample `index` as drawn (scene, image, labels, object, expression) and the model's mask for
    it at the scene's own size."""
    drawn = dataset.draw(index)
    item = dataset.build(index, drawn)
    size = tuple(item["image"].shape[-2:])
    prob = model(item["image"][None], item["input_ids"][None], item["attention_mask"][None]).probabilities(size)
    predicted = resize_probabilities(prob.float(), drawn.mask.shape)[0, 0].numpy() > threshold
    return drawn, predicted


def draw_miss(image: np.ndarray, target: np.ndarray, predicted: np.ndarray, text: str) -> np.ndarray:
    """The scene with the target (green) and the prediction (red) outlined, its expression below."""
    picture = outline_masks(image, [target, predicted], [TARGET, PREDICTION])
    caption = legend_strip([f"target: {text}", "prediction"], [TARGET, PREDICTION], picture.shape[1])
    return np.concatenate([picture, caption], axis=0)


def taken_instead(scene: Scene, labels: np.ndarray, target: int, predicted: np.ndarray) -> str:
    """What a miss of object `target` took instead: how the description of the object most of the
    predicted pixels outside the target fall on differs from the target's ("another shape",
    "another colour and size", "the same description"), or "no other object" when no object holds
    OTHER_OBJECT_SHARE of the predicted pixels. `labels`: 0 background, i + 1 object i."""
    counts = np.bincount(labels[predicted].ravel(), minlength=len(scene.objects) + 1)[1:]
    counts[target] = 0
    if counts.max(initial=0) < OTHER_OBJECT_SHARE * max(int(predicted.sum()), 1):
        return NO_OTHER_OBJECT
    wanted, taken = scene.objects[target], scene.objects[int(counts.argmax())]
    differ = [name for name in ("shape", "colour", "size") if getattr(wanted, name) != getattr(taken, name)]
    return "another " + " and ".join(differ) if differ else SAME_DESCRIPTION


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
        dataset, _ = build_dataset(
            spec, split, model.config.image_size, tokenizer, keep_aspect=model.config.keep_aspect
        )
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
            if iou >= HIT:
                continue
            drawn, predicted = predict_at_scene_size(model, dataset, index)
            entry = {
                "split": split,
                "index": index,
                "type": scored.types[index],
                "text": drawn.text,
                "iou": round(float(iou), 3),
                "taken": taken_instead(drawn.scene, drawn.labels, drawn.obj, predicted),
            }
            if folder is not None:
                entry["picture"] = f"{split}-{index:04d}.png"
                picture = draw_miss(drawn.image, drawn.mask, predicted, drawn.text)
                Image.fromarray(picture).save(folder / entry["picture"])
            listed.append(entry)
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
    print()
    print(format_table(["split", "type", "misses", "what they took instead"], taken_rows(listed), right_align=False))
    return results


def taken_rows(listed: Sequence[dict]) -> list[list]:
    """Per split (all types, then each type) the misses counted by what they took instead, most first."""
    rows = []
    for split in dict.fromkeys(entry["split"] for entry in listed):
        entries = [entry for entry in listed if entry["split"] == split]
        for kind in ["all", *sorted({str(entry["type"]) for entry in entries})]:
            taken = Counter(e["taken"] for e in entries if kind in ("all", str(e["type"])))
            described = ", ".join(f"{what} {count}" for what, count in taken.most_common())
            rows.append([split, kind, sum(taken.values()), described])
    return rows


if __name__ == "__main__":
    main()
