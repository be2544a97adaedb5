"""Fixtures shared by the test files: tiny random-weight checkpoints and a running app server.
The tiny models themselves are built by tests/helpers.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import TINY_GROUNDING, save_tiny_checkpoint

__all__ = ["TINY_GROUNDING", "save_tiny_checkpoint"]  # some test files import these from here

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """checkpoints/ with a shallow tiny model with a Mask Grounding head (tiny-grounding), one
    without (tiny-plain, another seed), and a broken file (magnet_broken.pth)."""
    directory = tmp_path_factory.mktemp("checkpoints")
    save_tiny_checkpoint(directory / "tiny-grounding.safetensors", with_grounding=True)
    save_tiny_checkpoint(directory / "tiny-plain.safetensors", with_grounding=False, seed=1)
    (directory / "magnet_broken.pth").write_bytes(b"not a checkpoint")
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class AppServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until_up(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 150.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app exited with {process.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url + "gradio_api/info", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"app did not answer within {timeout} s:\n{log_path.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="session")
def app_server(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """`python app.py` on a free port with the tiny checkpoint on CPU; stopped after the session."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("app") / "server.log"
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "PYTHONUNBUFFERED": "1",
        "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio-cache")),
    }
    command = [
        sys.executable,
        str(ROOT / "app.py"),
        "--checkpoint",
        str(checkpoint_dir / "tiny-grounding.safetensors"),
        "--checkpoint-dir",
        str(checkpoint_dir),
        "--device",
        "cpu",
        "--port",
        str(port),
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, process, log_path)
        yield AppServer(url, process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
