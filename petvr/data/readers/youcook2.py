"""YouCook2 (``youcookii_annotations_trainval.json``).

``{"database": {video_id: {"duration": s, "subset": "training" | "validation", "recipe_type": "101",
"annotations": [{"segment": [start, end], "id": 0, "sentence": "..."}, ...]}}}``, segment times in seconds. The test
subset has no public annotations.

``mode="sentence"`` (default, and what timestamp-supervised training needs): every step sentence is a caption with its
segment in ``caption_times``; ``RetrievalSplit.clips()`` gives clip-level records. ``mode="paragraph"``: the video's
sentences joined into one caption spanning ``[0, duration]``. ``timestamps`` (sentence mode): one seeded click per
step instead of its segment (``petvr.data.timestamps``).

Videos are stored as ``{subset}/{recipe_type}/{video_id}.mp4`` (``.mkv``/``.webm`` too) or flat; they are found by
stem anywhere under ``video_dir``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from petvr.data.readers.common import (
    Problems, SplitBuilder, VideoIndex, caption_text, expect_type, get_key, load_json, read_entries, seconds,
    time_span)
from petvr.data.records import RetrievalSplit, VideoRecord
from petvr.data.timestamps import check_timestamp_rule, with_timestamps

ANNOTATION_FILE = "youcookii_annotations_trainval.json"
SUBSETS = {"train": "training", "val": "validation"}
MODES = ("paragraph", "sentence")


def read_youcook2(annotation_dir: str | Path, video_dir: str | Path, split: str = "val", mode: str = "sentence",
                  skip_unreadable: bool = False, timestamps: str | None = None,
                  timestamp_seed: int = 0) -> RetrievalSplit:
    """Read YouCook2 ``split`` ("train" or "val") as timed step sentences or as paragraphs."""
    if split not in SUBSETS:
        raise ValueError(f"YouCook2 split must be one of {sorted(SUBSETS)}, got {split!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_timestamp_rule(timestamps, mode)
    path = Path(annotation_dir) / ANNOTATION_FILE
    database = expect_type(get_key(load_json(path), "database", path), dict, path, '"database"')
    videos = VideoIndex(video_dir)
    problems = Problems(skip_unreadable)

    builder = SplitBuilder("youcook2", split, [path], problems)
    for video_id, entry in database.items():
        with problems.item():
            if get_key(entry, "subset", path, video_id) != SUBSETS[split]:
                continue
            duration = seconds(get_key(entry, "duration", path, video_id), path, "duration", video_id)
            steps = expect_type(get_key(entry, "annotations", path, video_id), list, path, '"annotations"', video_id)
            def read_step(number: int, step: Any) -> tuple[str, tuple[float, float]]:  # used at once, in this loop
                row = f"{video_id} annotation {number}"
                caption = caption_text(get_key(step, "sentence", path, row), path, row)
                return caption, time_span(get_key(step, "segment", path, row), path, row, duration)

            captions, spans = map(list, zip(*read_entries(steps, read_step, problems, path, video_id, "annotations")))
            file = videos.lookup((video_id,), path, video_id)
            if mode == "paragraph":
                record = VideoRecord(video_id, file, split, [" ".join(captions)], start=0.0, end=duration,
                                     duration=duration)
            else:
                record = with_timestamps(VideoRecord(video_id, file, split, captions, caption_times=spans,
                                                     duration=duration), timestamps, timestamp_seed)
            builder.add(record, path, video_id)
    return builder.finish()
