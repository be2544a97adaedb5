"""`python -m magnet` commands: predict, info, convert, average, download, train, evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import (
    CHECKPOINT_HELP,
    average_checkpoints,
    convert_checkpoint,
    count_parameters,
    download_released,
    load_model,
)
from .errors import exit_code_of
from .imageio import ImageError

if TYPE_CHECKING:
    from .batch import ImageJob
    from .predictor import Prediction


SYNTHETIC_ONLY_NOTE = (
    "note: this checkpoint was trained only on synthetic scenes of coloured shapes and knows nothing of real "
    "photos; for photos use the authors' released weights (python -m magnet download refcoco)"
)


def _expression_notes(prediction: Prediction, max_tokens: int) -> list[str]:
    """What to know about how the model read an expression (the same for every image)."""
    notes = []
    if prediction.truncated:
        notes.append(f"truncated to {max_tokens} tokens: {' '.join(prediction.tokens)}")
    if prediction.unknown_words:
        notes.append(f"unknown to the vocabulary: {', '.join(prediction.unknown_words)}")
    if prediction.unseen_words:
        notes.append(f"never seen in training (the model may ignore them): {', '.join(prediction.unseen_words)}")
    return notes


def _predict_jobs(args: argparse.Namespace) -> list[ImageJob]:
    """The images and expressions to run, checked before the model loads."""
    from .batch import InputError, image_jobs, read_pairs

    if args.pairs is None:
        return image_jobs(args.image, args.text)
    if args.text:
        raise InputError("--text goes with --image; with --pairs each line of the pairs file gives the expressions")
    return read_pairs(args.pairs)


def cmd_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from tqdm.auto import tqdm

    from .export import PredictionWriter
    from .imageio import load_image
    from .predictor import MagNetPredictor, trained_only_on_synthetic

    jobs = _predict_jobs(args)
    # One image file given as such keeps the single-image layout: its files directly in --out.
    single = args.pairs is None and len(args.image) == 1 and Path(args.image[0]).is_file()
    predictor = MagNetPredictor(
        load_model(args.checkpoint, device=args.device),
        threshold=args.threshold,
        flip_tta=args.flip_tta,
        edge_refine_radius=args.edge_refine_radius,
        single_region=args.single_region,
    )
    max_tokens = predictor.config.max_tokens
    noted: set[tuple[str, str]] = set()
    unseen = False  # some expression used a word the checkpoint never saw in training
    images = masks = empty = skipped = 0
    with PredictionWriter(args.out, args.format, overlay=args.overlay, per_image_folders=not single) as writer:
        for job in tqdm(jobs, desc="predict", unit="image", disable=single):
            try:
                photo = np.asarray(load_image(job.path))
            except ImageError as exc:
                if single:
                    raise
                skipped += 1
                tqdm.write(f"warning: {exc} (skipped)", file=sys.stderr)
                continue
            predictions = predictor.predict(photo, list(job.expressions))
            written = writer.write(photo, predictions, job.file_name, job.image_id)
            images, masks, empty = images + 1, masks + len(predictions), empty + sum(p.is_empty for p in predictions)
            unseen = unseen or any(p.unseen_words for p in predictions)
            for p in predictions:
                notes = _expression_notes(p, max_tokens)
                if single:
                    if p.is_empty:
                        notes.append(f"nothing above the threshold {args.threshold} (max probability {p.score:.2f})")
                    print(
                        f"{p.expression!r}: {100.0 * p.mask.mean():.1f}% of the image, max probability "
                        f"{p.score:.2f}" + "".join(f"\n  note: {n}" for n in notes)
                    )
                    continue
                for note in notes:
                    if (p.expression, note) not in noted:  # once per expression, not once per image
                        noted.add((p.expression, note))
                        tqdm.write(f"note: {p.expression!r}: {note}")
            if single and written:
                print("\n".join(f"wrote {path}" for path in written))
        results = writer.close()
    if unseen and trained_only_on_synthetic(predictor.model.provenance):
        print(SYNTHETIC_ONLY_NOTE)
    if results is not None and single:
        print(f"wrote {results}")
    if not single:
        if images == 0:
            raise ImageError(
                f"none of the {len(jobs)} images could be read (see the warnings above); "
                "give readable JPEG, PNG, WebP, BMP or TIFF files"
            )
        print(
            f"{images} image(s), {masks} mask(s) ({empty} with nothing above the threshold {args.threshold}): "
            f"{writer.files_written} file(s) written to {args.out}"
        )
        if skipped:
            print(f"warning: skipped {skipped} unreadable image(s) (see above)", file=sys.stderr)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    model = load_model(args.checkpoint, device="cpu")
    info = {
        "checkpoint": str(args.checkpoint),
        "provenance": model.provenance,
        "parameters": count_parameters(model),
        "mask_grounding_head": model.grounding is not None,
        "config": model.config.to_dict(),
    }
    print(json.dumps(info, indent=2))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    written = convert_checkpoint(
        args.source,
        args.target,
        half=args.half,
        keep_aspect=args.keep_aspect,
        edge_refine_radius=args.edge_refine_radius,
        single_region=args.single_region,
    )
    print(f"wrote {written}")
    return 0


def cmd_average(args: argparse.Namespace) -> int:
    print(f"wrote {average_checkpoints(args.sources, args.out, half=args.half)} (the average of {len(args.sources)})")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    path = download_released(args.name, cache_dir=args.cache_dir)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m magnet", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    from .export import FORMATS

    p = sub.add_parser("predict", help="segment what expressions refer to in one image or many")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    images = p.add_mutually_exclusive_group(required=True)
    images.add_argument(
        "--image",
        nargs="+",
        metavar="IMAGE",
        help="image file(s), folder(s) of images (sorted by name) or glob patterns such as "
        "'photos/*.jpg' (quoted); every image gets every --text",
    )
    images.add_argument(
        "--pairs",
        metavar="FILE.jsonl",
        help='JSON Lines, one {"image": path, "expression": text} (or "expressions": [...]) per '
        "line; paths relative to the file's folder",
    )
    p.add_argument("--text", action="append", help="an expression; repeat for several")
    p.add_argument(
        "--out",
        default="out",
        help="output folder: one image's files go in it, several images' in a subfolder per image",
    )
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="png",
        help="png: a 0/255 mask PNG per expression; rle: a COCO RLE JSON per expression; polygon: "
        "a JSON of COCO polygons per expression; coco: one COCO-style results.json for the run",
    )
    p.add_argument(
        "--overlay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write overlay.png per image: masks outlined in colour, with a legend",
    )
    p.add_argument("--threshold", type=float, default=0.5, help="pixels above this probability are the object")
    p.add_argument(
        "--flip-tta",
        action="store_true",
        help="also read each image mirrored (left/right swapped in the text) and average the masks: "
        "a little more accurate, twice the time",
    )
    p.add_argument(
        "--edge-refine-radius",
        type=int,
        default=None,
        metavar="PX",
        help="snap masks to the photo's edges with a guided filter of this radius in input pixels "
        "(0: off, the raw masks; default: the checkpoint's setting)",
    )
    p.add_argument(
        "--single-region",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cut a mask that falls apart into regions to its most certain one: an expression names one "
        "object (--no-single-region: every region; default: the checkpoint's setting)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("info", help="print a checkpoint's config, parameter count and provenance")
    p.add_argument("checkpoint")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert a checkpoint (e.g. magnet_refcoco.pth) to .safetensors")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--half", action="store_true", help="store float16 weights (half the file size)")
    p.add_argument(
        "--keep-aspect",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the written model reads non-square images with their aspect ratio kept, the shorter side "
        "at its input size (--no-keep-aspect: stretched to a square, the official pipeline; default: as the source)",
    )
    p.add_argument(
        "--edge-refine-radius",
        type=int,
        default=None,
        metavar="PX",
        help="the written model snaps its masks to the image's edges with a guided filter of this radius "
        "in input pixels (0: off, the official pipeline; default: as the source)",
    )
    p.add_argument(
        "--single-region",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the written model cuts a mask that falls apart into regions to its most certain one "
        "(--no-single-region: every region, the official pipeline; default: as the source)",
    )
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser(
        "average",
        help="average the weights of checkpoints of one model (e.g. a run's last states: weight averaging)",
    )
    p.add_argument("sources", nargs="+", help="checkpoints: .safetensors files or a run's checkpoints/step-*.pt")
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--half", action="store_true", help="store float16 weights (half the file size)")
    p.set_defaults(func=cmd_average)

    p = sub.add_parser("download", help="download one of the authors' released checkpoints (network)")
    p.add_argument("name", help="refcoco, refcoco+ or refcocog")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_download)

    from . import grounding_eval

    p = sub.add_parser(
        "evaluate-grounding",
        help="measure where word grounding maps point, per source",
        description=grounding_eval.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    grounding_eval.add_arguments(p)
    p.set_defaults(func=grounding_eval.run)

    # train and evaluate own their (long) option lists: listed here, parsed by their modules.
    sub.add_parser("train", help="train or fine-tune (see `train --help`)", add_help=False)
    sub.add_parser("evaluate", help="evaluate on a dataset (see `evaluate --help`)", add_help=False)
    return parser


def _delegated(command: str):
    if command == "train":
        from .train import main
    else:
        from .evaluate import main
    return main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)

    def run() -> int:
        if argv and argv[0] in ("train", "evaluate"):
            return _delegated(argv[0])(argv[1:])
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
        return args.func(args)

    return exit_code_of(run)
