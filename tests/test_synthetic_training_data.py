"""The synthetic stream as a training source: one item builder, augmentation, type balance,
full-resolution evaluation, and the Mask Grounding head's decoding of masked words only."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from magnet.checkpoint import save_checkpoint
from magnet.data.augment import AugmentConfig
from magnet.data.sources import DataSpec, build_dataset
from magnet.data.synthetic import EXPRESSION_TYPES, SyntheticStream
from magnet.data.tokenizer import ExpressionTokenizer
from magnet.errors import ConfigError
from magnet.evaluate import main as evaluate_main
from magnet.modeling import MagNet
from tests.conftest import TINY_GROUNDING
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def tokenizer():
    return ExpressionTokenizer(20)


def stream(tokenizer, **kwargs) -> SyntheticStream:
    return SyntheticStream("train", 400, seed=0, image_size=128, tokenizer=tokenizer, model_size=64, **kwargs)


def test_stream_flips_image_mask_and_words_together(tokenizer):
    plain, flipped = stream(tokenizer), stream(tokenizer, augment=AugmentConfig(flip_prob=1.0))
    swapped = 0
    for index in range(40):
        a, b = plain[index], flipped[index]
        assert a["id"] == b["id"] and a["type"] == b["type"]
        assert torch.equal(b["image"], a["image"].flip(-1))
        # nearest-neighbour resizing samples other pixels after a flip: equal up to the shape's edge
        assert (b["mask"] - a["mask"].flip(-1)).abs().mean() < 0.02 and b["mask"].sum() > 0
        if "left" in a["text"] or "right" in a["text"]:
            swapped += 1
            assert b["text"] != a["text"]
            assert b["text"].replace("right", "LEFT").replace("left", "right").replace("LEFT", "left") == a["text"]
    assert swapped >= 5


def test_training_split_of_the_synthetic_source_gets_the_augmentation(tokenizer):
    spec = DataSpec(path="synthetic", synthetic_counting_share=0.25)
    train, _ = build_dataset(spec, "train", 64, tokenizer, augment=AugmentConfig(flip_prob=1.0))
    val, _ = build_dataset(spec, "val", 64, tokenizer)
    assert train.augment is not None and train.augment.flip_prob == 1.0 and train.counting_share == 0.25
    assert val.augment is None and val.counting_share == 0  # held-out splits keep their own draw


def test_train_style_changes_the_training_scenes_only(tokenizer):
    spec = DataSpec(path="synthetic", synthetic_train_style="varied")
    train, _ = build_dataset(spec, "train", 64, tokenizer)
    val, _ = build_dataset(spec, "val", 64, tokenizer)
    default, _ = build_dataset(DataSpec(path="synthetic"), "train", 64, tokenizer)
    sizes = {train.load_original(i)[0].size for i in range(12)}
    assert len(sizes) > 6 and all(216 <= w <= 296 and 216 <= h <= 296 for w, h in sizes)
    assert {val.load_original(i)[0].size for i in range(6)} == {default.load_original(0)[0].size} == {(256, 256)}
    assert train[0]["image"].shape == default[0]["image"].shape == (3, 64, 64)  # resized like every image


def test_train_style_share_mixes_the_two_looks_by_scene(tokenizer):
    spec = DataSpec(path="synthetic", synthetic_train_style="varied", synthetic_train_style_share=0.5)
    mixed, _ = build_dataset(spec, "train", 64, tokenizer)
    varied, _ = build_dataset(DataSpec(path="synthetic", synthetic_train_style="varied"), "train", 64, tokenizer)
    plain, _ = build_dataset(DataSpec(path="synthetic"), "train", 64, tokenizer)
    looks = [mixed.style_of(i) for i in range(200)]
    assert 70 < looks.count("varied") < 130 and looks.count(None) == 200 - looks.count("varied")
    for i in range(12):  # each scene is that of the unmixed stream of its look
        same = varied if looks[i] == "varied" else plain
        assert (np.asarray(mixed.load_original(i)[0]) == np.asarray(same.load_original(i)[0])).all()
    mixed.set_epoch(3)
    assert [mixed.style_of(i) for i in range(200)] == looks  # a scene keeps its look across epochs
    with pytest.raises(ConfigError, match="synthetic_train_style_share"):
        build_dataset(DataSpec(path="synthetic", synthetic_train_style_share=1.5), "train", 64, tokenizer)
    with pytest.raises(ConfigError, match="set synthetic_train_style"):  # a share of no look would do nothing
        build_dataset(DataSpec(path="synthetic", synthetic_train_style_share=0.5), "train", 64, tokenizer)
    held_out, _ = build_dataset(spec, "val", 64, tokenizer)
    assert held_out.style is None and held_out.style_share == 1.0


def test_balanced_types_draw_each_type_about_equally_often(tokenizer):
    plain = Counter(stream(tokenizer)[i]["type"] for i in range(400))
    balanced = Counter(stream(tokenizer, balance_types=True)[i]["type"] for i in range(400))
    assert min(plain.values()) < 0.45 * max(plain.values())  # relational expressions are rare per object
    assert min(balanced.values()) > 0.4 * max(balanced.values())
    assert balanced["relational"] > 1.5 * plain["relational"]


def test_type_weights_draw_the_weighted_type_more_often_and_leave_unweighted_draws_alone(tokenizer):
    balanced = Counter(stream(tokenizer, balance_types=True)[i]["type"] for i in range(400))
    weighted = Counter(
        stream(tokenizer, balance_types=True, type_weights={"ordinal": 3.0})[i]["type"] for i in range(400)
    )
    assert weighted["ordinal"] > 1.6 * balanced["ordinal"]
    assert weighted["attribute"] < balanced["attribute"]
    # no weights: the same items as before weights existed, so earlier stages stay reproducible
    same = stream(tokenizer, balance_types=True, type_weights={})
    assert [same[i]["id"] for i in range(20)] == [stream(tokenizer, balance_types=True)[i]["id"] for i in range(20)]


def test_counting_share_draws_ordinals_inside_a_row_and_leaves_other_items_alone(tokenizer):
    from magnet.data.synthetic.grammar import counting_expressions
    from magnet.data.synthetic.splits import draw_split_scene

    def counting(item) -> bool:
        scene = draw_split_scene("train", item["index"], 0, 128)[0]
        return item["text"] in counting_expressions(scene, int(item["id"].rsplit("-", 1)[1]))

    plain, shared = stream(tokenizer, balance_types=True), stream(tokenizer, balance_types=True, counting_share=0.5)
    before = [plain[i] for i in range(120)]
    after = [shared[i] for i in range(120)]
    assert sum(map(counting, after)) > 30 > 3 * sum(map(counting, before))
    for a, b in zip(before, after):
        if not counting(b):  # items not swapped for a counting expression are the items drawn without the share
            assert (a["id"], a["text"]) == (b["id"], b["text"]) and torch.equal(a["image"], b["image"])
        else:
            assert b["type"] == "ordinal" and b["mask"].sum() > 0
    image, mask = shared.load_original(next(i for i, item in enumerate(after) if counting(item)))
    assert mask.any() and image.size == (128, 128)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"counting_share": 1.5}, "give a share of the items in"),
        ({"counting_share": "half"}, "give a share of the items in"),
        ({"balance_types": True, "type_weights": {"ordinals": 2.0}}, "unknown expression type"),
        ({"balance_types": True, "type_weights": {"ordinal": 0.0}}, "must be positive"),
        ({"type_weights": {"ordinal": 2.0}}, "synthetic_balance_types: true"),
        ({"style": "photo"}, "unknown synthetic scene style 'photo'; choose one of"),
    ],
)
def test_bad_type_weights_name_the_fix(tokenizer, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        stream(tokenizer, **kwargs)


def test_original_mask_is_the_item_mask_before_resizing(tokenizer):
    data = stream(tokenizer)
    for index in (0, 7):
        image, mask = data.load_original(index)
        item = data[index]
        assert image.size == (128, 128) and mask.shape == (128, 128) and mask.dtype == bool
        assert abs(mask.mean() - item["mask"].numpy().mean()) < 0.02


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A small random MagNet saved as safetensors."""
    torch.manual_seed(0)
    model = MagNet(tiny_config(depths=(1, 1, 1, 1), decoder_layers=1))
    return save_checkpoint(model, tmp_path_factory.mktemp("tiny") / "tiny.safetensors")


