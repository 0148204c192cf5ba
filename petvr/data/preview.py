"""Contact sheet of what the model sees from one clip: the sampled, preprocessed frames in model order, each with its
timestamp and whether the frame mask marks it real or padding, under a title naming the file and the sampling settings.

It shows the output of ``video.load_video`` de-normalised for display, so the resize, crop, frame order, padding and
colours it shows are the model's, not a separate rendering.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from petvr.data.video import SamplingConfig, load_video

MIN_TILE = 128
"""Tiles are at least this many pixels wide, so captions fit under small frames (shown with nearest-neighbour)."""
MARGIN = 8
CAPTION_HEIGHT = 18
TITLE_HEIGHT = 44
BACKGROUND = (255, 255, 255)
PAD_FILL = (200, 200, 200)
PAD_TEXT = (110, 110, 110)
TEXT = (20, 20, 20)


def contact_sheet_size(num_frames: int, image_size: int, columns: int) -> tuple[int, int]:
    """``(width, height)`` in pixels of a sheet of ``num_frames`` tiles in ``columns`` columns."""
    tile = max(image_size, MIN_TILE)
    rows = math.ceil(num_frames / columns)
    return columns * tile + (columns + 1) * MARGIN, TITLE_HEIGHT + rows * (tile + CAPTION_HEIGHT + MARGIN) + MARGIN


def _settings_line(config: SamplingConfig, start: float | None, end: float | None, valid: int) -> str:
    selection = f"segment ({'random offsets' if config.train else 'centres'})" if config.sampler == "segment" \
        else f"per-second, {config.subsample}"
    span = "whole video" if start is None and end is None else f"span {start or 0:g}-{'end' if end is None else f'{end:g}'} s"
    return (f"{selection} | {config.max_frames} frames from {config.feature_framerate:g} fps | {config.image_size} px"
            f" | order {config.frame_order} | {span} | {valid} real, {config.max_frames - valid} padded")


def write_contact_sheet(path: str | Path, config: SamplingConfig | None, out_png: str | Path,
                        start: float | None = None, end: float | None = None, columns: int = 6,
                        seed: int | None = 0) -> Path:
    """Write a PNG grid of the clip's sampled frames to ``out_png`` and return its path.

    ``config`` ``None`` means the defaults (CLIP4Clip: 12 frames, 1 fps, uniform, 224 px). ``seed`` fixes the random
    segment offsets and shuffle order of training configs. Raises ``DataError`` for an unreadable video.
    """
    config = config or SamplingConfig()
    rng = None if seed is None else np.random.default_rng(seed)
    frames, frame_mask, timestamps = load_video(path, config, start, end, rng)
    mean = np.asarray(config.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(config.std, dtype=np.float32).reshape(1, 3, 1, 1)
    pixels = np.clip((frames.numpy() * std + mean) * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)

    columns = max(1, min(columns, config.max_frames))
    sheet = Image.new("RGB", contact_sheet_size(config.max_frames, config.image_size, columns), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=12)
    title_font = ImageFont.load_default(size=14)
    valid = int(frame_mask.sum())
    draw.text((MARGIN, 6), Path(path).name, fill=TEXT, font=title_font)
    draw.text((MARGIN, 26), _settings_line(config, start, end, valid), fill=TEXT, font=font)

    tile = max(config.image_size, MIN_TILE)
    for position in range(config.max_frames):
        row, column = divmod(position, columns)
        left = MARGIN + column * (tile + MARGIN)
        top = TITLE_HEIGHT + row * (tile + CAPTION_HEIGHT + MARGIN)
        if frame_mask[position]:
            image = Image.fromarray(pixels[position])
            if tile != config.image_size:
                image = image.resize((tile, tile), Image.Resampling.NEAREST)
            sheet.paste(image, (left, top))
            caption = f"{position + 1}: {float(timestamps[position]):.2f} s"
            draw.text((left, top + tile + 2), caption, fill=TEXT, font=font)
        else:
            draw.rectangle((left, top, left + tile - 1, top + tile - 1), fill=PAD_FILL)
            draw.text((left + tile // 2, top + tile // 2), "pad", fill=PAD_TEXT, font=title_font, anchor="mm")
            draw.text((left, top + tile + 2), f"{position + 1}: pad (masked)", fill=PAD_TEXT, font=font)

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png)
    return out_png
