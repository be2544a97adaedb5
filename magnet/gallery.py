"""The app's examples gallery: synthetic scenes the default model segments right.

    python -m magnet.gallery --checkpoint checkpoints/magnet-synthetic-cpu.safetensors --out assets

Scenes come from the synthetic testA and testB splits (seed 0), starting after the scenes that
`python -m magnet evaluate` scores, so the gallery never overlaps the reported figures. A scene is
kept when the model reaches --min-iou on at least two of its objects; the gallery takes scenes
until it has --scenes of them, at least --relational relational and --ordinal ordinal expressions. Writes the scene
images, one ground-truth mask per expression (assets/masks/) and examples.json with the IoUs.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .checkpoint import load_model
from .data.synthetic import SyntheticStream
from .metrics import mask_iou
from .predictor import MagNetPredictor

FIRST_SCENE = 1000  # evaluation scores the first `synthetic_val_scenes` scenes of a split (300 by default)


@dataclass
class GalleryScene:
    """One scene of the gallery: its image and the expressions the model got right."""

    image: np.ndarray
    expressions: list[str] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    ious: list[float] = field(default_factory=list)


def score_scene(predictor: MagNetPredictor, stream: SyntheticStream, index: int, min_iou: float) -> GalleryScene:
    """One expression of each object (types taken in turn), kept where the model's IoU >= min_iou."""
    image, labels, expressions = stream.scene(index)
    found = GalleryScene(image)
    objects = sorted(expressions)
    choice = [n % len(expressions[o][0]) for n, o in enumerate(objects)]
    texts = [expressions[o][0][c] for o, c in zip(objects, choice)]
    for obj, c, prediction in zip(objects, choice, predictor.predict(image, texts)):
        target = labels == obj + 1
        iou = mask_iou(prediction.mask, target)  # the target object is never empty
        if iou >= min_iou:
            found.expressions.append(prediction.expression)
            found.types.append(expressions[obj][1][c])
            found.masks.append(target)
            found.ious.append(round(iou, 3))
    return found


def pick_scenes(
    predictor: MagNetPredictor, scenes: int, quotas: dict[str, int], min_iou: float, max_tries: int = 2000
) -> list[GalleryScene]:
    """Alternates testA and testB scenes until the gallery is full and holds at least quotas[type]
    expressions of each type named (ValueError when it cannot be)."""
    tokenizer = predictor.tokenizer
    streams = [
        SyntheticStream(split, FIRST_SCENE + max_tries, 0, 256, tokenizer, predictor.model.config.image_size)
        for split in ("testA", "testB")
    ]
    picked: list[GalleryScene] = []

    def missing() -> dict[str, int]:
        counts = {kind: sum(t == kind for s in picked for t in s.types) for kind in quotas}
        return {kind: quotas[kind] - counts[kind] for kind in quotas if counts[kind] < quotas[kind]}

    for index in range(FIRST_SCENE, FIRST_SCENE + max_tries):
        for stream in streams:
            scene = score_scene(predictor, stream, index, min_iou)
            lacking = missing()
            brings = any(t in lacking for t in scene.types)
            # the last slots are kept for scenes that bring a type still missing
            if len(scene.expressions) >= 2 and (brings or sum(lacking.values()) < scenes - len(picked)):
                picked.append(scene)
                if len(picked) == scenes:
                    return picked
    raise ValueError(
        f"only {len(picked)} of {scenes} scenes with {quotas} reached IoU {min_iou} in {max_tries} "
        "tries; lower --min-iou or train the model longer"
    )


def write_gallery(picked: list[GalleryScene], out: Path) -> Path:
    """scene-NN.png, masks/scene-NN-K.png (0/255) and examples.json in `out`, replacing an earlier
    gallery's scene files."""
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for stale in [*out.glob("scene-*.png"), *(out / "masks").glob("scene-*.png")]:
        stale.unlink()
    entries = []
    for n, scene in enumerate(picked, 1):
        name = f"scene-{n:02d}"
        Image.fromarray(scene.image).save(out / f"{name}.png")
        masks = []
        for k, mask in enumerate(scene.masks):
            masks.append(f"{out.name}/masks/{name}-{k}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{name}-{k}.png")
        entries.append(
            {
                "image": f"{out.name}/{name}.png",
                "expressions": scene.expressions,
                "types": scene.types,
                "masks": masks,
                "iou": scene.ious,
            }
        )
    path = out / "examples.json"
    path.write_text(json.dumps(entries, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m magnet.gallery", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default="checkpoints/magnet-synthetic-cpu.safetensors")
    parser.add_argument("--out", type=Path, default=Path("assets"))
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--relational", type=int, default=3, help="at least this many relational expressions")
    parser.add_argument("--ordinal", type=int, default=2, help="at least this many ordinal expressions")
    parser.add_argument("--min-iou", type=float, default=0.85)
    args = parser.parse_args(argv)
    try:  # CheckpointError is a ValueError too
        predictor = MagNetPredictor(load_model(args.checkpoint, device="cpu"), device="cpu")
        picked = pick_scenes(
            predictor, args.scenes, {"relational": args.relational, "ordinal": args.ordinal}, args.min_iou
        )
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"wrote {write_gallery(picked, args.out)}")
    for scene in picked:
        print(" | ".join(f"{e} ({t}, {iou:.3f})" for e, t, iou in zip(scene.expressions, scene.types, scene.ious)))


if __name__ == "__main__":
    main()
