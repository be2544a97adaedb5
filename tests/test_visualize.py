"""Overlays, probability maps and token heatmaps."""

from __future__ import annotations

import numpy as np
import pytest

from magnet.visualize import (
    PALETTE,
    colorize,
    expression_colors,
    heatmap_grid,
    heatmap_overlay,
    hex_to_rgb,
    overlay_masks,
    probability_image,
    resize_map,
)


def gray_image(height: int = 20, width: int = 30, value: int = 100) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def test_each_expression_gets_a_distinct_colour_until_the_palette_cycles():
    colors = expression_colors(len(PALETTE) + 2)
    assert len(set(colors[: len(PALETTE)])) == len(PALETTE)
    assert colors[len(PALETTE)] == colors[0]
    assert hex_to_rgb("#1f77b4") == (31, 119, 180)
    with pytest.raises(ValueError):
        hex_to_rgb("red")


def test_overlay_paints_only_inside_masks_with_the_given_opacity():
    image = gray_image()
    mask = np.zeros((20, 30), dtype=bool)
    mask[5:10, 5:15] = True
    out = overlay_masks(image, [mask], ["#ff0000"], opacity=0.5)
    assert np.array_equal(out[~mask], image[~mask])
    assert tuple(out[7, 7]) == (178, 50, 50)  # halfway between (100, 100, 100) and (255, 0, 0)
    assert np.array_equal(overlay_masks(image, [mask], ["#ff0000"], opacity=0.0), image)
    assert tuple(overlay_masks(image, [mask], ["#00ff00"], opacity=1.0)[7, 7]) == (0, 255, 0)


def test_later_masks_paint_over_earlier_ones():
    mask = np.ones((20, 30), dtype=bool)
    out = overlay_masks(gray_image(), [mask, mask], ["#ff0000", "#0000ff"], opacity=1.0)
    assert tuple(out[0, 0]) == (0, 0, 255)


def test_overlay_rejects_mask_of_another_size():
    with pytest.raises(ValueError, match="does not match"):
        overlay_masks(gray_image(), [np.ones((10, 10), dtype=bool)])


def test_probability_image_is_brighter_where_the_probability_is_higher():
    probability = np.linspace(0, 1, 50, dtype=np.float32)[None].repeat(4, 0)
    picture = probability_image(probability)
    assert picture.shape == (4, 50, 3) and picture.dtype == np.uint8
    brightness = picture.astype(int).sum(-1)[0]
    assert brightness[-1] > brightness[25] > brightness[0]


def test_unknown_colormap_is_a_readable_error():
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        colorize(np.zeros((2, 2)), "nope")


def test_heatmap_is_resized_to_the_image_and_blended_by_opacity():
    image = gray_image(24, 36)
    heat = np.zeros((3, 3), dtype=np.float32)
    heat[0, 0] = 1.0
    assert np.array_equal(heatmap_overlay(image, heat, "viridis", opacity=0.0), image)
    full = heatmap_overlay(image, heat, "viridis", opacity=1.0)
    assert full.shape == image.shape
    assert np.array_equal(full, colorize(resize_map(heat, (24, 36)), "viridis"))
    # hot corner top-left, cold corner bottom-right: viridis yellow vs dark purple
    assert full[0, 0].astype(int).sum() > full[-1, -1].astype(int).sum()


def test_grid_lays_out_one_captioned_tile_per_token():
    image = gray_image(40, 80)
    heats = [np.random.default_rng(i).random((4, 4)) for i in range(5)]
    grid = heatmap_grid(image, heats, [f"t{i}" for i in range(5)], columns=4, tile=64)
    caption = max(14, 64 // 8)
    assert grid.shape == (2 * (64 + caption), 4 * 64, 3)
    assert (grid[-64:, -64:] == 255).all()  # the 8th cell is empty
    assert not (grid[caption : caption + 64, :64] == 255).all()  # the first tile has a heatmap
    with pytest.raises(ValueError, match="titles"):
        heatmap_grid(image, heats, ["only one"])
