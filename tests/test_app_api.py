"""The functions behind the app (magnet.app_logic) and its API over HTTP (gradio_client)."""

from __future__ import annotations

import json
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import app
from magnet import app_logic as logic
from magnet.checkpoint import HUB_REPO, RELEASED, CheckpointError, save_checkpoint
from magnet.config import get_config
from magnet.grounding_maps import HEAD_SOURCE, PREFERENCE, GroundingSourceError, NoGroundingHeadError
from magnet.imageio import ImageError
from magnet.predictor import ExpressionError
from tests.helpers import tiny_config, tiny_model
from tests.test_checkpoint import official_state_dict


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def read_mask(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path))


@pytest.fixture(scope="module")
def store(checkpoint_dir: Path) -> logic.ModelStore:
    store = logic.ModelStore("cpu")
    store.load(checkpoint_dir / "tiny-grounding.safetensors")
    return store


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image(tmp_path_factory.mktemp("images") / "photo.png", 72, 48)


# ----------------------------------------------------------------------------- app_logic
def test_expressions_are_one_per_non_empty_line():
    assert logic.parse_expressions("  the dog \n\n a cat\n") == ["the dog", "a cat"]
    with pytest.raises(ExpressionError, match="no expression"):
        logic.parse_expressions(" \n ")
    with pytest.raises(ExpressionError, match="at most"):
        logic.parse_expressions("\n".join(["x"] * (logic.MAX_EXPRESSIONS + 1)))


def test_missing_image_is_an_image_error():
    with pytest.raises(ImageError, match="no image"):
        logic.load_photo(None)


def test_segment_keeps_one_probability_map_per_expression_at_image_size(store, photo):
    run = logic.segment(store, str(photo), "the left one\nthe right one", 0.5)
    assert [r.expression for r in run.results] == ["the left one", "the right one"]
    assert run.image.shape == (48, 72, 3)
    assert all(r.probability.shape == (48, 72) and r.probability.dtype == np.uint8 for r in run.results)
    low, high = run.masks(0.05), run.masks(0.95)
    assert all((h <= lo).all() for lo, h in zip(low, high))  # re-thresholding: higher threshold, smaller mask
    assert run.labels() == ["1. the left one", "2. the right one"]


def test_mask_files_are_binary_pngs_of_the_image_size_zipped_together(store, photo, tmp_path):
    run = logic.segment(store, str(photo), "a\nb\na", 0.5)
    files, archive = logic.write_masks(run.masks(0.3), [r.expression for r in run.results], tmp_path)
    assert len({f.name for f in files}) == 3  # repeated expressions get distinct files
    for path, mask in zip(files, run.masks(0.3)):
        pixels = read_mask(path)
        assert pixels.shape == (48, 72) and set(np.unique(pixels)) <= {0, 255}
        assert np.array_equal(pixels == 255, mask)
    assert zipfile.ZipFile(archive).namelist() == [f.name for f in files] + ["results.json"]
    summary = logic.run_summary(run, 0.3, files)
    assert summary["image_size"] == [72, 48] and [e["mask_png"] for e in summary["expressions"]] == [
        f.name for f in files
    ]
    json.dumps(summary)  # JSON-serialisable as the API returns it


def test_warnings_name_cut_expressions_unknown_words_and_low_confidence(store, photo):
    long_expression = "the " + "very " * 30 + "big dog"
    run = logic.segment(store, str(photo), f"{long_expression}\nthe ☃ on the left", 0.5)
    notes = logic.run_warnings(run, threshold=1.0)  # nothing can clear 1.0
    assert any("20-token limit" in n and "very " * 3 in n for n in notes)
    assert any("☃" in n and "[UNK]" in n for n in notes)
    assert sum("Low confidence" in n for n in notes) == 2
    assert not any("Low confidence" in n for n in logic.run_warnings(run, threshold=0.0))


