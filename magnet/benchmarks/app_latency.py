"""Click-to-result latency of the app over its API (gradio_client), and throughput under load.

    python -m magnet.benchmarks.app_latency                       # starts app.py on the default checkpoint, CPU
    python -m magnet.benchmarks.app_latency --checkpoint PATH --device cuda
    python -m magnet.benchmarks.app_latency --url http://127.0.0.1:7860/   # measure a running app

Prints p50 / p95 latency of /segment for one expression over --calls sequential calls, then the
throughput of --clients concurrent clients (each with its own session) doing the same.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "magnet-synthetic-cpu.safetensors"
EXAMPLES = ROOT / "assets" / "examples.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(checkpoint: Path, device: str, timeout: float = 180.0) -> Iterator[str]:
    """Starts `app.py` in a subprocess and yields its URL; stops it afterwards."""
    if not checkpoint.exists():
        sys.exit(f"checkpoint not found: {checkpoint} (run `make checkpoint`, or pass --checkpoint / --url)")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [
        sys.executable,
        str(ROOT / "app.py"),
        "--checkpoint",
        str(checkpoint),
        "--device",
        device,
        "--port",
        str(port),
    ]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    sys.exit(f"app.py exited with {process.returncode}:\n{log.read().decode(errors='replace')[-2000:]}")
                try:
                    urllib.request.urlopen(url + "gradio_api/info", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        sys.exit(f"app.py did not answer within {timeout} s")
                    time.sleep(0.5)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


def benchmark_image(path: Path | None) -> tuple[Path, str]:
    """(image, expression): the given image, else the first example, else a 640x480 synthetic scene."""
    if path is not None:
        return path, "the object in the middle"
    if EXAMPLES.is_file():
        first = json.loads(EXAMPLES.read_text())[0]
        return ROOT / first["image"], first["expressions"][0]
    image = np.full((480, 640, 3), 200, dtype=np.uint8)
    image[140:340, 100:300] = (200, 30, 30)
    target = Path(tempfile.gettempdir()) / "magnet-benchmark.png"
    Image.fromarray(image).save(target)
    return target, "the red square"


def timed_calls(url: str, image: Path, expression: str, calls: int, download: bool = True) -> list[float]:
    """Seconds per /segment call, one client, sequential; `download=False` leaves the result files
    (mask PNGs, zip, overlay, probability maps) on the server, as a browser fetches them lazily."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=download)
    latencies = []
    for _ in range(calls):
        start = time.perf_counter()
        client.predict(handle_file(str(image)), expression, 0.5, api_name="/segment")
        latencies.append(time.perf_counter() - start)
    return latencies


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


@contextmanager
def given_app(url: str) -> Iterator[str]:
    yield url if url.endswith("/") else url + "/"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running app; default: start app.py here")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"])
    parser.add_argument("--image", type=Path, default=None)
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)

    image, expression = benchmark_image(args.image)
    with running_app(args.checkpoint, args.device) if args.url is None else given_app(args.url) as url:
        timed_calls(url, image, expression, args.warmup)
        latencies = timed_calls(url, image, expression, args.calls)
        no_download = timed_calls(url, image, expression, args.calls, download=False)
        per_client = max(1, args.calls // args.clients)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            loaded = [
                t
                for ts in pool.map(lambda _: timed_calls(url, image, expression, per_client), range(args.clients))
                for t in ts
            ]
        wall = time.perf_counter() - start

    size = Image.open(image).size
    print(
        f"app latency: /segment, 1 expression, image {size[0]}x{size[1]}, {args.checkpoint.name if not args.url else url}, "
        f"device {args.device}"
    )
    print(
        f"  sequential ({args.calls} calls): p50 {percentile(latencies, 50) * 1000:.0f} ms, "
        f"p95 {percentile(latencies, 95) * 1000:.0f} ms, mean {statistics.mean(latencies) * 1000:.0f} ms"
    )
    print(
        f"  sequential, result files left on the server ({args.calls} calls): "
        f"p50 {percentile(no_download, 50) * 1000:.0f} ms, p95 {percentile(no_download, 95) * 1000:.0f} ms"
    )
    print(
        f"  {args.clients} concurrent clients ({len(loaded)} calls): {len(loaded) / wall:.2f} calls/s, "
        f"p50 {percentile(loaded, 50) * 1000:.0f} ms, p95 {percentile(loaded, 95) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
