import numpy as np
import pytest
from PIL import Image

from magnet.data.masks import (
    MaskError,
    MaskSizeError,
    counts_from_string,
    counts_to_string,
    decode_mask,
    polygons_to_mask,
    rle_decode,
    rle_encode,
)


def test_rle_round_trip_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(50):
        height, width = rng.integers(1, 70, size=2)
        mask = rng.random((height, width)) < rng.random()
        rle = rle_encode(mask)
        assert isinstance(rle["counts"], str)
        np.testing.assert_array_equal(rle_decode(rle), mask)


def test_rle_round_trip_large_runs_and_edge_masks():
    for mask in (np.ones((300, 400), bool), np.zeros((300, 400), bool), np.eye(500, dtype=bool)):
        np.testing.assert_array_equal(rle_decode(rle_encode(mask)), mask)


def test_hand_made_rle_is_column_major():
    # columns top to bottom: [0, 0], [1, 1], [1, 0] -> runs 2 zeros, 3 ones, 1 zero
    mask = np.array([[0, 1, 1], [0, 1, 0]], dtype=bool)
    assert rle_encode(mask) == {"size": [2, 3], "counts": "231"}
    np.testing.assert_array_equal(rle_decode({"size": [2, 3], "counts": [2, 3, 1]}), mask)
    np.testing.assert_array_equal(rle_decode({"size": [2, 3], "counts": "231"}), mask)


def test_compressed_counts_multi_char_and_negative_differences():
    # 100 = 0b00011_00100: low group 4 with the continuation bit (4 | 32 + 48 = 'T'), then 3 -> '3'
    assert counts_to_string([0, 100]) == "0T3"
    # the fourth count is stored as a difference to the second: 1 - 5 = -4 -> 28 + 48 = 'L'
    assert counts_to_string([10, 5, 3, 1]) == ":53L"
    assert counts_from_string(":53L") == [10, 5, 3, 1]


def test_rle_with_wrong_total_is_rejected():
    with pytest.raises(MaskError, match="cover"):
        rle_decode({"size": [2, 3], "counts": [2, 3]})


def test_polygon_is_filled_at_image_size():
    mask = polygons_to_mask([[1, 1, 5, 1, 5, 4, 1, 4]], (6, 7))
    assert mask.shape == (6, 7)
    assert mask[1:5, 1:6].all() and mask.sum() == 20
    assert not polygons_to_mask([[0, 0, 3, 3]], (6, 7)).any()  # two points draw nothing


def test_two_polygons_are_both_drawn():
    mask = decode_mask([[0, 0, 2, 0, 2, 2, 0, 2], [6, 6, 8, 6, 8, 8, 6, 8]], (10, 10))
    assert mask[1, 1] and mask[7, 7] and not mask[4, 4]


def test_png_mask_nonzero_is_object(tmp_path):
    array = np.zeros((4, 5), np.uint8)
    array[1, 2] = 255
    array[3, 4] = 1
    Image.fromarray(array).save(tmp_path / "m.png")
    mask = decode_mask("m.png", (4, 5), base_dir=tmp_path)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, array != 0)


def test_rgb_png_mask_and_size_mismatch(tmp_path):
    array = np.zeros((4, 5, 3), np.uint8)
    array[2, 2, 1] = 7
    Image.fromarray(array).save(tmp_path / "m.png")
    assert decode_mask(tmp_path / "m.png", (4, 5)).sum() == 1
    with pytest.raises(MaskSizeError, match="4x5"):
        decode_mask(tmp_path / "m.png", (5, 4))


def test_unknown_spec_and_missing_file_raise_mask_error(tmp_path):
    with pytest.raises(MaskError, match="PNG path"):
        decode_mask(42, (2, 2))
    with pytest.raises(MaskError, match="does not exist"):
        decode_mask(tmp_path / "nope.png", (2, 2))