def test_failed_checkpoint_load_keeps_the_previous_model(checkpoint_dir, photo):
    store = logic.ModelStore("cpu")
    store.load(checkpoint_dir / "tiny-grounding.safetensors")
    with pytest.raises(CheckpointError):
        store.load(checkpoint_dir / "magnet_broken.pth")
    assert store.info.path.name == "tiny-grounding.safetensors"
    assert len(logic.segment(store, str(photo), "the dog").results) == 1
    info = store.load(checkpoint_dir / "tiny-plain.safetensors")
    assert store.info is info and not info.has_grounding and HEAD_SOURCE not in info.grounding_sources


def test_without_a_model_the_error_says_how_to_get_one(photo):
    store = logic.ModelStore("cpu")
    store.unloaded_reason = logic.missing_checkpoint_message(Path("checkpoints/x.safetensors"))
    with pytest.raises(logic.NoModelError, match="make checkpoint"):
        logic.segment(store, str(photo), "the dog")


def test_mask_word_ranks_five_words_from_the_head(store, photo):
    top = logic.mask_word(store, str(photo), "the red dog", 2)
    probabilities = [p for _, p in top]
    assert len(top) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert 0 < sum(probabilities) <= 1.0 + 1e-6
    with pytest.raises(ExpressionError, match="not a word that can be masked"):
        logic.mask_word(store, str(photo), "the red dog", 0)


def test_token_maps_from_every_source_at_the_image_size(store, photo):
    info = store.info
    assert info.grounding_sources[0] == PREFERENCE[0] and info.grounding_reason
    for source in info.grounding_sources:
        run = logic.token_maps(store, str(photo), "the red dog", source)
        assert run.source == source and run.tokens == ["[CLS]", "the", "red", "dog", "[SEP]"]
        assert run.maps.shape == (5, 48, 72) and run.maps.dtype == np.uint8
        summary = run.summary()
        assert summary["image_size"] == [72, 48] and len(summary["tokens"]) == 5
        assert all(0 <= t["peak_xy"][0] < 72 and 0 <= t["peak_xy"][1] < 48 for t in summary["tokens"])
    default = logic.token_maps(store, str(photo), "the red dog")
    assert default.source == info.grounding_sources[0] and "benchmark" in default.reason
    with pytest.raises(GroundingSourceError, match="unknown grounding source"):
        logic.token_maps(store, str(photo), "the dog", "fusion-stage-9")


def test_checkpoint_without_head_says_so(checkpoint_dir, photo):
    store = logic.ModelStore("cpu")
    store.load(checkpoint_dir / "tiny-plain.safetensors")
    with pytest.raises(NoGroundingHeadError, match="has no Mask Grounding head"):
        logic.token_maps(store, str(photo), "the dog", HEAD_SOURCE)
    with pytest.raises(NoGroundingHeadError, match="has no Mask Grounding head"):
        logic.mask_word(store, str(photo), "the dog", 1)
    run = logic.token_maps(store, str(photo), "the dog")
    assert run.source == store.info.grounding_sources[0] != HEAD_SOURCE


def test_source_picker_shows_the_measured_accuracy(tmp_path):
    assert logic.load_accuracy(tmp_path / "absent.json") == {}
    (tmp_path / "broken.json").write_text("{not json")
    assert logic.load_accuracy(tmp_path / "broken.json") == {}
    table = {"checkpoint": "model.safetensors", "sources": {"word-drop": {"expression": 71.6}, "gradient": {}}}
    (tmp_path / "accuracy.json").write_text(json.dumps(table))
    accuracy = logic.load_accuracy(tmp_path / "accuracy.json")
    choices = dict((value, label) for label, value in logic.source_choices(4, accuracy))
    assert choices["word-drop"] == "word-drop · 72% pointing" and choices["gradient"] == "gradient"
    assert set(choices) >= {HEAD_SOURCE, "fusion-stage-1", "fusion-stage-4", "phrase"}
    note = logic.source_note("word-drop", "the most accurate source", accuracy)
    assert "**word-drop**" in note and "72%" in note and "model.safetensors" in note


