"""One image reader for user input and training data: same pixels, same guards."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from magnet.data.dataset import ReferringDataset
from magnet.data.jsonl import ReferringRecord
from magnet.imageio import MAX_PIXELS, ImageError, load_image


def record(path, mask) -> ReferringRecord:
    return ReferringRecord(id=0, image_path=path, mask=mask, expression="the thing")


def test_a_16_bit_png_reads_the_same_in_training_and_in_the_app(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((8, 10), 30000, dtype=np.uint16)).save(path)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((8, 10), 255, dtype=np.uint8)).save(mask)
    user = np.asarray(load_image(path))
    training, _ = ReferringDataset([record(path, str(mask))], image_size=8).load_original(0)
    assert np.array_equal(np.asarray(training), user)
    assert abs(int(user[0, 0, 0]) - round(30000 / 65535 * 255)) <= 1  # scaled by the bit depth, not clipped to 255


def test_training_keeps_the_full_size_and_users_get_large_photos_downscaled(tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (5000, 40), (10, 20, 30)).save(path)
    assert load_image(path).size == (4096, 33)
    assert load_image(path, max_side=None).size == (5000, 40)


def test_training_data_has_the_decompression_bomb_guard(tmp_path, monkeypatch, caplog):
    path = tmp_path / "bomb.png"
    Image.new("L", (200, 200)).save(path)
    monkeypatch.setattr("magnet.imageio.MAX_PIXELS", 100 * 100)
    with pytest.raises(ImageError, match="downscale it first"):
        load_image(path)
    dataset = ReferringDataset([record(path, str(path))], image_size=8)
    assert dataset[0] is None and "dropping" in caplog.text
    assert MAX_PIXELS == 100_000_000
