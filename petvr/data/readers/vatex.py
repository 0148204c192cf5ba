"""VATEX (English captions) with the HGR split, as the TS2-Net loader reads it.

- Captions: the official ``vatex_training_v1.0.json`` / ``vatex_validation_v1.0.json``, each a list of
  ``{"videoID": "<youtube id>_<start>_<end>", "enCap": [10 captions], "chCap": [...]}``; a ``{videoID: [captions]}``
  dictionary (HGR's ``ref_captions.json``) is read too.
- Split: one video id per line in ``{split}_list.txt`` (or HGR's ``.npy`` name arrays): 25,991 train videos from the
  training file, 1,500 val and 1,500 test from the validation file. By default the train split reads the training
  captions and val/test read the validation captions; ``caption_files`` and ``split_file`` override this.

Evaluation is multi-caption (10 English captions per video). Videos are found by ``videoID`` stem under ``video_dir``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from petvr.errors import DataError
from petvr.data.readers.common import (
    Problems, SplitBuilder, VideoIndex, caption_text, expect_type, get_key, load_json, read_entries, read_id_list)
from petvr.data.records import RetrievalSplit, VideoRecord

DEFAULT_CAPTION_FILES = {
    "train": ("vatex_training_v1.0.json",),
    "val": ("vatex_validation_v1.0.json",),
    "test": ("vatex_validation_v1.0.json",),
}


def read_vatex(annotation_dir: str | Path, video_dir: str | Path, split: str = "test",
               caption_files: tuple[str, ...] | None = None, split_file: str | None = None,
               skip_unreadable: bool = False) -> RetrievalSplit:
    """Read VATEX ``split``: the listed videos, each with its English captions (``enCap``)."""
    if caption_files is None:
        if split not in DEFAULT_CAPTION_FILES:
            raise ValueError(f"no default caption files for VATEX split {split!r}; pass caption_files")
        caption_files = DEFAULT_CAPTION_FILES[split]
    annotation_dir = Path(annotation_dir)
    list_path = annotation_dir / (split_file or f"{split}_list.txt")
    listed = read_id_list(list_path)
    videos = VideoIndex(video_dir)
    problems = Problems(skip_unreadable)

    raw_captions: dict[str, tuple[Path, str, Any]] = {}
    for name in caption_files:
        _collect_captions(annotation_dir / name, raw_captions, problems)

    builder = SplitBuilder("vatex", split, [list_path, *(annotation_dir / name for name in caption_files)], problems)
    for line, video_id in listed:
        with problems.item():
            if video_id not in raw_captions:
                files = ", ".join(caption_files)
                raise DataError(list_path, f"video {video_id!r} has no captions in {files}", line)
            path = videos.lookup((video_id,), list_path, line)
            source, row, entry = raw_captions[video_id]
            entries = expect_type(get_key(entry, "enCap", source, row), list, source, '"enCap"', row)
            captions = read_entries(entries, lambda number, text: caption_text(text, source, f"{row} caption {number}"),
                                    problems, source, row, "English captions")
            builder.add(VideoRecord(video_id, path, split, captions), list_path, line, caption_path=source)
    return builder.finish()


def _collect_captions(path: Path, into: dict[str, tuple[Path, str, Any]], problems: Problems) -> None:
    """Map videoID -> (file, row, entry with "enCap") from an official list or a ``{videoID: [...]}`` dictionary.

    Entries are checked later, only for the videos of the split; the first file naming a video wins.
    """
    data = expect_type(load_json(path), (list, dict), path, "the top level")
    if isinstance(data, dict):
        for video_id, captions in data.items():
            into.setdefault(video_id, (path, video_id, {"enCap": captions}))
        return
    for number, entry in enumerate(data):
        row = f"[{number}]"
        with problems.item():
            video_id = expect_type(get_key(entry, "videoID", path, row), str, path, '"videoID"', row)
            into.setdefault(video_id, (path, row, entry))
