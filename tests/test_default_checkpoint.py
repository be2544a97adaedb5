"""The shipped default checkpoint loads offline and segments the bundled examples."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from magnet.checkpoint import load_model
from magnet.predictor import MagNetPredictor

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "checkpoints" / "magnet-synthetic-cpu.safetensors"


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return MagNetPredictor(load_model(DEFAULT, device="cpu"), device="cpu")


def test_default_checkpoint_is_small_and_documented(predictor):
    assert DEFAULT.stat().st_size <= 40 * 1024 * 1024
    assert (ROOT / "checkpoints" / "magnet-synthetic-cpu.md").exists()
    model = predictor.model
    assert model.grounding is not None and model.config.image_size == 192
    assert model.config.keep_aspect  # non-square photos keep their shapes (model card, "Non-square images")
    assert model.config.edge_refine_radius == 6  # masks snapped to the image's edges (model card, "Edge refinement")
    assert model.config.single_region  # one object per expression (model card, "One region per expression")
    assert model.provenance["trained_by"] == "magnet-studio"


def test_examples_gallery_is_segmented(predictor):
    examples = json.loads((ROOT / "assets" / "examples.json").read_text())
    assert 6 <= len(examples) <= 10
    assert sum(t == "relational" for e in examples for t in e["types"]) >= 2
    for example in examples:
        results = predictor.predict(ROOT / example["image"], example["expressions"])
        for r in results:  # one shape found: not nothing, not the background
            assert not r.is_empty and r.mask.mean() < 0.25, (example["image"], r.expression)


def test_examples_have_ground_truth_the_default_model_matches(predictor):
    """Each gallery expression is segmented as its ground-truth mask says (IoU >= 0.8)."""
    from magnet.metrics import mask_iou

    for example in json.loads((ROOT / "assets" / "examples.json").read_text()):
        results = predictor.predict(ROOT / example["image"], example["expressions"])
        for result, mask_path in zip(results, example["masks"], strict=True):
            target = np.array(Image.open(ROOT / mask_path)) > 127
            iou = mask_iou(result.mask, target)
            assert iou >= 0.8, (example["image"], result.expression, iou)


class _GroundTruthPredictor:
    """Stands in for MagNetPredictor: answers with the true mask of the scene last drawn, except
    for expressions of type `miss`, which it answers with an empty mask."""

    def __init__(self, monkeypatch, miss: str | None = None) -> None:
        from magnet.data.synthetic import SyntheticStream
        from magnet.data.tokenizer import ExpressionTokenizer

        self.model = SimpleNamespace(config=SimpleNamespace(max_tokens=20, image_size=64))
        self.tokenizer = ExpressionTokenizer(20)
        self.miss, self.drawn = miss, None
        draw = SyntheticStream.scene

        def remember(stream, index):
            self.drawn = draw(stream, index)
            return self.drawn

        monkeypatch.setattr(SyntheticStream, "scene", remember)

    def predict(self, image, texts):
        _, labels, expressions = self.drawn
        results = []
        for text in texts:
            obj, kind = next(
                (o, types[options.index(text)]) for o, (options, types) in expressions.items() if text in options
            )
            hit = kind != self.miss
            results.append(SimpleNamespace(expression=text, mask=(labels == obj + 1) & hit))
        return results


def test_gallery_picks_scenes_the_model_gets_right_and_writes_them(tmp_path, monkeypatch):
    from magnet.app_logic import load_examples
    from magnet.gallery import pick_scenes, write_gallery

    picked = pick_scenes(
        _GroundTruthPredictor(monkeypatch), scenes=3, quotas={"relational": 2, "ordinal": 1}, min_iou=0.85
    )
    assert len(picked) == 3 and all(len(s.expressions) >= 2 for s in picked)
    assert sum(t == "relational" for s in picked for t in s.types) >= 2
    assert sum(t == "ordinal" for s in picked for t in s.types) >= 1
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "scene-09.png").write_bytes(b"from an earlier, larger gallery")
    path = write_gallery(picked, tmp_path / "assets")
    assert sorted(p.name for p in (tmp_path / "assets").glob("scene-*.png")) == [
        "scene-01.png",
        "scene-02.png",
        "scene-03.png",
    ]
    entries = json.loads(path.read_text())
    for scene, entry in zip(picked, entries):
        assert entry["expressions"] == scene.expressions and entry["iou"] == [1.0] * len(scene.expressions)
        for mask, mask_path in zip(scene.masks, entry["masks"]):
            assert (np.array(Image.open(tmp_path / mask_path)) > 127).tolist() == mask.tolist()
    assert len(load_examples(path, tmp_path)) == 3


def test_gallery_says_when_the_model_is_not_good_enough(monkeypatch):
    from magnet.gallery import pick_scenes

    with pytest.raises(ValueError, match="train the model longer"):
        pick_scenes(
            _GroundTruthPredictor(monkeypatch, miss="relational"),
            scenes=2,
            quotas={"relational": 1},
            min_iou=0.85,
            max_tries=20,
        )


def test_grounding_sources_are_ranked_as_the_committed_table_measures():
    """PREFERENCE (the app's default grounding source first) follows the expression pointing game
    that `python -m magnet evaluate-grounding` wrote for the shipped checkpoint."""
    from magnet.grounding_maps import PREFERENCE

    table = json.loads((ROOT / "assets" / "grounding" / "accuracy.json").read_text())
    assert table["checkpoint"] == DEFAULT.name
    score = {source: row["expression"] for source, row in table["sources"].items()}
    assert set(PREFERENCE) == set(score)
    assert list(PREFERENCE) == sorted(PREFERENCE, key=lambda source: -score[source])