def test_word_importance_gives_one_iou_per_word(store, photo):
    rows = logic.word_importance(store, str(photo), "the big red dog", threshold=0.5)
    assert [r["word"] for r in rows] == ["1. the", "2. big", "3. red", "4. dog"]
    assert all(0.0 <= r["iou_without"] <= 1.0 and r["importance"] == pytest.approx(1 - r["iou_without"]) for r in rows)
    with pytest.raises(ExpressionError, match="two words"):
        logic.word_importance(store, str(photo), "dog")


def test_examples_file_is_optional_and_skips_missing_images(tmp_path):
    assert logic.load_examples(tmp_path / "examples.json", tmp_path) == []
    write_image(tmp_path / "a.png", 8, 8)
    (tmp_path / "examples.json").write_text(
        json.dumps(
            [
                {"image": "a.png", "expressions": ["the cat", "the hat"]},
                {"image": "missing.png", "expressions": ["x"]},
                "junk",
            ]
        )
    )
    assert logic.load_examples(tmp_path / "examples.json", tmp_path) == [[str(tmp_path / "a.png"), "the cat\nthe hat"]]
    (tmp_path / "examples.json").write_text("{not json")
    assert logic.load_examples(tmp_path / "examples.json", tmp_path) == []


def test_checkpoint_list_has_safetensors_and_official_pth_only(tmp_path):
    for name in ["b.safetensors", "magnet_refcoco.pth", "other.pth", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in logic.list_checkpoints(tmp_path)] == ["b.safetensors", "magnet_refcoco.pth"]
    assert logic.list_checkpoints(tmp_path / "absent") == []


def test_old_output_folders_are_pruned(tmp_path):
    outputs = logic.OutputDirs(tmp_path, max_age_s=60)
    old = outputs.new()
    os.utime(old, (time.time() - 120, time.time() - 120))
    fresh = outputs.new()
    assert not old.exists() and fresh.exists()


def test_page_without_checkpoint_starts_and_names_the_fix(tmp_path):
    store = logic.ModelStore("cpu")
    app.load_initial(store, tmp_path / logic.DEFAULT_CHECKPOINT)
    demo = app.build_demo(store, tmp_path, logic.OutputDirs(tmp_path / "out"), examples_file=tmp_path / "none.json")
    banner = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "banner")
    assert banner.visible and "make checkpoint" in banner.value and "--checkpoint" in banner.value


# ----------------------------------------------------------------------------- released weights
class StandInHub:
    """huggingface_hub's download and cache look-up without the network: a "download" writes a
    tiny model in the authors' format (or raises, as offline), and the cache then holds it."""

    def __init__(self, folder: Path, offline: bool = False) -> None:
        self.folder, self.offline, self.downloads = folder, offline, []

    def hf_hub_download(self, repo_id: str, filename: str, cache_dir: str | None = None) -> str:
        self.downloads.append((repo_id, filename))
        if self.offline:
            from huggingface_hub.errors import LocalEntryNotFoundError

            raise LocalEntryNotFoundError(
                "An error happened while trying to locate the file on the Hub and we cannot find the requested "
                "files in the local cache. Please check your connection and try again."
            )
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.save({"model": official_state_dict(tiny_model(shallow=True))}, self.folder / filename)
        return str(self.folder / filename)

    def try_to_load_from_cache(self, repo_id: str, filename: str, cache_dir: str | None = None) -> str | None:
        path = self.folder / filename
        return str(path) if path.exists() else None


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandInHub:
    stand_in = StandInHub(tmp_path / "hub-cache")
    monkeypatch.setattr("huggingface_hub.hf_hub_download", stand_in.hf_hub_download)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", stand_in.try_to_load_from_cache)
    return stand_in


def test_picker_lists_the_released_checkpoints_beside_the_local_files(checkpoint_dir, hub):
    choices, current = logic.checkpoint_choices(checkpoint_dir, checkpoint_dir / "tiny-plain.safetensors")
    labels = dict((value, label) for label, value in choices)
    assert current == str(checkpoint_dir / "tiny-plain.safetensors") and current in labels
    assert [value for _, value in choices][-3:] == ["refcoco", "refcoco+", "refcocog"]
    for name in RELEASED:
        assert labels[name].startswith(f"{name} · ") and "~1.2 GB download" in labels[name]
    assert hub.downloads == []  # listing never downloads


