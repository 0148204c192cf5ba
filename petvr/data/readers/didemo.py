"""DiDeMo (LisaAnne/LocalizingMoments) in the CLIP4Clip layout.

- ``{train,val,test}_data.json``: a list of moments ``{"video": "<file name with extension>", "description",
  "times": [[first, last], ...], "annotation_id", ...}``. ``times`` holds one pair per annotator (usually four) of
  5-second segment indices 0..5, inclusive: ``[a, b]`` covers seconds ``[5a, 5(b + 1)]``.
- ``{train,val,test}_list.txt``: the split's video file names (8,395 / 1,065 / 1,004 in the retrieval papers), in the
  order records are returned. Moments of videos not in the list are not read.

``mode="paragraph"`` (the retrieval benchmark): one caption per video, all its descriptions joined, spanning the 30 s
annotated window ``[0, 30]``. ``mode="sentence"``: one caption per moment with its consensus span (``caption_times``); with ``timestamps``, one seeded
click per moment instead (``petvr.data.timestamps``), the record's ``duration`` then being the 30 s annotated window.

Consensus span, when annotators differ: the segment pair chosen by most annotators; on a tie, the tied pair with the
largest summed temporal IoU against all annotators' pairs; on a further tie, the earliest then the shortest.

Video files are found by the listed name itself (``x.mov``), as a stem (``x.mov.mp4``) or without its extension
(``x.mp4``), anywhere under ``video_dir``.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from petvr.errors import DataError
from petvr.data.readers.common import (Problems, SplitBuilder, VideoIndex, caption_text, expect_type, get_key,
                                       load_json, read_id_list)
from petvr.data.records import RetrievalSplit, VideoRecord
from petvr.data.timestamps import check_timestamp_rule, with_timestamps

SPLITS = ("train", "val", "test")
MODES = ("paragraph", "sentence")
SEGMENT_SECONDS = 5.0
NUM_SEGMENTS = 6


def segment_iou(first: tuple[int, int], second: tuple[int, int]) -> float:
    """Temporal IoU of two inclusive segment-index ranges."""
    overlap = max(0, min(first[1], second[1]) - max(first[0], second[0]) + 1)
    union = (first[1] - first[0] + 1) + (second[1] - second[0] + 1) - overlap
    return overlap / union


def consensus_segments(pairs: list[tuple[int, int]]) -> tuple[int, int]:
    """The annotators' consensus ``[first, last]`` segment pair (rule in the module docstring)."""
    votes = Counter(pairs)
    return min(votes, key=lambda pair: (-votes[pair], -sum(segment_iou(pair, other) for other in pairs), pair))


def read_didemo(annotation_dir: str | Path, video_dir: str | Path, split: str = "test", mode: str = "paragraph",
                skip_unreadable: bool = False, timestamps: str | None = None,
                timestamp_seed: int = 0) -> RetrievalSplit:
    """Read DiDeMo ``split`` ("train", "val" or "test") as paragraphs or as timed moments."""
    if split not in SPLITS:
        raise ValueError(f"DiDeMo split must be one of {SPLITS}, got {split!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_timestamp_rule(timestamps, mode)
    annotation_dir = Path(annotation_dir)
    data_path, list_path = annotation_dir / f"{split}_data.json", annotation_dir / f"{split}_list.txt"
    listed = read_id_list(list_path)
    moments = expect_type(load_json(data_path), list, data_path, "the top level")
    videos = VideoIndex(video_dir)
    problems = Problems(skip_unreadable)

    wanted = {name for _, name in listed}
    captions: dict[str, list[str]] = {}
    spans: dict[str, list[tuple[float, float]]] = {}
    caption_rows: dict[str, list[str]] = {}
    for number, moment in enumerate(moments):
        row = f"[{number}]"
        with problems.item():
            video = expect_type(get_key(moment, "video", data_path, row), str, data_path, '"video"', row)
            if video not in wanted:
                continue
            caption = caption_text(get_key(moment, "description", data_path, row), data_path, row)
            if mode == "sentence":
                span = _moment_span(get_key(moment, "times", data_path, row), data_path, row)
                spans.setdefault(video, []).append(span)
            captions.setdefault(video, []).append(caption)
            caption_rows.setdefault(video, []).append(row)

    builder = SplitBuilder("didemo", split, [list_path, data_path], problems)
    for line, video in listed:
        with problems.item():
            if video not in captions:
                raise DataError(list_path, f"video {video!r} has no readable moments in {data_path.name}", line)
            path = videos.lookup((video, os.path.splitext(video)[0]), list_path, line)
            if mode == "paragraph":
                record = VideoRecord(video, path, split, [" ".join(captions[video])], start=0.0,
                                     end=SEGMENT_SECONDS * NUM_SEGMENTS)
                builder.add(record, list_path, line, caption_path=data_path)
            else:
                record = VideoRecord(video, path, split, captions[video], caption_times=spans[video])
                if timestamps is not None:
                    record = with_timestamps(record, timestamps, timestamp_seed)
                    record.duration = SEGMENT_SECONDS * NUM_SEGMENTS
                builder.add(record, list_path, line, caption_rows=caption_rows[video], caption_path=data_path)
    return builder.finish()


def _moment_span(times: Any, path: Path, row: str) -> tuple[float, float]:
    """Seconds of the consensus of the annotators' ``[first, last]`` segment pairs."""
    expect_type(times, list, path, '"times"', row)
    if not times:
        raise DataError(path, '"times" is empty', row)
    pairs = []
    for pair in times:
        valid = (isinstance(pair, list) and len(pair) == 2
                 and all(isinstance(index, int) and not isinstance(index, bool) for index in pair)
                 and 0 <= pair[0] <= pair[1] < NUM_SEGMENTS)
        if not valid:
            raise DataError(path, f"times entry {pair!r:.40} is not a [first, last] pair of segment indices "
                                  f"0..{NUM_SEGMENTS - 1}", row)
        pairs.append((pair[0], pair[1]))
    first, last = consensus_segments(pairs)
    return first * SEGMENT_SECONDS, (last + 1) * SEGMENT_SECONDS
