"""The predictor's grounding API: MagNetPredictor.ground, predict_masked_word, word_importance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from magnet import MagNetPredictor, grounding_maps, load_model
from magnet.data.synthetic import COLOURS
from magnet.grounding_maps import HEAD_SOURCE, GroundingSourceError, NoGroundingHeadError, phrases
from magnet.predictor import ExpressionError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "checkpoints" / "magnet-synthetic-cpu.safetensors"


@pytest.fixture(scope="module")
def tiny(checkpoint_dir: Path) -> MagNetPredictor:
    return MagNetPredictor(load_model(checkpoint_dir / "tiny-grounding.safetensors", device="cpu"), device="cpu")


@pytest.fixture(scope="module")
def plain(checkpoint_dir: Path) -> MagNetPredictor:
    return MagNetPredictor(load_model(checkpoint_dir / "tiny-plain.safetensors", device="cpu"), device="cpu")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (48, 72, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- shapes and options
def test_every_source_gives_one_map_per_token_at_the_image_resolution(tiny, photo):
    grounding = tiny.ground(photo, "the red dog left of the cat")
    assert set(grounding.sources) >= {
        HEAD_SOURCE,
        "word-drop",
        "gradient",
        "phrase",
        "fusion-stage-1",
        "fusion-stage-4",
    }
    assert grounding.source == grounding.sources[0] and grounding.reason
    for source in grounding.sources:
        result = tiny.ground(photo, "the red dog left of the cat", source)
        assert result.source == source and result.tokens == grounding.tokens
        assert result.tokens[:4] == ["[CLS]", "the", "red", "dog"] and result.tokens[-1] == "[SEP]"
        assert result.maps.shape == (len(result.tokens), 48, 72) and result.maps.dtype == np.float32
        assert np.isfinite(result.maps).all() and result.maps.min() >= 0
        assert not result.combined_with_mask


def test_combining_with_the_mask_multiplies_by_its_probability(tiny, photo):
    plain_maps = tiny.ground(photo, "the red dog", "fusion-stage-2")
    combined = tiny.ground(photo, "the red dog", "fusion-stage-2", combine_with_mask=True)
    probability = tiny.predict(photo, "the red dog")[0].probability
    assert combined.combined_with_mask
    np.testing.assert_allclose(combined.maps, plain_maps.maps * probability[None], rtol=1e-4, atol=1e-6)


def test_grounding_reuses_the_cached_image(tiny, photo, monkeypatch):
    import magnet.predictor

    decoded = []
    original = magnet.predictor.load_image
    monkeypatch.setattr(magnet.predictor, "load_image", lambda image: decoded.append(1) or original(image))
    image = photo.copy()
    image[0, 0] = 7  # not the array cached by the other tests
    tiny.ground(image, "the red dog", "word-drop")
    tiny.ground(image, "the blue cat", "gradient")
    tiny.predict_masked_word(image, "the red dog", 2)
    tiny.word_importance(image, "the red dog")
    assert len(decoded) == 1


def test_gradient_works_on_an_image_first_seen_by_predict(tiny, photo):
    image = photo.copy()
    image[0, 0] = 9
    tiny.predict(image, "the red dog")  # caches the image inside inference mode
    assert tiny.ground(image, "the red dog", "gradient").maps.shape == (5, 48, 72)


def test_unknown_source_names_the_choices(tiny, photo):
    with pytest.raises(GroundingSourceError, match="unknown grounding source 'fusion-stage-9'.*word-drop"):
        tiny.ground(photo, "the dog", "fusion-stage-9")


def test_without_a_head_the_default_falls_back_and_the_head_is_refused(plain, photo, monkeypatch):
    grounding = plain.ground(photo, "the red dog")
    assert HEAD_SOURCE not in grounding.sources and grounding.source == grounding.sources[0]
    with pytest.raises(NoGroundingHeadError, match="has no Mask Grounding head"):
        plain.ground(photo, "the red dog", HEAD_SOURCE)
    with pytest.raises(NoGroundingHeadError, match="has no Mask Grounding head"):
        plain.predict_masked_word(photo, "the red dog", 2)
    # Were the head the best source, a checkpoint without it gets the best one that needs no head, and says why.
    ranked = (HEAD_SOURCE, "fusion-stage-3", "word-drop", "gradient", "phrase")
    monkeypatch.setattr(grounding_maps, "PREFERENCE", ranked)
    fallback = plain.ground(photo, "the red dog")
    assert fallback.source == "fusion-stage-3" and "Mask Grounding head" in fallback.reason
    assert fallback.maps.shape == (5, 48, 72)


def test_predict_masked_word_returns_k_sorted_probabilities(tiny, photo):
    top = tiny.predict_masked_word(photo, "the red dog", 2, k=5)
    assert len(top) == 5 and all(isinstance(word, str) for word, _ in top)
    probabilities = [p for _, p in top]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0 <= p <= 1 for p in probabilities) and sum(probabilities) <= 1 + 1e-6
    assert len(tiny.predict_masked_word(photo, "the red dog", 3, k=2)) == 2
    with pytest.raises(ExpressionError, match="not a word that can be masked"):
        tiny.predict_masked_word(photo, "the red dog", 0)  # [CLS]


def test_word_importance_has_one_iou_per_word(tiny, photo):
    rows = tiny.word_importance(photo, "the big red dog")
    assert [word for word, _ in rows] == ["the", "big", "red", "dog"]
    assert all(0.0 <= iou <= 1.0 for _, iou in rows)
    with pytest.raises(ExpressionError, match="two words"):
        tiny.word_importance(photo, "dog")


def test_phrases_are_cut_at_link_words(tiny):
    def cut(text: str) -> list[str]:
        return [phrase for _, phrase in phrases(tiny.tokenizer.encode(text).tokens)]

    assert cut("the circle to the left of the big red triangle") == ["the big red triangle"]
    assert cut("the man in the red shirt left of the dog") == ["the red shirt", "the dog"]
    assert cut("the square in the top left") == [] and cut("the smaller of the two stars") == []
    assert cut("the leftmost green triangle") == []  # "left ##most" is one word, not a link


# ----------------------------------------------------------------------------- the default checkpoint
@pytest.fixture(scope="module")
def trained() -> MagNetPredictor:
    if not DEFAULT_CHECKPOINT.exists():
        pytest.skip(f"{DEFAULT_CHECKPOINT} not found (build it with `make checkpoint`)")
    return MagNetPredictor(load_model(DEFAULT_CHECKPOINT, device="cpu"), device="cpu")


def shapes_scene() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A 256 x 256 scene drawn like the synthetic ones, in which every word of "the blue square" and
    "the blue circle" is needed: a big blue circle top left, a big blue square top right, a big red
    square bottom left and a small yellow circle bottom right. Returns the image and each shape's mask."""
    image = Image.new("RGB", (256, 256), (118, 112, 124))
    draw = ImageDraw.Draw(image)
    shapes = {
        "blue circle": ((32, 32, 100, 100), "ellipse", "blue"),
        "blue square": ((166, 42, 214, 90), "rectangle", "blue"),
        "red square": ((42, 166, 90, 214), "rectangle", "red"),
        "yellow circle": ((184, 184, 216, 216), "ellipse", "yellow"),
    }
    masks = {}
    for name, (box, kind, colour) in shapes.items():
        getattr(draw, kind)(box, fill=COLOURS[colour])
        mask = Image.new("1", (256, 256))
        getattr(ImageDraw.Draw(mask), kind)(box, fill=1)
        masks[name] = np.asarray(mask)
    return np.asarray(image), masks


