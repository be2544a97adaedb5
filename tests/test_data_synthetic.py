import json
import re
from collections import Counter

import cv2
import numpy as np
import pytest
from PIL import Image

from magnet.data.jsonl import load_jsonl
from magnet.data.synthetic import (
    COLOURS,
    EXPRESSION_TYPES,
    SHAPES,
    SPLIT_TYPES,
    STYLES,
    PngWriter,
    describe,
    draw_split_scene,
    generate_synthetic,
    main,
    render_scene,
    sample_scene,
)
from magnet.data.synthetic.scenes import sample_background
from magnet.data.tokenizer import ExpressionTokenizer
from magnet.errors import ConfigError

# ---- an independent reader of the expressions: regular expressions + centre-based geometry ----

NOUN = (
    r"(?:(?P<{p}size>small|big) )?(?:(?P<{p}colour>" + "|".join(COLOURS) + r") )?"
    r"(?P<{p}shape>" + "|".join(SHAPES) + r"|shape)s?"
)
TARGET, ANCHOR = NOUN.format(p="t"), NOUN.format(p="a")
SIDES = {"left": (0, -1), "right": (0, 1), "top": (1, -1), "bottom": (1, 1), "above": (1, -1), "below": (1, 1)}
REGION = (
    r"(?P<region>on the left|on the right|at the top|at the bottom|in the (?:top|bottom) (?:left|right)"
    r"|in the center|in the middle)"
)
PATTERNS = [
    ("attribute", rf"the {TARGET}"),
    ("location", rf"the {TARGET} {REGION}"),
    ("location", rf"the (?P<extreme>left|right|top|bottom)most {TARGET}"),
    ("relational", rf"the {TARGET} (?:to the )?(?P<relation>left|right|above|below)(?: of)? the {ANCHOR}"),
    ("ordinal", rf"the (?P<ordinal>first|second|third|fourth) {TARGET} from the (?P<side>left|right|top|bottom)"),
    ("ordinal", rf"the (?P<compare>bigger|larger|smaller)(?: of the two)? {TARGET}"),
]


def matches(obj, match, prefix):
    wanted = {key: match.group(prefix + key) for key in ("size", "colour", "shape")}
    if wanted["shape"] == "shape":
        wanted["shape"] = None
    return all(value is None or getattr(obj, key) == value for key, value in wanted.items())


def coordinate(obj, side, origin=(0.0, 0.0)):
    """Position of obj's centre towards `side` (larger = further that way) relative to origin (x, y)."""
    axis, sign = SIDES[side]
    return sign * ((obj.x, obj.y)[axis] - origin[axis])


def in_region(obj, region, width, height):
    centre = (width / 2, height / 2)
    if region in ("in the center", "in the middle"):
        return abs(obj.x - centre[0]) < width / 6 and abs(obj.y - centre[1]) < height / 6
    sides = region.split(" ")[2:]  # "in the top left" -> top, left; "on the left" -> left
    return all(coordinate(obj, side, centre) > 0 for side in sides)


def read(scene, text):
    """-> (expression type, indices of the objects the text refers to)."""
    objects = scene.objects
    for kind, pattern in PATTERNS:
        match = re.fullmatch(pattern, text)
        if not match:
            continue
        found = [i for i, o in enumerate(objects) if matches(o, match, "t")]
        groups = match.groupdict()
        if groups.get("region"):
            found = [i for i in found if in_region(objects[i], groups["region"], scene.width, scene.height)]
        elif groups.get("extreme"):
            found = [max(found, key=lambda i: coordinate(objects[i], groups["extreme"]))]
        elif groups.get("relation"):
            anchors = [i for i, o in enumerate(objects) if matches(o, match, "a")]
            assert len(anchors) == 1, f"ambiguous anchor in {text!r}"
            anchor = objects[anchors[0]]
            side = groups["relation"]
            found = [i for i in found if i != anchors[0] and coordinate(objects[i], side, (anchor.x, anchor.y)) > 0]
        elif groups.get("ordinal"):
            row = sorted(found, key=lambda i: -coordinate(objects[i], groups["side"]))
            found = [row[["first", "second", "third", "fourth"].index(groups["ordinal"])]]
        elif groups.get("compare"):
            assert len(found) == 2, f"{text!r} needs exactly two candidates"
            pick = max if groups["compare"] in ("bigger", "larger") else min
            found = [pick(found, key=lambda i: objects[i].radius)]
        return kind, found
    raise AssertionError(f"unreadable expression {text!r}")


