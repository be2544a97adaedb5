"""Where a checkpoint gets ordinal and comparative expressions wrong: overall IoU per pattern.

    python -m magnet.benchmarks.ordinals --checkpoint checkpoints/magnet-synthetic-cpu.safetensors

The ordinal items of the synthetic held-out splits (testB and val by default) are grouped by
pattern: the ordinal word and axis ("second from the left/right", "third from the top/bottom"),
split by whether the object is at an end of its row or inside it (where finding it takes counting),
or the comparative ("bigger / larger", "smaller"), and scored as `evaluate` scores expression types.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence

from torch.utils.data import Dataset

from ..data.sources import DataSpec, build_dataset
from ..data.synthetic import DIRECTIONS, SyntheticStream
from ..data.synthetic.grammar import ORDINALS, counting_expressions
from ..data.synthetic.scenes import Scene
from ..evaluate import evaluate_model
from . import add_checkpoint_arguments, add_synthetic_split_arguments, format_table, load_for_scoring

ORDINAL = re.compile(rf"\bthe ({'|'.join(ORDINALS)}) .+ from the ({'|'.join(DIRECTIONS)})$")
AXES = {direction: "left/right" if axis == 0 else "top/bottom" for direction, (axis, _) in DIRECTIONS.items()}


def ordinal_pattern(text: str) -> str:
    """ "the second red circle from the right" -> "second from the left/right"; comparatives
    -> "bigger / larger" or "smaller"."""
    match = ORDINAL.search(text)
    if match:
        return f"{match.group(1)} from the {AXES[match.group(2)]}"
    return "smaller" if "smaller" in text.split() else "bigger / larger"


def row_place(scene: Scene, index: int, text: str) -> str:
    """ "inside the row" when `text` names object `index` neither first nor last in its row,
    "end of the row" for the other ordinals, "" for comparatives."""
    if not ORDINAL.search(text):
        return ""
    return "inside the row" if text in counting_expressions(scene, index) else "end of the row"


class OrdinalItems(Dataset):
    """The ordinal items of a synthetic stream, each typed by its pattern and row place instead of
    "ordinal" ("second from the left/right, inside the row").
    Each scene is drawn once, and only the ordinal items are built."""

    def __init__(self, stream: SyntheticStream) -> None:
        self.stream = stream
        self.indices, self.items = [], []
        for index in range(len(stream)):
            drawn = stream.draw(index)
            if drawn.kind == "ordinal":
                place = row_place(drawn.scene, drawn.obj, drawn.text)
                kind = ", ".join(filter(None, (ordinal_pattern(drawn.text), place)))
                self.indices.append(index)
                self.items.append({**stream.build(index, drawn), "index": len(self.items), "type": kind})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> dict:
        return self.items[position]

    def load_original(self, position: int):
        return self.stream.load_original(self.indices[position])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magnet.benchmarks.ordinals",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_arguments(parser)
    add_synthetic_split_arguments(parser, "testB and val", scenes=600)
    parser.add_argument("--seed", type=int, default=0, help="data seed of the synthetic splits")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model, tokenizer = load_for_scoring(args)
    spec = DataSpec(path="synthetic", synthetic_val_scenes=args.scenes, synthetic_seed=args.seed)
    rows = []
    for split in args.split or ["testB", "val"]:
        stream, _ = build_dataset(spec, split, model.config.image_size, tokenizer, keep_aspect=model.config.keep_aspect)
        summary = evaluate_model(model, OrdinalItems(stream), device="cpu", progress=False)
        for pattern, result in summary.get("by_type", {}).items():
            rows.append(
                [split, pattern, result["count"], f"{result['overall_iou']:.2f}", f"{result['precision@0.5']:.1f}"]
            )
    print(format_table(["split", "pattern", "expressions", "overall IoU", "P@0.5"], rows))


if __name__ == "__main__":
    main()
