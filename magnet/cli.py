"""`python -m magnet` commands: predict, info, convert, download, train, evaluate."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .imageio import ImageError
from .predictor import ExpressionError

USER_ERRORS = (CheckpointError, RuntimeError, ImageError, ExpressionError, FileNotFoundError, KeyError, ValueError)


def cmd_predict(args: argparse.Namespace) -> int:
    from .checkpoint import load_model
    from .predictor import MagNetPredictor
    from .export import save_prediction_files

    predictor = MagNetPredictor(load_model(args.checkpoint, device=args.device), threshold=args.threshold)
    predictions = predictor.predict(args.image, args.text, with_grounding=False)
    out = Path(args.out)
    written = save_prediction_files(args.image, predictions, out)
    for p in predictions:
        notes = []
        if p.truncated:
            notes.append(f"truncated to {predictor.config.max_tokens} tokens: {' '.join(p.tokens)}")
        if p.unknown_words:
            notes.append(f"unknown to the vocabulary: {', '.join(p.unknown_words)}")
        if p.is_empty:
            notes.append(f"nothing above the threshold {args.threshold} (max probability {p.score:.2f})")
        area = 100.0 * p.mask.mean()
        print(f"{p.expression!r}: {area:.1f}% of the image, max probability {p.score:.2f}"
              + "".join(f"\n  note: {n}" for n in notes))
    for path in written:
        print(f"wrote {path}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoint import count_parameters, load_model

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
    from .checkpoint import convert_checkpoint

    print(f"wrote {convert_checkpoint(args.source, args.target, half=args.half)}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .checkpoint import download_released

    path = download_released(args.name, cache_dir=args.cache_dir)
    print(path)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m magnet", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="segment what expressions refer to in an image")
    p.add_argument("--checkpoint", required=True, help="our .safetensors or an official magnet_*.pth")
    p.add_argument("--image", required=True)
    p.add_argument("--text", action="append", required=True, help="an expression; repeat for several")
    p.add_argument("--out", default="out", help="folder for mask PNGs and the overlay")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("info", help="print a checkpoint's config, parameter count and provenance")
    p.add_argument("checkpoint")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("convert", help="convert a checkpoint (e.g. magnet_refcoco.pth) to .safetensors")
    p.add_argument("source")
    p.add_argument("target")
    p.add_argument("--half", action="store_true", help="store float16 weights (half the file size)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("download", help="download one of the authors' released checkpoints (network)")
    p.add_argument("name", help="refcoco, refcoco+ or refcocog")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_download)

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
    try:
        if argv and argv[0] in ("train", "evaluate"):
            return _delegated(argv[0])(argv[1:])
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
        return args.func(args)
    except USER_ERRORS as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
