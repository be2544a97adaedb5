"""Grounding benchmark: do the word maps point at the right object?

    python -m magnet evaluate-grounding --checkpoint C [--split testA] [--scenes N] [--write-table F]

The synthetic generator knows every object's colour, shape, size and position, so on held-out
scenes (index >= 1000 of a test or validation split; training draws from the "train" split) each
grounding source is scored by three pointing games. A map "points" at the object under its
highest pixel (the background counts as a miss):

- expression: the mean of the expression's content-word maps points at the referred object;
  reported per expression type;
- colour / shape word: a colour word's map points at an object of that colour, a shape word's at
  an object of that shape;
- landmark word: in a relational expression ("the circle left of the red triangle"), each word of
  the landmark's phrase points at the landmark.

One expression per type per scene is drawn (seeded), so a run of N scenes scores about N
expressions of each type of the split.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from .checkpoint import CHECKPOINT_HELP, load_model
from .data.synthetic import (
    COLOURS,
    HELD_OUT_SPLITS,
    RELATIONS,
    SHAPES,
    SIZES,
    Description,
    Scene,
    draw_split_scene,
)
from .errors import ConfigError
from .grounding_maps import available_sources, compute_maps, default_source, word_positions
from .predictor import MagNetPredictor
from .visualize import heatmap_grid

log = logging.getLogger(__name__)

FIRST_HELD_OUT_SCENE = 1000  # validation during training reads scenes 0 .. 999 at most
FUNCTION_WORDS = frozenset({"the", "a", "an", "of", "to", "in", "on", "at", "from", "and"})
TARGETS = {"attribute": 90.0, "location": 90.0, "colour word": 90.0, "shape word": 90.0, "landmark word": 75.0}
# Relation phrases, longest first ("to the left of" before "left of").
RELATION_PHRASES = sorted((p for phrases in RELATIONS.values() for p in phrases), key=len, reverse=True)


@dataclass
class HeldOutScene:
    """A synthetic scene as the generator draws it, with the Scene that describes it."""

    index: int
    image: np.ndarray  # (S, S, 3) uint8
    labels: np.ndarray  # (S, S) uint8: 0 background, i + 1 object i
    scene: Scene
    expressions: dict[int, tuple[list[str], list[str]]]  # object -> (texts, types)


def held_out_scenes(
    split: str, count: int, seed: int = 0, image_size: int = 256, start: int = FIRST_HELD_OUT_SCENE
) -> Iterator[HeldOutScene]:
    """Scenes start .. start + count - 1 of a synthetic split (never "train")."""
    if split not in HELD_OUT_SPLITS:
        raise ConfigError(f"evaluate grounding on a held-out split, one of {HELD_OUT_SPLITS}")
    for index in range(start, start + count):
        scene, expressions, image, labels = draw_split_scene(split, index, seed, image_size)
        yield HeldOutScene(index, image, labels, scene, expressions)


def pick_expressions(sample: HeldOutScene, seed: int = 0) -> list[tuple[int, str, str]]:
    """One (object, text, type) per expression type present in the scene, drawn with a seeded rng."""
    rng = np.random.default_rng([seed, sample.index, 11])
    by_type: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for obj in sorted(sample.expressions):
        for text, kind in zip(*sample.expressions[obj]):
            by_type[kind].append((obj, text))
    return [(*by_type[kind][int(rng.integers(len(by_type[kind])))], kind) for kind in sorted(by_type)]


def landmark(scene: Scene, text: str) -> tuple[str, int] | None:
    """(prefix before the landmark's phrase, landmark object) of a relational expression."""
    for phrase in RELATION_PHRASES:
        marker = f" {phrase} the "
        if marker in text:
            prefix, name = text.split(marker, 1)
            words = name.split()
            description = Description(
                shape=next((w for w in words if w in SHAPES), None),
                colour=next((w for w in words if w in COLOURS), None),
                size=next((w for w in words if w in SIZES), None),
            )
            found = [i for i, obj in enumerate(scene.objects) if description.matches(obj)]
            return (f"{prefix}{marker}".strip(), found[0]) if len(found) == 1 else None
    return None


def peak_object(heat: np.ndarray, labels: np.ndarray) -> int | None:
    """Index of the object under the map's highest pixel, None for the background or a flat map."""
    if not heat.size or float(heat.max()) <= float(heat.min()):
        return None
    label = int(labels.flat[int(np.argmax(heat))])
    return label - 1 if label else None


def expression_map(maps: np.ndarray, positions: list[int]) -> np.ndarray:
    """Mean of the maps at `positions` (a word whose map is near zero, e.g. a word-drop map of a
    word that changes nothing, weighs little)."""
    return maps[positions].mean(axis=0)


class Tally:
    """Hits and trials per (source, category)."""

    def __init__(self) -> None:
        self.hits: dict[tuple[str, str], int] = defaultdict(int)
        self.trials: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, source: str, category: str, hit: bool) -> None:
        self.hits[source, category] += int(hit)
        self.trials[source, category] += 1

    def percent(self, source: str, category: str) -> float:
        trials = self.trials.get((source, category), 0)
        return 100.0 * self.hits[source, category] / trials if trials else math.nan

    def categories(self) -> list[str]:
        order = [
            "attribute",
            "location",
            "relational",
            "ordinal",
            "expression",
            "colour word",
            "shape word",
            "landmark word",
        ]
        present = {c for _, c in self.trials}
        return [c for c in order if c in present]


