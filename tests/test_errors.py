"""User errors print one readable line; bugs keep their traceback."""

from __future__ import annotations

import pytest
from PIL import Image

import magnet.cli
from magnet.checkpoint import CheckpointError, pick_device
from magnet.config import get_config
from magnet.errors import ConfigError, UserError
from magnet.imageio import ImageError
from magnet.predictor import ExpressionError


def test_every_user_error_shares_one_base():
    for error in (CheckpointError, ImageError, ExpressionError, ConfigError):
        assert issubclass(error, UserError)


def test_unknown_preset_and_device_are_config_errors():
    with pytest.raises(ConfigError, match="choose one of"):
        get_config("no-such-preset")
    with pytest.raises(ConfigError, match="unknown device 'banana'"):
        pick_device("banana")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "scene.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
    return str(path)


def test_cli_prints_a_user_error_as_one_line(checkpoint_dir, image, capsys):
    argv = ["predict", "--checkpoint", str(checkpoint_dir / "tiny-plain.safetensors"), "--image", image]
    assert magnet.cli.main(argv + ["--text", "the red one", "--device", "banana"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown device 'banana'") and "Traceback" not in err
    assert magnet.cli.main(argv + ["--text", "   "]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_cli_lets_a_bug_raise(monkeypatch, image, checkpoint_dir):
    def broken(args):
        return {}["a bug, not a user error"]

    monkeypatch.setattr(magnet.cli, "cmd_predict", broken)
    argv = ["predict", "--checkpoint", str(checkpoint_dir / "tiny-plain.safetensors"), "--image", image, "--text", "x"]
    with pytest.raises(KeyError):
        magnet.cli.main(argv)