@pytest.fixture(scope="module", params=["default", "shifted", "varied", "confusable"])
def described(request):
    """(scene, target, type, text) for every object and type of 150 scenes of each style."""
    rng = np.random.default_rng(123)
    out = []
    for _ in range(150):
        scene = sample_scene(rng, style=STYLES[request.param])
        for index in range(len(scene.objects)):
            for kind in EXPRESSION_TYPES:
                text = describe(scene, index, kind, rng)
                if text:
                    out.append((scene, index, kind, text))
    return out


def test_every_expression_refers_to_exactly_its_target(described):
    assert Counter(kind for _, _, kind, _ in described).keys() == set(EXPRESSION_TYPES)
    for scene, index, kind, text in described:
        read_kind, referents = read(scene, text)
        assert read_kind == kind, text
        assert referents == [index], f"{text!r} refers to {referents}, not {index}: {scene}"


def test_counting_expressions_name_an_object_inside_its_row():
    from magnet.data.synthetic.grammar import counting_expressions, ordinal_expressions

    rng = np.random.default_rng(5)
    found = 0
    for _ in range(150):
        scene = sample_scene(rng)
        for index in range(len(scene.objects)):
            for text in counting_expressions(scene, index):
                found += 1
                assert text in ordinal_expressions(scene, index)
                assert read(scene, text) == ("ordinal", [index]), text
                match = re.fullmatch(PATTERNS[4][1], text)
                row = sorted(
                    (i for i, o in enumerate(scene.objects) if matches(o, match, "t")),
                    key=lambda i: coordinate(scene.objects[i], match["side"]),
                )
                assert len(row) >= 3 and row[0] != index != row[-1], text
    assert found > 50


def test_expressions_are_known_word_pieces_and_fit(described):
    tokenizer = ExpressionTokenizer(max_tokens=40)
    vocabulary = " ".join(
        [
            *SHAPES,
            *(s + "s" for s in SHAPES),
            *COLOURS,
            "leftmost rightmost topmost bottommost",
            "first second third fourth bigger larger smaller small big shape shapes center middle",
        ]
    )
    assert tokenizer.encode(vocabulary).unknown_words == []
    for text in {text for *_, text in described}:
        encoded = tokenizer.encode(text)
        assert encoded.unknown_words == [], text
        assert len(encoded.tokens) - 2 <= 18, text  # word pieces without [CLS] and [SEP]


def test_scene_shapes_do_not_overlap_and_sizes_differ():
    rng = np.random.default_rng(5)
    for _ in range(50):
        scene = sample_scene(rng)
        assert 3 <= len(scene.objects) <= 6
        for a in scene.objects:
            for b in scene.objects:
                if a is not b:
                    assert np.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius
        small = [o.radius for o in scene.objects if o.size == "small"]
        big = [o.radius for o in scene.objects if o.size == "big"]
        if small and big:
            assert min(big) > 1.6 * max(small)


def test_shifted_scenes_are_another_look():
    rng = np.random.default_rng(4)
    scenes = [sample_scene(rng, style=STYLES["shifted"]) for _ in range(40)]
    assert {len(s.objects) for s in scenes} <= {2, 7, 8} and len({len(s.objects) for s in scenes}) >= 2
    assert sum(s.width != s.height for s in scenes) >= 35
    assert all(176 <= s.width <= 352 and 176 <= s.height <= 352 for s in scenes)
    for scene in scenes:
        for obj in scene.objects:
            assert obj.radius < obj.x < scene.width - obj.radius and obj.radius < obj.y < scene.height - obj.radius


def test_confusable_scenes_pair_similar_outlines_in_few_colours():
    rng = np.random.default_rng(5)
    scenes = [sample_scene(rng, style=STYLES["confusable"]) for _ in range(80)]
    groups = [set(group) for group in STYLES["confusable"].shape_groups]
    seen = Counter()
    for scene in scenes:
        shapes = {obj.shape for obj in scene.objects}
        group = next(i for i, g in enumerate(groups) if shapes <= g)  # StopIteration: a shape from outside
        seen[group] += len(shapes) == 2
        assert len({obj.colour for obj in scene.objects}) <= 2 and 3 <= len(scene.objects) <= 6
    assert all(seen[i] >= 5 for i in range(len(groups)))  # every pair, both of its shapes in one scene
    default = [sample_scene(rng) for _ in range(80)]
    assert sum(len({o.colour for o in s.objects}) > 2 for s in default) > 20  # the default look has more colours


