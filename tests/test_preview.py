"""Contact sheet: a PNG of the expected size, real frames where the mask says so, grey padding tiles."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from petvr.errors import DataError
from petvr.data.preview import MARGIN, MIN_TILE, PAD_FILL, TITLE_HEIGHT, contact_sheet_size, write_contact_sheet
from petvr.data.video import SamplingConfig


def test_contact_sheet_shows_real_frames_and_padding(write_numbered_video, tmp_path):
    video = write_numbered_video(tmp_path / "clip.mp4", 40)  # 4 s: 4 real frames of 6
    config = SamplingConfig(max_frames=6, image_size=48)
    out = write_contact_sheet(video, config, tmp_path / "sheets" / "clip.png", columns=3)

    sheet = np.asarray(Image.open(out).convert("RGB"))
    width, height = contact_sheet_size(6, 48, 3)
    assert (width, height) == (3 * MIN_TILE + 4 * MARGIN, TITLE_HEIGHT + 2 * (MIN_TILE + 18 + MARGIN) + MARGIN)
    assert sheet.shape == (height, width, 3)

    def tile_pixel(position: int) -> np.ndarray:  # a point in the left (low-number) half of a tile
        row, column = divmod(position, 3)
        return sheet[TITLE_HEIGHT + row * (MIN_TILE + 18 + MARGIN) + MIN_TILE // 4,
                     MARGIN + column * (MIN_TILE + MARGIN) + MIN_TILE // 8]

    for position, number in enumerate([0, 10, 20, 30]):  # frame i is painted grey 4 * i on its left half
        assert np.abs(tile_pixel(position).astype(int) - 4 * number).max() <= 3
    for position in (4, 5):
        assert tuple(tile_pixel(position)) == PAD_FILL


def test_contact_sheet_of_an_unreadable_video_raises(tmp_path):
    with pytest.raises(DataError, match="missing.mp4"):
        write_contact_sheet(tmp_path / "missing.mp4", None, tmp_path / "out.png")
    assert not (tmp_path / "out.png").exists()
