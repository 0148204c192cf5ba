"""A user's own collection: a folder of videos with a caption file, or a bare folder of videos to index.

Caption file, ``.csv`` (header row) or ``.jsonl`` (one object per line), with fields ``video``, ``caption`` and,
optionally, ``start`` and ``end`` in seconds. ``video`` is a path relative to the video folder (``cats/tom.mp4``) or a
bare name or stem (``tom.mp4``, ``tom``) looked up anywhere under it. Rows of the same video are grouped into one
record in order of first appearance; when a row has ``start``/``end``, every row of that video must have them, and
they become the captions' ``caption_times``. A record's ``video_id`` is the file's path relative to the video folder.

Timestamp supervision (``petvr.editing``): a ``timestamp`` field (seconds, one click inside the caption's moment)
gives ``caption_timestamps`` instead; a video's rows must all have one or none. Rows with a timestamp may also give
``start``/``end``: those spans are then kept in ``reference_times``, only to measure edited clips against.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from petvr.errors import DataError
from petvr.data.readers.common import (CsvTable, Problems, SplitBuilder, VideoIndex, caption_text, expect_type,
                                       read_text, require_file, seconds, time_span)
from petvr.data.records import VIDEO_EXTENSIONS, RetrievalSplit, VideoRecord


def read_custom(annotations: str | Path, video_dir: str | Path, split: str = "all",
                skip_unreadable: bool = False) -> RetrievalSplit:
    """Read a ``.csv`` or ``.jsonl`` caption file over the videos in ``video_dir``."""
    annotations = require_file(annotations)
    videos = VideoIndex(video_dir, unique=True)
    problems = Problems(skip_unreadable)
    records: dict[Path, tuple[VideoRecord, int, list[int]]] = {}
    parse, rows = _rows(annotations)
    for line, raw in rows:
        with problems.item():
            video, caption, span, timestamp = parse(line, raw)
            path = _resolve(video, videos, annotations, line)
            record, first_line, lines = records.get(path) or (None, line, [])
            timed = timestamp is not None
            if record is None:
                video_id = path.relative_to(videos.root).as_posix()
                spans = None if span is None else []
                record = VideoRecord(video_id, path, split, [], caption_times=None if timed else spans,
                                     caption_timestamps=[] if timed else None,
                                     reference_times=spans if timed else None)
            elif timed != (record.caption_timestamps is not None):
                raise DataError(annotations, f"video {record.video_id!r} has rows with and without a timestamp; "
                                             "give one on every row of a video or on none", line)
            elif (span is None) != ((record.reference_times if timed else record.caption_times) is None):
                raise DataError(annotations, f"video {record.video_id!r} has rows with and without start/end; "
                                             "give them on every row of a video or on none", line)
            record.captions.append(caption)
            if timed:
                record.caption_timestamps.append(timestamp)
            if span is not None:
                (record.reference_times if timed else record.caption_times).append(span)
            lines.append(line)
            records[path] = record, first_line, lines
    builder = SplitBuilder("custom", split, [annotations], problems)
    for record, first_line, lines in records.values():
        with problems.item():
            builder.add(record, annotations, first_line, caption_rows=lines)
    return builder.finish()


def read_video_folder(video_dir: str | Path, split: str = "all",
                      extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> RetrievalSplit:
    """Every video file under ``video_dir`` (recursively, sorted), without captions: a collection to index.

    Two files of one stem in one folder (``a.mp4`` and ``a.avi``) are refused with a ``DataError`` naming both: most
    likely one video twice, which would be its own negative and its own duplicate hit."""
    index = VideoIndex(video_dir, extensions)
    files = index.files()
    if not files:
        raise DataError(index.root, f"no video files found (looked for {', '.join(index.extensions)})")
    builder = SplitBuilder("folder", split, [index.root], Problems(skip_unreadable=False))
    for path in files:
        builder.add(VideoRecord(path.relative_to(index.root).as_posix(), path, split, []), path, None)
    return builder.finish()


Row = tuple[str, str, tuple[float, float] | None, float | None]


def _rows(path: Path) -> tuple[Callable[[int, Any], Row], list[tuple[int, Any]]]:
    """The raw rows of a caption file with their line numbers, and the parser that turns one into ``Row``."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        table = CsvTable(path, required=("video", "caption"))
        return (lambda line, fields: _fields(table.row(line, fields), path, line)), table.rows
    if suffix == ".jsonl":
        lines = read_text(path).splitlines()
        return ((lambda line, text: _json_row(text, path, line)),
                [(number, text) for number, text in enumerate(lines, start=1) if text.strip()])
    raise DataError(path, f"unsupported caption file type {path.suffix!r}: use .csv or .jsonl")


def _json_row(text: str, path: Path, line: int) -> Row:
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(path, f"malformed JSON: {error.msg} (column {error.colno})", line) from None
    expect_type(entry, dict, path, "line", line)
    for key in ("video", "caption"):
        if key not in entry:
            raise DataError(path, f'missing key "{key}"', line)
    return _fields(entry, path, line)


def _fields(entry: dict[str, Any], path: Path, line: int) -> Row:
    """Check one row's fields: a video name, a caption, both or neither of start/end, and an optional timestamp inside
    them (empty means absent)."""
    video = entry["video"]
    if not isinstance(video, str) or not video.strip():
        raise DataError(path, f"video should be a non-empty file name or path, found {video!r:.60}", line)
    caption = caption_text(entry["caption"], path, line)
    start, end = (entry.get(key) for key in ("start", "end"))
    start, end = (None if value is None or value == "" else value for value in (start, end))
    if (start is None) != (end is None):
        raise DataError(path, "give both start and end, or neither", line)
    span = None if start is None else time_span([start, end], path, line)
    timestamp = entry.get("timestamp")
    timestamp = None if timestamp is None or timestamp == "" else seconds(timestamp, path, "timestamp", line)
    if timestamp is not None and span is not None and not span[0] <= timestamp <= span[1]:
        raise DataError(path, f"timestamp {timestamp:g} s lies outside its span [{span[0]:g}, {span[1]:g}]", line)
    return video.strip(), caption, span, timestamp


def _resolve(video: str, videos: VideoIndex, annotations: Path, line: int) -> Path:
    """The file a row names: a path relative to the video folder, else a name or stem found anywhere under it."""
    relative = Path(os.path.normpath(video))
    if relative.is_absolute() or relative.parts[:1] == ("..",):
        raise DataError(annotations, f"video {video!r} is not a path inside the video folder {videos.root}", line)
    if (videos.root / relative).is_file():
        return videos.root / relative
    if len(relative.parts) > 1:
        raise DataError(annotations, f"no video file {video!r} under {videos.root}", line)
    return videos.lookup((video,), annotations, line)