def test_evaluate_synthetic_at_original_resolution(tiny_checkpoint, capsys):
    for protocol in ([], ["--original-resolution"]):
        assert (
            evaluate_main(
                [
                    "--checkpoint",
                    str(tiny_checkpoint),
                    "--data",
                    "synthetic",
                    "--split",
                    "shifted",
                    "--limit",
                    "4",
                    "--device",
                    "cpu",
                    *protocol,
                ]
            )
            == 0
        )
    out = capsys.readouterr().out
    assert out.count("shifted: overall IoU") == 2


def test_grounding_decodes_only_the_asked_positions_with_the_same_logits():
    torch.manual_seed(0)
    model = MagNet(tiny_config(grounding=TINY_GROUNDING)).eval()
    images = torch.randn(2, 3, 64, 64)
    ids = torch.randint(1000, 2000, (2, 6))
    attention = torch.ones(2, 6, dtype=torch.long)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    with torch.no_grad():
        output = model(images, ids, attention)
        full = model.ground(output, ids, attention, target)
        positions = torch.zeros(2, 6, dtype=torch.bool)
        positions[0, 2] = positions[1, 4] = positions[1, 5] = True
        part = model.ground(output, ids, attention, target, positions=positions)
    assert part.logits.shape == (3, full.logits.shape[-1])
    assert torch.allclose(part.logits, full.logits[positions], atol=1e-5)
    assert torch.allclose(part.attentions, full.attentions)