def peak_in(heat: np.ndarray, mask: np.ndarray) -> bool:
    return bool(mask.flat[int(np.argmax(heat))])


# (expression, its words that are needed in the scene: without one, it fits another shape too)
NEEDED_WORDS = [("the blue square", ["blue", "square"]), ("the red square", ["red"]), ("the yellow circle", ["yellow"])]


def test_phrase_maps_of_colour_and_shape_words_peak_on_their_object(trained):
    image, masks = shapes_scene()
    for text, _ in NEEDED_WORDS:
        grounding = trained.ground(image, text, "phrase")
        assert grounding.maps.shape == (len(grounding.tokens), 256, 256)
        for word in text.split()[1:]:
            assert peak_in(grounding.maps[grounding.tokens.index(word)], masks[text[4:]]), (text, word)


@pytest.mark.parametrize("text, needed", NEEDED_WORDS, ids=[text for text, _ in NEEDED_WORDS])
def test_word_drop_maps_of_needed_words_weigh_most_on_a_shape_they_name(trained, text, needed):
    """A needed colour or shape word's drop map has the most mass on a shape of that colour or shape
    (the benchmark's per-word criterion; its peak may sit on an edge, where dropping the word blurs
    the mask most)."""
    image, masks = shapes_scene()
    grounding = trained.ground(image, text, "word-drop")
    for word in needed:
        heat = grounding.maps[grounding.tokens.index(word)]
        mass = {name: float(heat[mask].sum()) for name, mask in masks.items()}
        assert word in max(mass, key=mass.get).split(), (text, word, mass)


def test_phrase_maps_put_the_landmark_words_on_the_landmark(trained):
    image, masks = shapes_scene()
    text = "the circle left of the blue square"
    grounding = trained.ground(image, text, "phrase")
    tokens = grounding.tokens
    for word in ("blue", "square"):
        assert peak_in(grounding.maps[tokens.index(word)], masks["blue square"]), word
    full = trained.predict(image, text)[0].probability  # the referent's words: the whole mask
    np.testing.assert_allclose(grounding.maps[tokens.index("circle")], full, atol=1e-5)
    assert not grounding.maps[0].any() and not grounding.maps[-1].any()  # [CLS], [SEP]