def test_choosing_a_released_checkpoint_downloads_it_once_then_loads_it(checkpoint_dir, hub):
    store = logic.ModelStore("cpu")
    store.load(checkpoint_dir / "tiny-grounding.safetensors")
    assert logic.pending_download("refcoco") == "magnet_refcoco.pth (~1.2 GB)"
    picker, header, details, _ = app.switch_model(store, checkpoint_dir, "refcoco")
    assert hub.downloads == [(HUB_REPO, "magnet_refcoco.pth")]
    assert store.info.path.name == "magnet_refcoco.pth" and store.info.provenance["format"] == "official"
    assert "magnet_refcoco.pth" in header and "the authors' RefCOCO weights" in header
    assert picker.value == "refcoco" and details["provenance"]["source"] == "magnet_refcoco.pth"
    labels = dict((value, label) for label, value in picker.choices)
    assert "(downloaded)" in labels["refcoco"] and "(~1.2 GB download)" in labels["refcocog"]
    assert logic.pending_download("refcoco") is None
    app.switch_model(store, checkpoint_dir, str(checkpoint_dir / "tiny-grounding.safetensors"))
    app.switch_model(store, checkpoint_dir, "refcoco")  # now in the cache: loaded from there
    assert hub.downloads == [(HUB_REPO, "magnet_refcoco.pth")] and store.info.path.name == "magnet_refcoco.pth"


def test_failed_download_says_why_and_keeps_the_previous_model(checkpoint_dir, hub, photo):
    hub.offline = True
    store = logic.ModelStore("cpu")
    store.load(checkpoint_dir / "tiny-grounding.safetensors")
    with pytest.warns(UserWarning, match="Could not load refcoco: could not download magnet_refcoco.pth") as caught:
        picker, header, *_ = app.switch_model(store, checkpoint_dir, "refcoco")
    message = str(caught[0].message)
    assert "check your connection" in message and "Keeping the previous model" in message
    assert store.info.path.name == "tiny-grounding.safetensors" and "tiny-grounding.safetensors" in header
    assert picker.value == str(checkpoint_dir / "tiny-grounding.safetensors")
    assert len(logic.segment(store, str(photo), "the dog").results) == 1


def test_app_command_line_takes_a_released_name(checkpoint_dir, hub, capsys):
    store = logic.ModelStore("cpu")
    app.load_initial(store, "refcoco+")
    assert store.info.path.name == "magnet_refcoco+.pth" and hub.downloads == [(HUB_REPO, "magnet_refcoco+.pth")]
    hub.offline = True
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--checkpoint", "refcocog", "--checkpoint-dir", str(checkpoint_dir), "--device", "cpu"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert "error: could not download magnet_refcocog.pth (~1.2 GB) from the Hugging Face hub" in err
    assert "Check the network connection" in err


# ----------------------------------------------------------------------------- what the page says
def test_model_header_is_one_short_line_and_the_details_hold_the_rest(tmp_path):
    words = [f"word{i}" for i in range(300)]
    provenance = {
        "data": "synthetic scenes drawn on the fly (seed 0, 200000 per epoch)",
        "steps": 985,
        "metrics": {"overall_iou": 55.0871, "mean_iou": 60.04, "precision@0.5": 61.5},
        "vocabulary": words,
    }
    path = save_checkpoint(tiny_model(shallow=True), tmp_path / "trained.safetensors", provenance=provenance)
    store = logic.ModelStore("cpu")
    info = store.load(path)
    line = info.describe()
    for part in (
        "`trained.safetensors`",
        "preset `custom`",
        "M parameters",
        "trained on synthetic scenes drawn on the fly",
    ):
        assert part in line
    assert "val overall IoU 55.1" in line and "mean IoU 60.0" in line and "no Mask Grounding head" in line
    assert "device `cpu`" in line and "word1" not in line and "seed 0" not in line and "\n" not in line
    assert len(line) < 250
    details = info.details()
    assert details["provenance"]["vocabulary"] == "300 words" and details["provenance"]["steps"] == 985
    assert "seed 0, 200000 per epoch" in details["provenance"]["data"] and info.synthetic_only
    assert [logic.preset_of(get_config(name)) for name in ("swin-b", "small")] == ["swin-b", "small"]
    assert logic.preset_of(tiny_config()) == "custom"