def test_the_grammar_vocabulary_covers_every_expression(tokenizer):
    from magnet.data.synthetic.grammar import vocabulary
    from magnet.data.tokenizer import expression_words

    words = vocabulary()
    data = SyntheticStream("val", 300, seed=1, image_size=256, tokenizer=tokenizer, model_size=32)
    for index in range(300):
        _, _, expressions = data.scene(index)
        for texts, _ in expressions.values():
            for text in texts:
                assert set(expression_words(text)) <= words, text
    assert {"leftmost", "second", "hexagon", "purple", "below", "middle"} <= words and "dog" not in words


def test_ordinal_patterns_group_ordinal_items_by_word_axis_and_place_in_the_row(tokenizer):
    from magnet.benchmarks.ordinals import OrdinalItems, ordinal_pattern, row_place
    from magnet.data.synthetic.grammar import ordinal_expressions
    from magnet.data.synthetic.scenes import Scene, SceneObject

    row = Scene(tuple(SceneObject("circle", "red", "big", x, 50.0, 10.0) for x in (30.0, 90.0, 150.0)), 200, 100)
    assert ordinal_expressions(row, 1)[0] == "the second circle from the left"
    assert row_place(row, 1, "the second circle from the left") == "inside the row"
    assert row_place(row, 2, "the third circle from the left") == "end of the row"
    assert row_place(row, 0, "the bigger circle") == ""

    assert ordinal_pattern("the second red circle from the right") == "second from the left/right"
    assert ordinal_pattern("the first star from the top") == "first from the top/bottom"
    assert ordinal_pattern("the smaller of the two stars") == "smaller"
    assert ordinal_pattern("the larger green square") == "bigger / larger"
    data = stream(tokenizer, balance_types=True)
    items = OrdinalItems(data)
    assert 0 < len(items) < len(data)
    for position in range(min(len(items), 10)):
        item = items[position]
        original = data[items.indices[position]]
        assert original["type"] == "ordinal" and item["text"] == original["text"]
        assert item["type"].startswith(ordinal_pattern(item["text"])) and item["index"] == position
    places = Counter(item["type"].rpartition(", ")[2] for item in items.items)
    assert places["end of the row"] > places["inside the row"] > 0


