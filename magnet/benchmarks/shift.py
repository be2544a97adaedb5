"""What each part of the held-out "shifted" look costs a checkpoint: overall IoU per factor.

    python -m magnet.benchmarks.shift --checkpoint checkpoints/magnet-synthetic-cpu.safetensors

The shifted split changes three things at once: backgrounds (stripes, checker, texture), image
shape (176 to 352 pixels a side, so aspect ratios 0.5 to 2) and object counts (2, 7 or 8). Here
the default look takes one of them at a time, then all three, and every expression of every
scene is scored per expression type as `evaluate` scores them. All looks draw the same scene
numbers from one seed (not the seed of the synthetic splits).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..data.dataset import build_item
from ..data.synthetic import EXPRESSION_TYPES, STYLES, SceneStyle
from ..data.synthetic.splits import draw_scene
from ..data.tokenizer import ExpressionTokenizer
from ..evaluate import evaluate_model
from . import add_checkpoint_arguments, format_table, load_for_scoring


def factor_styles() -> dict[str, SceneStyle]:
    """The default look, the default look with one factor of the shifted look, and the shifted look."""
    default, shifted = STYLES["default"], STYLES["shifted"]
    return {
        "default": default,
        "backgrounds": dataclasses.replace(default, backgrounds=shifted.backgrounds),
        "image shape": dataclasses.replace(default, widths=shifted.widths, heights=shifted.heights),
        "object counts": dataclasses.replace(default, counts=shifted.counts),
        "all three (shifted)": shifted,
    }


class StyleItems(Dataset):
    """Every (object, expression) of `scenes` scenes of one look, as evaluation items."""

    def __init__(
        self,
        style: SceneStyle,
        scenes: int,
        seed: int,
        image_size: int,
        tokenizer: ExpressionTokenizer,
        keep_aspect: bool = False,
    ):
        self.items = []
        for number in range(scenes):
            rng = np.random.default_rng([seed, number])
            _, expressions, image, labels = draw_scene(rng, EXPRESSION_TYPES, style)
            picture = Image.fromarray(image)
            for obj, (texts, kinds) in sorted(expressions.items()):
                for text, kind in zip(texts, kinds):
                    item_id = f"{number:05d}-{obj}-{len(self.items)}"
                    self.items.append(
                        build_item(
                            picture,
                            labels == obj + 1,
                            text,
                            image_size,
                            tokenizer,
                            augment=None,
                            generator=None,
                            index=len(self.items),
                            kind=kind,
                            item_id=item_id,
                            keep_aspect=keep_aspect,
                        )
                    )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, position: int) -> dict:
        return self.items[position]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magnet.benchmarks.shift",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_arguments(parser)
    parser.add_argument("--scenes", type=int, default=120, help="scenes per look (default 120)")
    parser.add_argument("--seed", type=int, default=99, help="scene seed (default 99)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    model, tokenizer = load_for_scoring(args)
    rows = []
    for name, style in factor_styles().items():
        items = StyleItems(style, args.scenes, args.seed, model.config.image_size, tokenizer, model.config.keep_aspect)
        summary = evaluate_model(model, items, device="cpu", progress=False)
        by_type = summary.get("by_type", {})
        rows.append(
            [name, len(items), f"{summary['overall_iou']:.2f}"]
            + [f"{by_type[kind]['overall_iou']:.2f}" if kind in by_type else "-" for kind in EXPRESSION_TYPES]
        )
    print(format_table(["look", "expressions", "overall IoU", *EXPRESSION_TYPES], rows))


if __name__ == "__main__":
    main()