def test_unseen_words_are_named_with_a_pointer_to_the_released_weights(tmp_path, photo):
    provenance = {"vocabulary": ["dog", "left", "red", "the"], "data": "synthetic scenes (seed 0)"}
    path = save_checkpoint(tiny_model(shallow=True), tmp_path / "synthetic.safetensors", provenance=provenance)
    store = logic.ModelStore("cpu")
    store.load(path)
    with pytest.warns(UserWarning) as toasts:  # gr.Warning outside a request
        summary, *_, notes, _, run = app.run_segment(
            store,
            logic.OutputDirs(tmp_path / "out"),
            str(photo),
            "the red dog\nthe purple hat on the left\nthe hat",
            0.0,
        )
    assert [e["unseen_words"] for e in summary["expressions"]] == [[], ["purple", "hat", "on"], ["hat"]]
    assert [r.unseen_words for r in run.results] == [[], ["purple", "hat", "on"], ["hat"]]
    assert "the model never saw purple, hat, on in training" in notes and "never saw hat in training" in notes
    assert notes.count("trained only on synthetic scenes") == 1 and "refcoco" in notes
    assert [str(t.message) for t in toasts] == run.notes  # the page's warnings, one toast each
    assert run.notes == logic.run_warnings(run, 0.0)  # computed once, when the model ran
    seen = logic.segment(store, str(photo), "the red dog", 0.0)
    assert logic.SYNTHETIC_ONLY_NOTE not in logic.run_warnings(seen, 0.0)  # nothing unseen: nothing to say


@pytest.mark.filterwarnings("ignore::UserWarning")  # low-confidence notes of the random model
def test_opacity_recolours_the_overlay_without_rewriting_mask_files(store, photo, tmp_path):
    outputs = logic.OutputDirs(tmp_path / "out")
    _, files, archive, *_, run = app.run_segment(store, outputs, str(photo), "the dog\nthe cat", 0.5, 0.5)
    written = {Path(f): (os.stat(f).st_mtime_ns, Path(f).read_bytes()) for f in [*files, archive]}
    folders = sorted(outputs.root.iterdir())
    overlay = app.recolour(run, 0.5, 0.9)
    assert [a["label"] for a in overlay.value["annotations"]] == ["1. the dog", "2. the cat"]
    assert sorted(outputs.root.iterdir()) == folders
    assert {f: (os.stat(f).st_mtime_ns, f.read_bytes()) for f in written} == written
    _, refiled, *_ = app.rethreshold(outputs, run, 0.7, 0.9)  # a new threshold: new mask files
    assert len(sorted(outputs.root.iterdir())) == len(folders) + 1 and Path(refiled[0]).parent not in folders

    demo = app.build_demo(store, tmp_path, outputs, examples_file=tmp_path / "none.json")
    slider = next(b for b in demo.blocks.values() if getattr(b, "label", None) == "Mask opacity")
    on_opacity = [fn for fn in demo.fns.values() if (slider._id, "change") in fn.targets]
    assert len(on_opacity) == 1 and [o.elem_id for o in on_opacity[0].outputs] == ["overlay"]
    # the threshold slider re-renders through rethreshold, which is given no model to run
    threshold = next(b for b in demo.blocks.values() if getattr(b, "label", None) == "Threshold")
    on_threshold = [fn for fn in demo.fns.values() if (threshold._id, "change") in fn.targets]
    assert len(on_threshold) == 1 and on_threshold[0].fn.func is app.rethreshold


# ----------------------------------------------------------------------------- HTTP API
@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server.url, verbose=False)


def call_segment(client, image: Path | None, text: str, threshold: float = 0.5):
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)) if image else None, text, threshold, api_name="/segment")