def test_shift_benchmark_takes_one_factor_of_the_shifted_look_at_a_time(tiny_checkpoint, capsys, tokenizer):
    from magnet.benchmarks.shift import StyleItems, factor_styles, main
    from magnet.data.synthetic import STYLES

    styles = factor_styles()
    default, shifted = STYLES["default"], STYLES["shifted"]
    changed = {
        name: {f for f in ("backgrounds", "widths", "heights", "counts") if getattr(s, f) != getattr(default, f)}
        for name, s in styles.items()
    }
    assert changed == {
        "default": set(),
        "backgrounds": {"backgrounds"},
        "image shape": {"widths", "heights"},
        "object counts": {"counts"},
        "all three (shifted)": {"backgrounds", "widths", "heights", "counts"},
    }
    assert styles["all three (shifted)"] == shifted
    items = StyleItems(styles["image shape"], 3, seed=1, image_size=32, tokenizer=tokenizer)
    assert len(items) > 3 and {item["type"] for item in items.items} <= set(EXPRESSION_TYPES)
    assert all(item["image"].shape == (3, 32, 32) and item["mask"].sum() > 0 for item in items.items)

    main(["--checkpoint", str(tiny_checkpoint), "--scenes", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert all(name in out for name in styles) and "overall IoU" in out


def test_evaluate_synthetic_scenes_sets_how_many_scenes_a_split_has(tiny_checkpoint, capsys):
    argv = ["--checkpoint", str(tiny_checkpoint), "--data", "synthetic", "--split", "testA", "--device", "cpu"]
    assert evaluate_main([*argv, "--synthetic-scenes", "3"]) == 0
    assert "(n=3)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="at least 1"):
        evaluate_main([*argv, "--synthetic-scenes", "0"])


def test_compare_scores_two_checkpoints_on_the_same_scenes(tiny_checkpoint, tmp_path, capsys):
    from magnet.benchmarks import compare

    torch.manual_seed(1)
    other = save_checkpoint(MagNet(tiny_config(depths=(1, 1, 1, 1), decoder_layers=1)), tmp_path / "other.safetensors")
    same = compare.score_checkpoint(str(tiny_checkpoint), ["testB"], scenes=3)["testB"]
    assert len(same) == 3

    compare.main([str(tiny_checkpoint), str(tiny_checkpoint), "--split", "testB", "--scenes", "3", "--threads", "1"])
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[0] == "testB" and row[1] == "3" and row[2] == row[3] and row[4] == "+0.00" and row[-1] == "0.0"

    compare.main([str(tiny_checkpoint), str(other), "--split", "testB", "--scenes", "3", "--threads", "1"])
    row = capsys.readouterr().out.splitlines()[-1].split()
    assert row[2] == f"{same.summary()['overall_iou']:.2f}"  # the baseline's scores do not depend on the candidate
    # at each scene's own size (256 px) instead of the tiny model's 64 px: the same expressions, 16x the pixels
    full = compare.score_checkpoint(str(tiny_checkpoint), ["testB"], scenes=3, original_resolution=True)["testB"]
    assert len(full) == 3 and sum(full.unions) > 8 * sum(same.unions)
    compare.main([str(tiny_checkpoint), str(other), "--split", "testB", "--scenes", "3", "--original-resolution"])
    assert capsys.readouterr().out.splitlines()[-1].split()[:2] == ["testB", "3"]
    with pytest.raises(SystemExit, match="at least 1"):
        compare.main([str(tiny_checkpoint), str(other), "--scenes", "0"])
    with pytest.raises(SystemExit, match="checkpoint not found"):
        compare.main([str(tiny_checkpoint), str(tmp_path / "missing.safetensors"), "--scenes", "1"])


def test_items_map_every_object_of_the_scene_and_name_its_shape(tokenizer):
    from magnet.data.synthetic import SHAPES

    flipped = stream(tokenizer, augment=AugmentConfig(flip_prob=1.0))
    for index in range(20):
        drawn = flipped.draw(index)
        item = flipped.build(index, drawn)
        objects, classes = item["objects"], item["object_classes"]
        assert objects.shape == item["mask"].shape and objects.dtype == torch.uint8
        count = len(drawn.scene.objects)
        assert classes[:count].tolist() == [SHAPES.index(o.shape) for o in drawn.scene.objects]
        assert (classes[count:] == -1).all()
        # the map took the flip with the image: the item's target is its object there
        assert torch.equal(item["mask"].bool(), objects == drawn.obj + 1)
        assert set(objects.unique().tolist()) <= set(range(count + 1))
    assert SyntheticStream.object_class_names == SHAPES