def score_expression(
    tally: Tally,
    source: str,
    maps: np.ndarray,
    tokens: list[str],
    sample: HeldOutScene,
    target: int,
    kind: str,
    landmark_tokens: tuple[list[int], int] | None,
) -> None:
    """Adds one expression's pointing games for one source to the tally."""
    objects = sample.scene.objects
    content = [i for i in word_positions(tokens) if tokens[i] not in FUNCTION_WORDS]
    if content:
        hit = peak_object(expression_map(maps, content), sample.labels) == target
        tally.add(source, kind, hit)
        tally.add(source, "expression", hit)
    for i in content:
        word = tokens[i]
        if word in COLOURS or word in SHAPES:
            obj = peak_object(maps[i], sample.labels)
            attribute = "colour" if word in COLOURS else "shape"
            hit = obj is not None and getattr(objects[obj], attribute) == word
            tally.add(source, f"{attribute} word", hit)
    if landmark_tokens is not None:
        positions, anchor = landmark_tokens
        for i in positions:
            tally.add(source, "landmark word", peak_object(maps[i], sample.labels) == anchor)


def evaluate_grounding(
    predictor: MagNetPredictor,
    splits: list[str],
    scenes: int,
    sources: list[str] | None = None,
    seed: int = 0,
    combine_with_mask: bool = False,
    progress: bool = True,
) -> dict:
    """Runs the benchmark: {"sources": {source: {category: percent}}, "trials": {category: count},
    "ranking": sources best first by the expression pointing game, ...}."""
    model = predictor.model
    sources = sources or available_sources(model)
    tally = Tally()
    total = len(splits) * scenes
    samples = (s for split in splits for s in held_out_scenes(split, scenes, seed))
    for sample in tqdm(samples, total=total, desc="grounding", disable=not progress):
        for target, text, kind in pick_expressions(sample, seed):
            encoded = predictor.encode(text)[0]
            pixels, size = predictor.prepare_image(sample.image)
            maps = compute_maps(
                model,
                predictor.tokenizer,
                pixels,
                size,
                encoded,
                sources,
                predictor.threshold,
                combine_with_mask,
                predictor.max_batch,
            )
            landmark_tokens = None
            if kind == "relational" and (found := landmark(sample.scene, text)) is not None:
                prefix, anchor = found
                start = len(predictor.encode(prefix)[0].tokens) - 1  # the prefix's tokens without [SEP]
                positions = [
                    i for i in word_positions(encoded.tokens) if i >= start and encoded.tokens[i] not in FUNCTION_WORDS
                ]
                landmark_tokens = (positions, anchor)
            for source in sources:
                score_expression(tally, source, maps[source], encoded.tokens, sample, target, kind, landmark_tokens)
    categories = tally.categories()
    table = {s: {c: round(tally.percent(s, c), 1) for c in categories} for s in sources}
    ranking = sorted(sources, key=lambda s: -np.nan_to_num(table[s].get("expression", math.nan), nan=-1.0))
    return {
        "splits": splits,
        "scenes_per_split": scenes,
        "first_scene": FIRST_HELD_OUT_SCENE,
        "seed": seed,
        "combine_with_mask": combine_with_mask,
        "metric": "pointing game, % of trials",
        "trials": {c: tally.trials.get((sources[0], c), 0) for c in categories},
        "sources": table,
        "ranking": ranking,
        "targets": TARGETS,
    }