def test_shifted_split_draws_each_background_kind():
    kinds = set()
    for index in range(30):
        _, _, image, labels = draw_split_scene("shifted", index, seed=0)
        assert image.shape[:2] == labels.shape
        background = image[labels == 0].astype(int)
        # stripes and checkers have two dominant colours, textures many, plain backgrounds are not drawn
        kinds.add("two-tone" if len(np.unique(background // 24, axis=0)) < 12 else "varied")
    assert kinds == {"two-tone", "varied"}


@pytest.mark.parametrize("kind", ["mosaic", "lines"])
def test_training_background_families_are_patterns_of_two_tinted_greys(kind):
    rng = np.random.default_rng(5)
    palette = np.array(list(COLOURS.values()), np.float32)
    steps = []
    for _ in range(8):
        image = sample_background(rng, 120, 90, kind).astype(np.float32)
        assert image.shape == (90, 120, 3)
        assert np.linalg.norm(image.reshape(-1, 1, 3) - palette[None], axis=-1).min() > 60
        steps.append(np.abs(np.diff(image, axis=1)).max())
    assert max(steps) > 40  # sharp edges between flat areas (however close the two greys of one draw)
    with pytest.raises(ConfigError, match="choose plain, stripes, checker, texture, mosaic or lines"):
        sample_background(rng, 10, 10, "marble")


@pytest.mark.parametrize("style", ["default", "shifted", "varied", "confusable"])
def test_rendered_objects_have_exact_colours_and_background_never_does(style):
    rng = np.random.default_rng(9)
    palette = np.array(list(COLOURS.values()), np.uint8)
    for _ in range(20):
        scene = sample_scene(rng, style=STYLES[style])
        image, labels = render_scene(scene, rng, STYLES[style])
        background = image[labels == 0]
        assert not (background[:, None] == palette[None]).all(axis=-1).any()
        for index, obj in enumerate(scene.objects, start=1):
            assert (image[labels == index] == COLOURS[obj.colour]).all()


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    generate_synthetic(out, n_train=6, n_val=3, n_test=3, seed=11, image_size=128, n_shifted=2)
    return out


def read_lines(folder):
    return [json.loads(line) for line in (folder / "dataset.jsonl").read_text().splitlines()]


def test_generation_is_deterministic_by_seed(dataset_dir, tmp_path):
    again = tmp_path / "again"
    generate_synthetic(again, n_train=6, n_val=3, n_test=3, seed=11, image_size=128, n_shifted=2)
    assert (again / "dataset.jsonl").read_text() == (dataset_dir / "dataset.jsonl").read_text()
    first = read_lines(dataset_dir)[0]
    for key in ("image", "mask"):
        assert (again / first[key]).read_bytes() == (dataset_dir / first[key]).read_bytes()
    other = tmp_path / "other"
    generate_synthetic(other, n_train=6, n_val=3, n_test=3, seed=12, image_size=128, n_shifted=2)
    assert (other / "dataset.jsonl").read_text() != (dataset_dir / "dataset.jsonl").read_text()


def test_splits_hold_only_their_types(dataset_dir):
    lines = read_lines(dataset_dir)
    assert {line["split"] for line in lines} == set(SPLIT_TYPES)
    for line in lines:
        assert len(line["type"]) == len(line["expressions"])
        assert set(line["type"]) <= set(SPLIT_TYPES[line["split"]])


def test_masks_are_exact_nonempty_and_distinct(dataset_dir):
    masks_per_image = {}
    for line in read_lines(dataset_dir):
        image = np.asarray(Image.open(dataset_dir / line["image"]).convert("RGB"))
        mask = np.asarray(Image.open(dataset_dir / line["mask"])) > 0
        assert mask.shape == image.shape[:2] and mask.any()
        colours = np.unique(image[mask], axis=0)
        assert len(colours) == 1 and tuple(colours[0]) in {tuple(c) for c in COLOURS.values()}
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mask
        assert not (image[ring] == colours[0]).all(axis=-1).any()  # no pixel of the shape left out
        for other in masks_per_image.setdefault(line["image"], []):
            assert not (other & mask).any()
        masks_per_image[line["image"]].append(mask)


def test_cli_output_loads_without_problems(tmp_path, capsys):
    main(
        [
            str(tmp_path),
            "--train",
            "2",
            "--val",
            "1",
            "--test",
            "1",
            "--seed",
            "3",
            "--image-size",
            "96",
            "--shifted",
            "1",
        ]
    )
    assert "dataset.jsonl" in capsys.readouterr().out
    records, report = load_jsonl(tmp_path / "dataset.jsonl", strict=True)
    assert report.total_skipped == 0 and records
    assert {r.split for r in records} == set(SPLIT_TYPES)
    assert all(r.type in EXPRESSION_TYPES for r in records)


def test_png_writer_reports_a_failed_write(tmp_path):
    with pytest.raises(OSError, match="cannot write"), PngWriter() as writer:
        writer.write(tmp_path / "no-such-folder" / "x.png", np.zeros((4, 4, 3), np.uint8))
