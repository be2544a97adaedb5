"""What do a checkpoint's features know about each object? Linear probes of shape, colour and size.

    python -m magnet.benchmarks.probe --checkpoint checkpoints/magnet-synthetic-cpu.safetensors

Every object of the synthetic validation scenes is read with one neutral expression (`--text`,
default "the shape", so that no word points at a shape or colour); its features at each layer (the
four Swin stage outputs, the four aligned maps s1-s4 the head reads, the per-pixel mask features)
are averaged over the object's pixels, and a linear classifier fitted on 70 % of the objects
predicts the shape, colour and size of the other 30 %. A layer scoring near chance does not hold
that property in its object features. `--random-init` probes the same architecture with fresh
weights: what the probe reads without any training.

With a Mask Grounding head, a second table asks the head to name each object's shape ("the [MASK]")
and colour ("the [MASK] shape") from the mask features and the object's mask, once with the image
read with the neutral expression and once read with the object's own shape word ("the circle"):
a head that names the shape only when the word was in the forward reads it from the fusion, not
from the object. Words of several word pieces ("hexagon") are left out of its choices.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.sources import DataSpec, build_dataset
from ..data.synthetic import SyntheticStream
from ..data.synthetic.scenes import COLOURS, SHAPES
from ..data.tokenizer import ExpressionTokenizer
from ..losses import object_features, object_masks
from ..modeling import MagNet
from . import add_checkpoint_arguments, format_table, load_for_scoring

PROPERTIES = ("shape", "colour", "size")
TRAIN_SHARE = 0.7
NAMING_QUERIES = {"shape": "the [MASK]", "colour": "the [MASK] shape"}  # the masked word names the property
NAMED_VALUES = {"shape": SHAPES, "colour": list(COLOURS)}


def feature_maps(model: MagNet, image: torch.Tensor, input_ids: torch.Tensor, attention: torch.Tensor) -> dict:
    """Layer name -> (1, D, h, w) features of one image read with one expression."""
    intermediates = model(image, input_ids, attention, output_intermediates=True).intermediates
    maps = {}
    for n in range(1, model.config.num_stages + 1):
        aligned = intermediates[f"s{n}"]
        tokens = intermediates[f"stage{n}.visual_out"]  # (1, h*w, D) at the aligned map's size
        maps[f"stage{n}"] = tokens.transpose(1, 2).reshape(1, -1, *aligned.shape[-2:])
        maps[f"s{n}"] = aligned
    maps["mask features"] = intermediates["mask_features"]
    return maps


@torch.inference_mode()
def features_of_objects(
    model: MagNet, tokenizer: ExpressionTokenizer, scenes: SyntheticStream, text: str
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """(layer -> (N, D) features averaged over each object's pixels, property -> N values) for the
    N objects of `scenes`, every scene read with `text`."""
    input_ids, attention, _ = tokenizer.encode_batch([text])
    features: dict[str, list[torch.Tensor]] = {}
    properties: dict[str, list[str]] = {name: [] for name in PROPERTIES}
    for index in range(len(scenes)):
        drawn = scenes.draw(index)
        image = scenes.build(index, drawn)["image"][None]
        maps = feature_maps(model, image, input_ids, attention)
        count = len(drawn.scene.objects)
        masks = object_masks(torch.from_numpy(drawn.labels.astype(np.int64))[None], count)
        for name, values in maps.items():
            pooled, _ = object_features(values.float(), masks)
            features.setdefault(name, []).extend(pooled[0])
        for obj in drawn.scene.objects:
            for name in PROPERTIES:
                properties[name].append(getattr(obj, name))
    return {name: torch.stack(rows) for name, rows in features.items()}, properties


@torch.inference_mode()
def naming_accuracy(
    model: MagNet, tokenizer: ExpressionTokenizer, scenes: SyntheticStream, text: str, count: int
) -> dict[str, dict[str, float]]:
    """Percent of objects whose shape and colour the Mask Grounding head names (the highest logit
    among that property's one-piece words), the image read with `text` or with the object's shape
    word, over the first `count` scenes: {"neutral": {"shape": ..., "colour": ...}, "with its shape word": {...}}."""
    words = {name: one_piece_words(tokenizer, values) for name, values in NAMED_VALUES.items()}
    choices = {name: torch.tensor([tokenizer.word_pieces(w)[0] for w in ws]) for name, ws in words.items()}
    queries = {name: tokenizer.encode_batch([query])[:2] for name, query in NAMING_QUERIES.items()}
    neutral_text = tokenizer.encode_batch([text])[:2]
    right: dict[str, dict[str, list[bool]]] = {"neutral": {}, "with its shape word": {}}
    for index in range(min(count, len(scenes))):
        drawn = scenes.draw(index)
        image = scenes.build(index, drawn)["image"][None]
        neutral = model(image, *neutral_text)
        read_with_word = {}  # shape -> the forward of "the <shape>", one per shape in the scene
        for number, obj in enumerate(drawn.scene.objects):
            if obj.shape not in words["shape"]:
                continue
            target = F.interpolate(
                torch.from_numpy(drawn.labels == number + 1).float()[None, None], size=image.shape[-2:]
            )
            if obj.shape not in read_with_word:
                read_with_word[obj.shape] = model(image, *tokenizer.encode_batch([f"the {obj.shape}"])[:2])
            for read, output in (("neutral", neutral), ("with its shape word", read_with_word[obj.shape])):
                for name, (ids, attention) in queries.items():
                    logits = model.ground(output, ids, attention, target).logits[ids == tokenizer.mask_token_id]
                    named = words[name][int(logits[0, choices[name]].argmax())]
                    right[read].setdefault(name, []).append(named == getattr(obj, name))
    return {read: {name: 100 * float(np.mean(v)) for name, v in r.items()} for read, r in right.items()}


def one_piece_words(tokenizer: ExpressionTokenizer, words: Sequence[str]) -> list[str]:
    """The `words` the tokenizer keeps as one word piece."""
    return [word for word in words if len(tokenizer.word_pieces(word)) == 1]


def probe_accuracy(features: torch.Tensor, values: Sequence[str], train_share: float = TRAIN_SHARE) -> float:
    """Percent of the last (1 - train_share) of the rows whose value a linear classifier fitted on
    the first rows (standardised features, L-BFGS, a small L2 penalty) predicts."""
    classes = sorted(set(values))
    target = torch.tensor([classes.index(v) for v in values])
    split = int(train_share * len(target))
    if split == 0 or split == len(target):
        raise ValueError(f"need objects on both sides of the {train_share:.0%} split, got {len(target)}")
    train = features[:split]
    x = (features - train.mean(0)) / (train.std(0) + 1e-5)
    classifier = torch.nn.Linear(x.shape[1], len(classes))
    torch.nn.init.zeros_(classifier.weight)  # a convex fit: zeros make it deterministic
    torch.nn.init.zeros_(classifier.bias)
    optimizer = torch.optim.LBFGS(classifier.parameters(), max_iter=200)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(classifier(x[:split]), target[:split]) + 1e-3 * classifier.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        predicted = classifier(x[split:]).argmax(1)
    return 100 * (predicted == target[split:]).float().mean().item()


def chance(values: Sequence[str], train_share: float = TRAIN_SHARE) -> float:
    """Percent of the held-out rows that the training rows' most frequent value would get right."""
    split = int(train_share * len(values))
    common = max(set(values[:split]), key=list(values[:split]).count)
    return 100 * sum(v == common for v in values[split:]) / max(len(values) - split, 1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m magnet.benchmarks.probe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_checkpoint_arguments(parser)
    parser.add_argument("--scenes", type=int, default=300, help="validation scenes (default 300: about 1,350 objects)")
    parser.add_argument(
        "--text", default="the shape", help='the expression every scene is read with (default "the shape")'
    )
    parser.add_argument(
        "--naming-scenes",
        type=int,
        default=100,
        help="scenes of the naming table (default 100; a forward per object; 0: no table)",
    )
    parser.add_argument(
        "--random-init", action="store_true", help="probe the checkpoint's architecture with fresh weights"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Prints the table; returns layer -> property -> held-out accuracy (percent), "chance" first."""
    args = build_parser().parse_args(argv)
    model, tokenizer = load_for_scoring(args)
    if args.random_init:
        torch.manual_seed(0)
        model = MagNet(model.config)
    model.eval()
    spec = DataSpec(path="synthetic", synthetic_val_scenes=args.scenes)
    scenes, _ = build_dataset(spec, "val", model.config.image_size, tokenizer)
    features, properties = features_of_objects(model, tokenizer, scenes, args.text)
    results = {"chance": {name: chance(values) for name, values in properties.items()}}
    for layer, rows in features.items():
        results[layer] = {name: probe_accuracy(rows, values) for name, values in properties.items()}
    widths = {layer: rows.shape[1] for layer, rows in features.items()}
    table = [
        [layer, widths.get(layer, "-"), *(f"{r[name]:.1f}" for name in PROPERTIES)] for layer, r in results.items()
    ]
    objects = len(properties["shape"])
    print(f"{objects} objects of {args.scenes} validation scenes read with {args.text!r}; held out: the last 30 %")
    print(format_table(["layer", "width", *PROPERTIES], table))
    if model.grounding is not None and args.naming_scenes > 0:
        named = naming_accuracy(model, tokenizer, scenes, args.text, args.naming_scenes)
        print()
        print(
            f"Mask Grounding head naming each object of {min(args.naming_scenes, args.scenes)} scenes (its mask given), percent right:"
        )
        rows = [[f"image read with {args.text!r}" if read == "neutral" else f"image read {read}"] for read in named]
        for row, by_name in zip(rows, named.values()):
            row += [f"{by_name[name]:.1f}" for name in NAMING_QUERIES]
        print(format_table(["forward", *NAMING_QUERIES], rows, right_align=False))
        results.update({f"naming, {read}": by_name for read, by_name in named.items()})
    return results


if __name__ == "__main__":
    main()
