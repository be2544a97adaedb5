"""What the output pipeline adds to a prediction: the time of turning one mask probability map at
the model's input size into one at the photo's size, refined (`magnet.edge_refine`) against resized
(the official post-processing), and of cutting a photo-sized map to one region (`magnet.regions`),
for photos of several sizes.

    python -m magnet.benchmarks.edge_refine --threads 2
    python -m magnet.benchmarks.edge_refine --device cuda

Random images and probabilities (the filter's cost does not depend on their content); the input
shape is the one a `keep_aspect` model of --size reads each photo at. The refined time includes
reading the photo (a PIL image) as a tensor, as `MagNetPredictor.predict` does. The region cut
reads a map of two discs. Median of --runs calls after one untimed call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from PIL import Image

from ..checkpoint import pick_device
from ..data.transforms import input_shape
from ..edge_refine import photo_tensor, to_image_size
from ..regions import keep_one_region
from . import set_threads, synchronize

PHOTOS = ((256, 256), (480, 640), (1080, 1920), (3024, 4032))


def refine_photo(prob: torch.Tensor, pixels: torch.Tensor, image: Image.Image, radius: int) -> torch.Tensor:
    """What the predictor does per expression: the photo read as a tensor, the map refined against it."""
    return to_image_size(prob, pixels, (image.height, image.width), radius, photo_tensor(image, prob.device))


def two_discs(height: int, width: int, device: torch.device) -> torch.Tensor:
    """A (1, 1, H, W) probability map of two separate discs, the case the region cut has work in."""
    y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    radius = min(height, width) / 6
    prob = torch.zeros(height, width)
    for cx, p in ((width / 4, 0.9), (3 * width / 4, 0.7)):
        prob[(x - cx) ** 2 + (y - height / 2) ** 2 < radius**2] = p
    return prob[None, None].to(device)


def median_ms(call: Callable[[], object], device: torch.device, runs: int) -> float:
    call()
    times = []
    for _ in range(runs):
        synchronize(device)
        start = time.perf_counter()
        call()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(prog="python -m magnet.benchmarks.edge_refine", description=__doc__)
    parser.add_argument(
        "--size", type=int, default=192, help="the model's input size (default: the default checkpoint's)"
    )
    parser.add_argument("--radius", type=int, default=6, help="filter radius in input pixels (default: 6)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--photo",
        action="append",
        default=None,
        metavar="HxW",
        help="photo size, repeatable (default: 256x256, 480x640, 1080x1920, 3024x4032)",
    )
    args = parser.parse_args(argv)
    photos = [tuple(int(v) for v in p.lower().split("x")) for p in args.photo] if args.photo else PHOTOS
    threads = set_threads(args.threads)
    device = pick_device(args.device)
    generator = torch.Generator().manual_seed(0)
    rows = []
    print(f"input {args.size} px (aspect kept), radius {args.radius}, {device}, {threads} threads")
    print("| photo | model input | resized (ms) | refined (ms) | one region (ms) |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for height, width in photos:
        h, w = input_shape(height, width, args.size, keep_aspect=True)
        prob = torch.rand(1, 1, h, w, generator=generator).to(device)
        pixels = torch.randn(1, 3, h, w, generator=generator).to(device)
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        resized = median_ms(partial(to_image_size, prob, pixels, (height, width)), device, args.runs)
        refined = median_ms(partial(refine_photo, prob, pixels, image, args.radius), device, args.runs)
        one_region = median_ms(partial(keep_one_region, two_discs(height, width, device)), device, args.runs)
        rows.append(
            {
                "height": height,
                "width": width,
                "resized_ms": resized,
                "refined_ms": refined,
                "one_region_ms": one_region,
            }
        )
        print(f"| {width} x {height} | {w} x {h} | {resized:.1f} | {refined:.1f} | {one_region:.1f} |")
    return rows


if __name__ == "__main__":
    main()