@pytest.mark.slow
def test_segment_endpoint_returns_a_mask_per_expression(client, tmp_path):
    image = write_image(tmp_path / "wide.png", 90, 40)
    result, masks, archive, overlay, probabilities, tokens, notes, status = call_segment(
        client, image, "the man in the red shirt\nthe dog\nthe ☃", 0.5
    )
    assert [e["expression"] for e in result["expressions"]] == ["the man in the red shirt", "the dog", "the ☃"]
    assert result["image_size"] == [90, 40] and result["device"] == "cpu"
    assert len(masks) == 3
    for entry, path in zip(result["expressions"], masks):
        pixels = read_mask(path)
        assert pixels.shape == (40, 90) and set(np.unique(pixels)) <= {0, 255}
        assert Path(path).name == entry["mask_png"]
        assert entry["found"] == bool(pixels.any())
    assert result["expressions"][2]["unknown_words"] == ["☃"] and "[UNK]" in notes
    assert all(e["unseen_words"] is None for e in result["expressions"])  # no record of its training words
    assert sorted(zipfile.ZipFile(archive).namelist()) == sorted([Path(m).name for m in masks] + ["results.json"])
    coco = json.loads(zipfile.ZipFile(archive).read("results.json"))
    assert [r["score"] for r in coco] == pytest.approx([e["score"] for e in result["expressions"]], abs=1e-4)
    assert len(probabilities) == 3 and "on `cpu`" in status
    assert {t["token"] for t in tokens} >= {"man", "red", "dog", "[UNK]"}


@pytest.mark.slow
def test_grounding_endpoint_for_head_fusion_stage_and_attributions(client, photo):
    from gradio_client import handle_file

    grids = {}
    for source in [HEAD_SOURCE, "fusion-stage-1", "word-drop", "gradient", "phrase"]:
        summary, grid, token = client.predict(handle_file(str(photo)), "the red dog", source, api_name="/grounding")
        assert summary["source"] == source and summary["reason"]
        assert [t["token"] for t in summary["tokens"]] == ["[CLS]", "the", "red", "dog", "[SEP]"]
        assert Image.open(token).size == (72, 48)
        grids[source] = np.asarray(Image.open(grid).convert("RGB"))
        assert grids[source].shape[1] > 2 * 72  # a tile per token, side by side
    assert len({g.tobytes() for g in grids.values()}) == len(grids)  # each source draws its own maps


@pytest.mark.slow
def test_concurrent_clients_never_get_each_others_results(app_server, tmp_path):
    from gradio_client import Client

    jobs = [((40 + 13 * i, 30 + 7 * i), "\n".join(f"object {j} of client {i}" for j in range(i + 1))) for i in range(4)]
    images = [write_image(tmp_path / f"c{i}.png", w, h, seed=i) for i, ((w, h), _) in enumerate(jobs)]

    def work(i: int) -> list[tuple]:
        own = Client(app_server.url, verbose=False)
        outcomes = []
        for _ in range(3):
            result, masks, *_ = call_segment(own, images[i], jobs[i][1])
            outcomes.append((result, [read_mask(m).shape for m in masks]))
        return outcomes

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(work, range(4)))
    for i, outcomes in enumerate(results):
        (width, height), text = jobs[i]
        for result, shapes in outcomes:
            assert result["image_size"] == [width, height]
            assert [e["expression"] for e in result["expressions"]] == text.split("\n")
            assert shapes == [(height, width)] * (i + 1)


@pytest.mark.slow
def test_user_errors_come_back_as_messages_and_the_server_keeps_serving(client, app_server, tmp_path, photo):
    from gradio_client.exceptions import AppError

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(write_image(tmp_path / "full.png", 64, 64).read_bytes()[:200])
    cases = [
        (None, "the dog", "no image"),
        (photo, "  \n ", "no expression"),
        (corrupt, "the dog", "not an image"),
        (truncated, "the dog", "truncated or corrupt"),
    ]
    for image, text, message in cases:
        with pytest.raises(AppError, match=message):
            call_segment(client, image, text)
    assert app_server.process.poll() is None
    result, masks, *_ = call_segment(client, photo, "the dog")
    assert len(masks) == 1 and "Traceback" not in json.dumps(result)
