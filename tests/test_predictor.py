"""The predictor on every kind of user input: image modes, orientation, sizes, expressions."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from magnet.checkpoint import load_model, save_checkpoint
from magnet.cli import main as cli_main
from magnet.data.augment import flip_expression
from magnet.imageio import ImageError, load_image
from magnet.predictor import ExpressionError, MagNetPredictor
from tests.helpers import tiny_model


@pytest.fixture(scope="module")
def predictor():
    return MagNetPredictor(tiny_model(), device="cpu")


def scene(width: int = 90, height: int = 60) -> Image.Image:
    """An asymmetric picture: a red block in the top-left corner on a gradient."""
    x = np.linspace(0, 255, width, dtype=np.float32)
    array = np.stack([np.tile(x, (height, 1))] * 3, -1).astype(np.uint8)
    array[: height // 3, : width // 4] = (255, 0, 0)
    return Image.fromarray(array)


def test_masks_come_back_at_the_original_resolution(predictor):
    results = predictor.predict(scene(90, 60), ["the red block", "the background"])
    assert len(results) == 2
    for r in results:
        assert r.mask.shape == (60, 90) and r.mask.dtype == bool
        assert r.probability.shape == (60, 90)
        assert r.tokens[0] == "[CLS]" and r.tokens[-1] == "[SEP]"


def test_batch_of_expressions_equals_single_calls(predictor):
    assert predictor.max_batch == 8  # a 64 px model batches on CPU too (default_max_batch)
    texts = ["left block", "the thing on the right side", "it"]
    batched = MagNetPredictor(predictor.model, device="cpu", max_batch=8).predict(scene(), texts)
    for text, b in zip(texts, batched):
        single = predictor.predict(scene(), text)[0]
        assert np.abs(single.probability - b.probability).max() < 1e-4  # batched matmuls round differently


def test_flip_tta_averages_the_direct_and_the_mirrored_reading(predictor):
    image = scene(64, 64)  # the tiny model's input size: no resizing, so mirroring commutes exactly
    text = "the block on the left"
    direct = predictor.predict(image, text)[0].probability
    mirrored = predictor.predict(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flip_expression(text))[0]
    assert mirrored.expression == "the block on the right"
    both = predictor.predict(image, text, flip_tta=True)[0]
    assert np.abs(both.probability - (direct + mirrored.probability[:, ::-1]) / 2).max() < 1e-5
    assert np.abs(direct - mirrored.probability[:, ::-1]).max() > 1e-3  # the two readings differ
    assert both.expression == text and both.tokens == predictor.predict(image, text)[0].tokens
    tta = MagNetPredictor(predictor.model, device="cpu", flip_tta=True)
    assert np.array_equal(tta.predict(image, text)[0].probability, both.probability)


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_every_image_mode_is_accepted(predictor, mode, tmp_path):
    image = scene()
    if mode == "I;16":
        converted = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    elif mode == "F":
        converted = Image.fromarray(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
    else:
        converted = image.convert(mode)
    ext = "tiff" if mode in ("CMYK", "I", "F") else "png"
    path = tmp_path / f"img.{ext}"
    converted.save(path)
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (90, 60)
    if mode in ("I;16", "L", "F"):  # brightness kept, not saturated by the bit depth
        assert abs(np.asarray(rgb)[..., 0].mean() - np.asarray(image.convert("L")).mean()) < 3
    assert predictor.predict(path, "the block")[0].mask.shape == (60, 90)


def test_numpy_inputs(predictor):
    array = np.asarray(scene())
    for candidate in (array, array.astype(np.float32) / 255, array[..., 0], (array.astype(np.uint16) * 257)):
        assert predictor.predict(candidate, "the block")[0].mask.shape == (60, 90)
    with pytest.raises(ImageError, match="shape"):
        predictor.predict(np.zeros((4, 4, 5), np.uint8), "x")


def test_exif_rotated_photo_lines_up_with_what_a_viewer_shows(predictor, tmp_path):
    upright = scene(90, 60)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # the camera stored it rotated
    exif = Image.Exif()
    exif[0x0112] = 6  # viewers rotate 90 degrees clockwise to show it
    path = tmp_path / "rotated.jpg"
    stored.save(path, exif=exif.tobytes(), quality=98)
    (tmp_path / "upright.jpg").write_bytes(b"")
    upright.save(tmp_path / "upright.jpg", quality=98)
    rotated = predictor.predict(path, "the red block")[0]
    reference = predictor.predict(tmp_path / "upright.jpg", "the red block")[0]
    assert rotated.mask.shape == (60, 90)
    assert np.abs(rotated.probability - reference.probability).mean() < 0.02


def test_bad_files_give_clear_errors(predictor, tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError, match="not an image"):
        predictor.predict(tmp_path / "notes.txt", "x")
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        predictor.predict(tmp_path / "cut.png", "x")
    with pytest.raises(ImageError, match="not found"):
        predictor.predict(tmp_path / "missing.png", "x")


def test_decompression_bombs_are_refused_and_large_images_downscaled(predictor, tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12000, 10000)).save(bomb)  # 120 MP, a few KB on disk
    with pytest.raises(ImageError, match="MP|decompression"):
        predictor.predict(bomb, "x")
    big = load_image(Image.new("RGB", (8000, 2000)))
    assert big.size == (4096, 1024)


def test_expressions_empty_long_and_non_ascii(predictor):
    for bad in ("", "   \n\t", []):
        with pytest.raises(ExpressionError):
            predictor.predict(scene(), bad)
    long = " ".join(["the big red square next to the small circle"] * 4)
    result = predictor.predict(scene(), long)[0]
    assert result.truncated and len(result.tokens) == 20 and result.tokens[-1] != "[SEP]"
    accented = predictor.predict(scene(), "café table ☃")[0]
    assert accented.tokens[1] == "cafe" and accented.unknown_words == ["☃"]


def test_unseen_words_are_the_expression_words_missing_from_the_training_vocabulary(predictor, tmp_path):
    assert predictor.predict(scene(), "the red block")[0].unseen_words is None  # no record of its training words
    provenance = {"vocabulary": ["block", "red", "s", "the"], "data": "synthetic"}
    path = save_checkpoint(tiny_model(shallow=True), tmp_path / "vocabulary.safetensors", provenance=provenance)
    trained = MagNetPredictor(load_model(path, device="cpu"), device="cpu")
    seen, unseen = trained.predict(scene(), ["The red block.", "the man's red HAT, left of the hat"])
    assert seen.unseen_words == []
    assert unseen.unseen_words == ["man", "hat", "left", "of"]  # each once, in order; "'s" was seen


def test_cli_predict_writes_masks_and_reports_problems(checkpoint_dir, tmp_path, capsys):
    def predict(image: str, *texts: str) -> int:
        argv = ["predict", "--checkpoint", str(checkpoint_dir / "tiny-plain.safetensors"), "--device", "cpu"]
        argv += ["--image", str(tmp_path / image), "--out", str(tmp_path / "out")]
        return cli_main(argv + [arg for text in texts for arg in ("--text", text)])

    scene(90, 60).save(tmp_path / "scene.png")
    assert predict("scene.png", "the red block", "the gradient") == 0
    masks = sorted((tmp_path / "out").glob("mask_*.png"))
    assert [m.name for m in masks] == ["mask_01_the-red-block.png", "mask_02_the-gradient.png"]
    assert Image.open(masks[0]).size == (90, 60)
    assert (tmp_path / "out" / "overlay.png").exists()
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    assert predict("bad.png", "x") == 2
    assert predict("scene.png", "  ") == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_default_batching_depends_on_device_and_input_size():
    from magnet.predictor import default_max_batch

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_max_batch(cpu, 480) == 1 and default_max_batch(cpu, 256) == 1  # one by one is cheaper
    assert default_max_batch(cpu, 96) == 8 and default_max_batch(cuda, 480) == 8
