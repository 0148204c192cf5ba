"""ActivityNet Captions in the CLIP4Clip layout.

- ``train.json`` / ``val_1.json``: ``{"v_<youtube id>": {"duration": s, "timestamps": [[start, end], ...],
  "sentences": [...]}}``, one timestamp per sentence, in seconds.
- ``train_ids.json`` / ``val_ids.json``: a JSON list of the split's ids. There is no test split; val_1 is evaluated.

``mode="paragraph"`` (the retrieval benchmark): one caption per video, its sentences joined, spanning
``[0, duration]``. ``mode="sentence"``: every sentence is a caption with its own span (``caption_times``), clipped to
``[0, duration]``; ``RetrievalSplit.clips()`` turns these into clip-level records. ``timestamps`` (sentence mode):
one seeded click per sentence instead of its span (``petvr.data.timestamps``).

Ids carry a ``v_`` prefix that the video files may or may not have: both names are tried, with and without it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from petvr.errors import DataError
from petvr.data.readers.common import (
    Problems, SplitBuilder, VideoIndex, caption_text, expect_type, get_key, load_json, read_entries, seconds,
    time_span)
from petvr.data.records import RetrievalSplit, VideoRecord
from petvr.data.timestamps import check_timestamp_rule, with_timestamps

SPLIT_FILES = {"train": ("train.json", "train_ids.json"), "val": ("val_1.json", "val_ids.json")}
MODES = ("paragraph", "sentence")


def id_variants(video_id: str) -> tuple[str, str]:
    """The id as given, then with its ``v_`` prefix removed or added."""
    return (video_id, video_id[2:]) if video_id.startswith("v_") else (video_id, "v_" + video_id)


def read_activitynet(annotation_dir: str | Path, video_dir: str | Path, split: str = "val", mode: str = "paragraph",
                     skip_unreadable: bool = False, timestamps: str | None = None,
                     timestamp_seed: int = 0) -> RetrievalSplit:
    """Read ActivityNet Captions ``split`` ("train" or "val", i.e. val_1) as paragraphs or timed sentences."""
    if split not in SPLIT_FILES:
        raise ValueError(f"ActivityNet split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_timestamp_rule(timestamps, mode)
    annotation_dir = Path(annotation_dir)
    captions_path, ids_path = (annotation_dir / name for name in SPLIT_FILES[split])
    ids = expect_type(load_json(ids_path), list, ids_path, "the top level")
    annotations = expect_type(load_json(captions_path), dict, captions_path, "the top level")
    videos = VideoIndex(video_dir)
    problems = Problems(skip_unreadable)

    builder = SplitBuilder("activitynet", split, [ids_path, captions_path], problems)
    for number, video_id in enumerate(ids):
        with problems.item():
            row = f"[{number}]"
            video_id = expect_type(video_id, str, ids_path, "video id", row)
            key = next((name for name in id_variants(video_id) if name in annotations), None)
            if key is None:
                raise DataError(ids_path, f"video {video_id!r} has no entry in {captions_path.name}", row)
            path = videos.lookup(id_variants(key), ids_path, row)
            record = _record(key, path, annotations[key], split, mode, captions_path, problems)
            builder.add(with_timestamps(record, timestamps, timestamp_seed), ids_path, row, caption_path=captions_path)
    return builder.finish()


def _record(video_id: str, path: Path, entry: object, split: str, mode: str, captions_path: Path,
            problems: Problems) -> VideoRecord:
    """One video's record; timestamps are read (and must match the sentences) in sentence mode only."""
    duration = seconds(get_key(entry, "duration", captions_path, video_id), captions_path, "duration", video_id)
    sentences = expect_type(get_key(entry, "sentences", captions_path, video_id), list, captions_path,
                            '"sentences"', video_id)
    timestamps = None
    if mode == "sentence":
        timestamps = expect_type(get_key(entry, "timestamps", captions_path, video_id), list, captions_path,
                                 '"timestamps"', video_id)
        if len(sentences) != len(timestamps):
            raise DataError(captions_path, f"{len(sentences)} sentences but {len(timestamps)} timestamps", video_id)
    def read_sentence(number: int, sentence: Any) -> tuple[str, tuple[float, float] | None]:
        row = f"{video_id} sentence {number}"
        caption = caption_text(sentence, captions_path, row)
        return caption, None if timestamps is None else time_span(timestamps[number], captions_path, row, duration)

    captions, spans = map(list, zip(*read_entries(sentences, read_sentence, problems, captions_path, video_id,
                                                  "sentences")))
    if mode == "paragraph":
        return VideoRecord(video_id, path, split, [" ".join(captions)], start=0.0, end=duration, duration=duration)
    return VideoRecord(video_id, path, split, captions, caption_times=spans, duration=duration)
