"""`python -m magnet predict` over many images, its export formats, and the app's zip of masks."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from magnet import app_logic as logic
from magnet.checkpoint import save_checkpoint
from magnet.cli import main as cli_main
from magnet.data.masks import polygons_to_mask, rle_decode
from magnet.export import coco_entry, mask_bbox, mask_polygons
from magnet.metrics import mask_iou
from magnet.visualize import annotated_overlay, hex_to_rgb
from tests.helpers import tiny_model


def write_image(path: Path, width: int = 40, height: int = 30, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)) == 255


@pytest.fixture(scope="module")
def checkpoint(checkpoint_dir: Path) -> str:
    return str(checkpoint_dir / "tiny-plain.safetensors")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two images of different sizes, a text file and a corrupt .png."""
    folder = tmp_path_factory.mktemp("photos")
    write_image(folder / "b.png", 40, 30, seed=1)
    write_image(folder / "a.jpg", 32, 48, seed=2)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG garbage")
    return folder


def predict(checkpoint: str, *args: str) -> int:
    return cli_main(["predict", "--checkpoint", checkpoint, "--device", "cpu", *args])


def test_folder_gives_a_subfolder_per_image_and_skips_unreadable_ones(checkpoint, photos, tmp_path, capsys):
    out = tmp_path / "out"
    texts = ["--text", "the left one", "--text", "the sky"]
    assert predict(checkpoint, "--image", str(photos), *texts, "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    for name, size in (("a", (32, 48)), ("b", (40, 30))):
        files = sorted(p.name for p in (out / name).iterdir())
        assert files == ["mask_01_the-left-one.png", "mask_02_the-sky.png", "overlay.png"]
        assert Image.open(out / name / "mask_01_the-left-one.png").size == size
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "skipped" in captured.err and "Traceback" not in captured.err
    assert "2 image(s), 4 mask(s)" in captured.out


def test_glob_patterns_and_several_images_in_one_option(checkpoint, photos, tmp_path):
    out = tmp_path / "glob"
    assert predict(checkpoint, "--image", str(photos / "*.jpg"), "--text", "x", "--out", str(out), "--no-overlay") == 0
    assert [p.name for p in (out / "a").iterdir()] == ["mask_01_x.png"]
    other = write_image(tmp_path / "elsewhere" / "a.png", 20, 20)  # same stem as a.jpg: its own folder
    out = tmp_path / "many"
    assert predict(checkpoint, "--image", str(photos / "a.jpg"), str(other), "--text", "x", "--out", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a", "a-2"]


def test_every_format_describes_the_same_masks(checkpoint, photos, tmp_path):
    texts = ["--text", "the left one", "--text", "the sky"]
    for fmt in ("png", "rle", "polygon", "coco"):
        out = tmp_path / fmt
        assert predict(checkpoint, "--image", str(photos / "a.*"), *texts, "--format", fmt, "--out", str(out)) == 0
    results = json.loads((tmp_path / "coco" / "results.json").read_text())
    assert [(r["image_id"], r["file_name"], r["expression"]) for r in results] == [
        (1, str(photos / "a.jpg"), "the left one"),
        (1, str(photos / "a.jpg"), "the sky"),
    ]
    assert sorted(p.name for p in (tmp_path / "coco").iterdir()) == ["a", "results.json"]  # a: the overlay
    for result in results:
        folder = Path(result["file_name"]).stem
        stem = "mask_01_the-left-one" if result["expression"] == "the left one" else "mask_02_the-sky"
        mask = read_png(tmp_path / "png" / folder / f"{stem}.png")
        assert np.array_equal(rle_decode(result["segmentation"]), mask)
        assert result["area"] == mask.sum() and result["bbox"] == mask_bbox(mask) and 0 <= result["score"] <= 1
        rle = json.loads((tmp_path / "rle" / folder / f"{stem}.json").read_text())
        assert rle == result
        polygon = json.loads((tmp_path / "polygon" / folder / f"{stem}.json").read_text())
        assert polygon["size"] == list(mask.shape) and polygon["area"] == result["area"]
        drawn = polygons_to_mask(polygon["segmentation"], mask.shape)
        # outer contours only: holes get filled and specks of 1-2 pixels dropped (random weights: noisy masks)
        assert drawn[mask].mean() > 0.95 if mask.any() else not drawn.any()


def test_pairs_file_merges_lines_per_image_and_keeps_ids(checkpoint, photos, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_image(tmp_path / "images" / "c.png", 24, 24)
    pairs.write_text(
        json.dumps({"image": "images/c.png", "expression": "the dog", "image_id": 7})
        + "\n\n"
        + json.dumps({"image": str(photos / "b.png"), "expressions": ["a cat", "a car"]})
        + "\n"
        + json.dumps({"image": "images/c.png", "expression": "the cat"})
        + "\n"
    )
    assert predict(checkpoint, "--pairs", str(pairs), "--format", "coco", "--out", str(tmp_path / "out")) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["image_id"], r["file_name"], r["expression"]) for r in results] == [
        (7, "images/c.png", "the dog"),
        (7, "images/c.png", "the cat"),
        (2, str(photos / "b.png"), "a cat"),
        (2, str(photos / "b.png"), "a car"),
    ]
    assert rle_decode(results[0]["segmentation"]).shape == (24, 24)


def test_single_image_keeps_its_files_directly_in_out(checkpoint, photos, tmp_path, capsys):
    out = tmp_path / "one"
    assert (
        predict(checkpoint, "--image", str(photos / "b.png"), "--text", "x", "--format", "coco", "--out", str(out)) == 0
    )
    assert sorted(p.name for p in out.iterdir()) == ["overlay.png", "results.json"]
    assert f"wrote {out / 'results.json'}" in capsys.readouterr().out


def test_predict_names_the_words_the_checkpoint_never_saw(checkpoint, photos, tmp_path, capsys):
    provenance = {"vocabulary": ["left", "one", "the"], "data": "synthetic"}
    trained = save_checkpoint(tiny_model(shallow=True), tmp_path / "vocabulary.safetensors", provenance=provenance)
    texts = ["--text", "the left one", "--text", "the purple sky"]
    for image, out in ((photos / "b.png", "one"), (photos, "many")):
        assert predict(str(trained), "--image", str(image), *texts, "--out", str(tmp_path / out)) == 0
        printed = capsys.readouterr().out
        assert printed.count("never seen in training") == 1  # once per expression, however many images
        assert "never seen in training (the model may ignore them): purple, sky" in printed
        assert printed.count("trained only on synthetic scenes") == 1  # and where to go for photos, once
    assert predict(checkpoint, "--image", str(photos / "b.png"), *texts, "--out", str(tmp_path / "plain")) == 0
    printed = capsys.readouterr().out
    assert "never seen" not in printed and "synthetic" not in printed  # no record of its training words


@pytest.mark.parametrize(
    "args, fix",
    [
        (["--image", "{photos}/*.webp", "--text", "x"], "quote it"),
        (["--image", "{tmp}/empty", "--text", "x"], "no image files"),
        (["--image", "{tmp}/missing.png", "--text", "x"], "image not found"),
        (["--image", "{photos}/broken.png", "{photos}/notes.txt", "--text", "x"], "none of the 2 images"),
        (["--image", "{photos}", "--text", " "], "describe the object"),
        (["--image", "{photos}"], "add --text"),
        (["--pairs", "{tmp}/bad-json.jsonl"], "line 2: Expecting"),
        (["--pairs", "{tmp}/no-expression.jsonl"], '"expression" (a string)'),
        (["--pairs", "{tmp}/bad-json.jsonl", "--text", "x"], "--text goes with --image"),
        (["--pairs", "{tmp}/missing.jsonl"], "pairs file not found"),
    ],
)
def test_user_errors_are_one_line_naming_the_fix(checkpoint, photos, tmp_path, capsys, args, fix):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad-json.jsonl").write_text('{"image": "a.png", "expression": "x"}\n{"image": "a.png",\n')
    (tmp_path / "no-expression.jsonl").write_text('{"image": "a.png"}\n')
    args = [a.format(photos=photos, tmp=tmp_path) for a in args]
    assert predict(checkpoint, *args, "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert "error:" in err and fix in err and "Traceback" not in err


@pytest.mark.parametrize(
    "name, mask",
    [
        ("empty", np.zeros((7, 5), bool)),
        ("full", np.ones((7, 5), bool)),
        ("corners", np.pad(np.zeros((5, 3), bool), 1, constant_values=True)),
        (
            "first and last pixel",
            np.eye(1, 35, 0, dtype=bool).reshape(7, 5) | np.eye(1, 35, 34, dtype=bool).reshape(7, 5),
        ),
        ("random", np.random.default_rng(0).random((37, 23)) < 0.5),
    ],
)
def test_coco_rle_written_and_read_back_equals_the_mask(name, mask):
    entry = json.loads(json.dumps(coco_entry(mask, "it", 0.9, 1, "a.png")))
    assert isinstance(entry["segmentation"]["counts"], str) and entry["segmentation"]["size"] == list(mask.shape)
    assert np.array_equal(rle_decode(entry["segmentation"]), mask)
    assert entry["area"] == mask.sum() and entry["score"] == 0.9


def test_bbox_is_coco_xywh():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    assert mask_bbox(mask) == [3, 2, 6, 3] and mask_bbox(np.zeros((4, 4), bool)) == [0, 0, 0, 0]


def disc(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    y, x = np.mgrid[: shape[0], : shape[1]]
    return (x - center[0]) ** 2 + (y - center[1]) ** 2 <= radius**2


def test_polygons_rasterised_back_cover_the_mask():
    for mask in (disc((60, 80), (30, 25), 18), disc((40, 40), (0, 20), 15)):  # the second touches the border
        polygons = mask_polygons(mask)
        assert len(polygons) == 1 and len(polygons[0]) % 2 == 0 and len(polygons[0]) >= 6
        assert mask_iou(polygons_to_mask(polygons, mask.shape), mask) > 0.9
    two = disc((50, 50), (12, 12), 8) | disc((50, 50), (36, 36), 8)
    assert len(mask_polygons(two)) == 2 and mask_polygons(np.zeros((5, 5), bool)) == []


def test_overlay_outlines_each_mask_in_its_colour_above_a_legend():
    image = np.full((60, 80, 3), 128, np.uint8)
    masks = [disc((60, 80), (20, 30), 10), disc((60, 80), (60, 30), 10)]
    colors = ["#ff0000", "#0000ff"]
    sheet = annotated_overlay(image, masks, ["1. the red one", "2. the blue one"], colors, min_width=200)
    assert sheet.shape[1] == 200 and sheet.shape[0] > 60
    for mask, color in zip(masks, colors):
        edge = mask & ~np.pad(mask, 1)[2:, 1:-1]  # the mask's lowest pixels: on its outline
        assert (sheet[:60, :80][edge] == hex_to_rgb(color)).all(axis=1).any()
        assert (sheet[60:] == hex_to_rgb(color)).all(axis=2).sum() > 20  # its legend swatch
    legend_text = sheet[60:, 24:]  # right of the swatches
    assert (legend_text < 100).all(axis=2).any()


def test_app_zip_carries_the_coco_json_beside_the_pngs(tmp_path):
    masks = [disc((30, 40), (10, 10), 6), np.zeros((30, 40), bool)]
    files, archive = logic.write_masks(masks, ["a", "a"], tmp_path, scores=[0.8, 0.1])
    with zipfile.ZipFile(archive) as bundle:
        assert bundle.namelist() == [f.name for f in files] + ["results.json"]
        results = json.loads(bundle.read("results.json"))
    assert [r["expression"] for r in results] == ["a", "a"] and [r["score"] for r in results] == [0.8, 0.1]
    for result, mask in zip(results, masks):
        assert np.array_equal(rle_decode(result["segmentation"]), mask)
