import numpy as np
import pytest
import torch
from PIL import Image

from magnet.data.augment import AugmentConfig, augment, crop_around_mask, flip_expression, hflip


@pytest.mark.parametrize(
    "text, flipped",
    [
        ("the cup on the left", "the cup on the right"),
        ("Leftmost man", "Rightmost man"),
        ("the left-most chair", "the right-most chair"),
        ("second from the left", "second from the right"),
        ("RIGHT guy left of the tree", "LEFT guy right of the tree"),
        ("his left hand", "his right hand"),
        ("bright red kite", "bright red kite"),  # no side word inside other words
        ("the man right behind the car", "the man right behind the car"),  # "right" as an adverb
        ("the one on the right next to the dog", "the one on the left next to the dog"),
    ],
)
def test_flip_expression_swaps_sides(text, flipped):
    assert flip_expression(text) == flipped


def test_flip_twice_restores_text():
    text = "the leftmost cup, second from the right"
    assert flip_expression(flip_expression(text)) == text


def scene():
    """6x8 image with a red object on the left and its mask."""
    array = np.zeros((6, 8, 3), np.uint8)
    array[2:4, 1:3] = (255, 0, 0)
    return Image.fromarray(array), array[..., 0] > 0


def test_hflip_mirrors_image_mask_and_text_together():
    image, mask = scene()
    flipped_image, flipped_mask, text = hflip(image, mask, "the red box on the left")
    flipped = np.asarray(flipped_image)
    np.testing.assert_array_equal(flipped, np.asarray(image)[:, ::-1])
    np.testing.assert_array_equal(flipped_mask, mask[:, ::-1])
    np.testing.assert_array_equal(flipped[..., 0] > 0, flipped_mask)  # the mask still covers the red pixels
    assert text == "the red box on the right"
    assert flipped_mask[2:4, 5:7].all()


def test_augment_is_deterministic_given_a_generator():
    image, mask = scene()
    config = AugmentConfig(flip_prob=0.5, crop_prob=0.5, brightness=0.1, contrast=0.1)
    results = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(7)
        results.append([augment(image, mask, "left box", config, generator)[:3] for _ in range(8)])
    for (image_a, mask_a, text_a), (image_b, mask_b, text_b) in zip(*results):
        assert text_a == text_b
        np.testing.assert_array_equal(np.asarray(image_a), np.asarray(image_b))
        np.testing.assert_array_equal(mask_a, mask_b)


def test_flip_probability_one_always_flips_and_zero_never():
    image, mask = scene()
    generator = torch.Generator().manual_seed(0)
    assert augment(image, mask, "left box", AugmentConfig(flip_prob=1.0), generator)[2] == "right box"
    assert augment(image, mask, "left box", AugmentConfig(flip_prob=0.0), generator)[2] == "left box"


def test_crop_keeps_the_whole_mask():
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        mask = np.zeros((60, 80), bool)
        top, left = rng.integers(0, 40), rng.integers(0, 60)
        mask[top : top + rng.integers(1, 20), left : left + rng.integers(1, 20)] = True
        image = Image.fromarray(mask.astype(np.uint8) * 255)
        cropped_image, cropped_mask = crop_around_mask(image, mask, 0.5, generator)
        assert cropped_mask.sum() == mask.sum()
        assert cropped_image.size == (cropped_mask.shape[1], cropped_mask.shape[0])
        np.testing.assert_array_equal(np.asarray(cropped_image) > 0, cropped_mask)
        assert cropped_mask.shape[0] < 60 or cropped_mask.shape[1] < 80


def test_default_config_has_no_crop_and_no_colour_jitter():
    config = AugmentConfig()
    assert config.crop_prob == 0 and config.brightness == 0 and config.contrast == 0
    assert not hasattr(config, "hue")


@pytest.mark.parametrize("changes", [{"flip_prob": 1.5}, {"crop_scale": (0.8, 0.5)}, {"brightness": -0.1}])
def test_invalid_config_is_refused(changes):
    with pytest.raises(ValueError):
        AugmentConfig(**changes)


def test_the_object_map_takes_the_same_flip_and_crop_as_the_mask():
    rng = np.random.default_rng(1)
    labels = np.zeros((60, 80), np.uint8)
    labels[10:20, 5:15], labels[30:45, 50:70], labels[40:50, 10:20] = 1, 2, 3
    mask = labels == 2
    image = Image.fromarray(labels * 80)
    config = AugmentConfig(flip_prob=0.5, crop_prob=1.0, crop_scale=(0.5, 0.9))
    flipped = 0
    for seed in rng.integers(0, 1000, 12):
        generator = torch.Generator().manual_seed(int(seed))
        new_image, new_mask, text, new_labels = augment(image, mask, "the left box", config, generator, labels=labels)
        np.testing.assert_array_equal(new_labels == 2, new_mask)  # the target is still object 2
        np.testing.assert_array_equal(np.asarray(new_image) // 80, new_labels)  # every object where its pixels are
        flipped += text == "the right box"
        generator = torch.Generator().manual_seed(int(seed))  # without a map: the same draws
        np.testing.assert_array_equal(augment(image, mask, "the left box", config, generator)[1], new_mask)
    assert 0 < flipped < 12
