"""MSR-VTT in the CLIP4Clip release layout (``msrvtt_data.zip``).

- ``MSRVTT_data.json``: ``{"videos": [...], "sentences": [{"video_id", "caption", "sen_id"}, ...]}``, 20 captions per
  video.
- ``MSRVTT_train.9k.csv`` / ``MSRVTT_train.7k.csv``: column ``video_id``, the training videos; their captions come from
  the json (9,000 videos x 20 captions).
- ``MSRVTT_JSFUSION_test.csv``: columns ``key,vid_key,video_id,sentence``, the 1k-A test: 1,000 (video, caption) pairs.

Videos are ``{video_id}.mp4``, falling back to ``{video_id}.webm``, anywhere under ``video_dir``.
"""
from __future__ import annotations

from pathlib import Path

from petvr.errors import DataError
from petvr.data.readers.common import (CaptionGroups, CsvTable, Problems, SplitBuilder, VideoIndex, caption_text,
                                       expect_type, get_key, load_json)
from petvr.data.records import RetrievalSplit, VideoRecord

DATA_JSON = "MSRVTT_data.json"
TEST_CSV = "MSRVTT_JSFUSION_test.csv"
TRAIN_CSV = {"9k": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv"}


def read_msrvtt(annotation_dir: str | Path, video_dir: str | Path, split: str = "train", train_size: str = "9k",
                skip_unreadable: bool = False) -> RetrievalSplit:
    """Read MSR-VTT ``split`` ("train": the 9k or 7k training videos with all their captions; "test": 1k-A)."""
    annotation_dir = Path(annotation_dir)
    videos = VideoIndex(video_dir)
    problems = Problems(skip_unreadable)
    if split == "train":
        if train_size not in TRAIN_CSV:
            raise ValueError(f"train_size must be one of {sorted(TRAIN_CSV)}, got {train_size!r}")
        sources = [annotation_dir / TRAIN_CSV[train_size], annotation_dir / DATA_JSON]
        builder = SplitBuilder("msrvtt", split, sources, problems)
        _read_train(*sources, videos, builder)
    elif split == "test":
        builder = SplitBuilder("msrvtt", split, [annotation_dir / TEST_CSV], problems)
        _read_test(annotation_dir / TEST_CSV, videos, builder)
    else:
        raise ValueError(f"MSR-VTT split must be 'train' or 'test', got {split!r}")
    return builder.finish()


def _read_train(train_csv: Path, data_json: Path, videos: VideoIndex, builder: SplitBuilder) -> None:
    problems = builder.problems
    table = CsvTable(train_csv, required=("video_id",))
    listed: list[tuple[int, str]] = []
    for line, fields in table.rows:
        with problems.item():
            listed.append((line, table.row(line, fields)["video_id"].strip()))
    wanted = {video_id for _, video_id in listed}

    captions: dict[str, list[str]] = {}
    caption_rows: dict[str, list[str]] = {}
    sentences = expect_type(get_key(load_json(data_json), "sentences", data_json), list, data_json, '"sentences"')
    for number, sentence in enumerate(sentences):
        row = f"sentences[{number}]"
        with problems.item():
            video_id = expect_type(get_key(sentence, "video_id", data_json, row), str, data_json, "video_id", row)
            if video_id in wanted:
                captions.setdefault(video_id, []).append(
                    caption_text(get_key(sentence, "caption", data_json, row), data_json, row))
                caption_rows.setdefault(video_id, []).append(row)

    for line, video_id in listed:
        with problems.item():
            if video_id not in captions:
                raise DataError(train_csv, f"video {video_id!r} has no readable sentences in {data_json.name}", line)
            path = videos.lookup((video_id,), train_csv, line)
            builder.add(VideoRecord(video_id, path, "train", captions[video_id]), train_csv, line,
                        caption_rows=caption_rows[video_id], caption_path=data_json)


def _read_test(test_csv: Path, videos: VideoIndex, builder: SplitBuilder) -> None:
    problems = builder.problems
    table = CsvTable(test_csv, required=("video_id", "sentence"))
    groups = CaptionGroups("test")
    for line, fields in table.rows:
        with problems.item():
            row = table.row(line, fields)
            video_id = row["video_id"].strip()
            caption = caption_text(row["sentence"], test_csv, line)
            groups.add(video_id, videos.lookup((video_id,), test_csv, line), caption, line)
    groups.add_to(builder, test_csv)