def format_table(result: dict, default: str | None = None) -> str:
    """A Markdown table: one row per source (best first), one column per category, trials in the header."""
    categories = list(result["trials"])
    header = "| source | " + " | ".join(f"{c} (n={result['trials'][c]})" for c in categories) + " |"
    lines = [header, "|---" * (len(categories) + 1) + "|"]
    for source in result["ranking"]:
        cells = [f"{v:.1f}" if not math.isnan(v) else "-" for v in (result["sources"][source][c] for c in categories)]
        marker = " (default)" if source == default else ""
        lines.append(f"| {source}{marker} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_picture(
    predictor: MagNetPredictor, path: Path, sources: list[str], split: str = "testB", seed: int = 0
) -> str:
    """A PNG of one held-out relational expression's content-word maps, one row per source (each
    tile captioned "source: word"); returns the expression."""
    sample = next(s for s in held_out_scenes(split, 1000, seed) if "relational" in {k for *_, k in pick_expressions(s)})
    _, text, _ = next(e for e in pick_expressions(sample, seed) if e[2] == "relational")
    encoded = predictor.encode(text)[0]
    pixels, size = predictor.prepare_image(sample.image)
    maps = compute_maps(predictor.model, predictor.tokenizer, pixels, size, encoded, sources, predictor.threshold)
    content = [i for i in word_positions(encoded.tokens) if encoded.tokens[i] not in FUNCTION_WORDS]
    rows = []
    for source in sources:
        heats = [maps[source][i] / max(float(maps[source][i].max()), 1e-12) for i in content]
        titles = [f"{source}: {encoded.tokens[i]}" for i in content]
        rows.append(
            heatmap_grid(sample.image, heats, titles, cmap="inferno", opacity=0.6, columns=len(content), tile=128)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows)).quantize(colors=255).save(path, optimize=True)
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options (`python -m magnet evaluate-grounding`)."""
    parser.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    parser.add_argument(
        "--split",
        action="append",
        choices=HELD_OUT_SPLITS,
        help="synthetic split; repeat for several (default: testA and testB)",
    )
    parser.add_argument("--scenes", type=int, default=100, help="held-out scenes per split (default 100)")
    parser.add_argument("--source", action="append", help="evaluate only this source; repeat for several")
    parser.add_argument("--seed", type=int, default=0, help="the synthetic data's seed (training used 0)")
    parser.add_argument("--combine-with-mask", action="store_true", help="multiply each map by the mask probability")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    parser.add_argument(
        "--write-table",
        type=Path,
        default=None,
        metavar="FILE.json",
        help="write the results as JSON; the app shows assets/grounding/accuracy.json",
    )
    parser.add_argument(
        "--picture",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="also draw one relational expression's word maps, a row per source",
    )


def run(args: argparse.Namespace) -> int:
    """Evaluates, prints the table and optionally writes it."""
    if args.scenes < 1:
        raise ConfigError("--scenes must be at least 1")
    model = load_model(args.checkpoint, device=args.device)
    predictor = MagNetPredictor(model, device=args.device)
    result = evaluate_grounding(
        predictor, args.split or ["testA", "testB"], args.scenes, args.source, args.seed, args.combine_with_mask
    )
    result = {"checkpoint": Path(args.checkpoint).name, **result}
    default = default_source(model)[0]
    print(format_table(result, default))
    print(f"default source: {default}; best by the expression pointing game: {result['ranking'][0]}")
    if args.write_table is not None:
        args.write_table.parent.mkdir(parents=True, exist_ok=True)
        args.write_table.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.write_table}")
    if args.picture is not None:
        shown = result["ranking"][:3] + [s for s in result["ranking"][3:] if s in ("mask-grounding", "fusion-stage-3")]
        text = write_picture(predictor, args.picture, shown, seed=args.seed)
        print(f"wrote {args.picture} (“{text}”)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m magnet evaluate-grounding",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
