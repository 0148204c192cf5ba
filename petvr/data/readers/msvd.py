"""MSVD in the collaborative-experts / CLIP4Clip layout.

- ``raw-captions.pkl``: ``{video_id: [[token, ...], ...]}``, about 40 captions per video, each a list of tokens
  (joined with spaces here). The pickle is read with an unpickler that builds plain data only: any class or global
  other than the builtin containers and scalars is refused with a ``DataError``, so a tampered file cannot run code.
- ``train_list.txt`` / ``val_list.txt`` / ``test_list.txt``: one video id per line (1,200 / 100 / 670).

Evaluation is multi-caption: every caption is a query, captions grouped per video (``RetrievalSplit.queries``).
Videos (``.avi`` in the release, any video extension accepted) are found by stem anywhere under ``video_dir``.
"""
from __future__ import annotations

import builtins
import io
import pickle
from pathlib import Path
from typing import Any

from petvr.errors import DataError
from petvr.data.readers.common import (
    Problems, SplitBuilder, VideoIndex, caption_text, expect_type, read_entries, read_id_list, require_file)
from petvr.data.records import RetrievalSplit, VideoRecord

CAPTIONS_PICKLE = "raw-captions.pkl"
SPLITS = ("train", "val", "test")
PLAIN_TYPES = frozenset({"dict", "list", "tuple", "set", "frozenset", "str", "bytes", "int", "float", "bool"})


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds builtin containers and scalars; every other global is refused."""

    def __init__(self, file: io.BufferedIOBase, path: Path):
        super().__init__(file, encoding="utf-8")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in PLAIN_TYPES:
            return getattr(builtins, name)
        raise DataError(self.path, f"refusing to load {module}.{name}: this pickle may hold plain data only "
                                   f"({', '.join(sorted(PLAIN_TYPES))})")


def load_plain_pickle(path: str | Path) -> Any:
    """Load a pickle of plain data (dicts, lists, strings, numbers), refusing anything that names a class."""
    path = require_file(path)
    with open(path, "rb") as handle:
        try:
            return PlainDataUnpickler(handle, path).load()
        except DataError:
            raise
        except Exception as error:  # a truncated or corrupt pickle raises many kinds of errors
            raise DataError(path, f"unreadable pickle: {type(error).__name__}: {error}") from None


def read_msvd(annotation_dir: str | Path, video_dir: str | Path, split: str = "test",
              skip_unreadable: bool = False) -> RetrievalSplit:
    """Read MSVD ``split`` ("train", "val" or "test"): the listed videos, each with all its captions."""
    if split not in SPLITS:
        raise ValueError(f"MSVD split must be one of {SPLITS}, got {split!r}")
    annotation_dir = Path(annotation_dir)
    videos = VideoIndex(video_dir)
    problems = Problems(skip_unreadable)
    pickle_path = annotation_dir / CAPTIONS_PICKLE
    list_path = annotation_dir / f"{split}_list.txt"
    listed = read_id_list(list_path)
    all_captions = expect_type(load_plain_pickle(pickle_path), dict, pickle_path, "the top level")

    builder = SplitBuilder("msvd", split, [list_path, pickle_path], problems)
    for line, video_id in listed:
        with problems.item():
            if video_id not in all_captions:
                raise DataError(list_path, f"video {video_id!r} has no captions in {pickle_path.name}", line)
            path = videos.lookup((video_id,), list_path, line)
            entries = expect_type(all_captions[video_id], (list, tuple), pickle_path, "captions", video_id)
            captions = read_entries(entries, lambda number, entry: _caption(entry, pickle_path, f"{video_id}[{number}]"),
                                    problems, pickle_path, video_id, "captions")
            builder.add(VideoRecord(video_id, path, split, captions), list_path, line, caption_path=pickle_path)
    return builder.finish()


def _caption(entry: Any, path: Path, row: str) -> str:
    """A caption stored as a token list (the release) or as one string."""
    if isinstance(entry, (list, tuple)):
        for token in entry:
            if not isinstance(token, str):
                raise DataError(path, f"caption token is not a string (found {type(token).__name__})", row)
        entry = " ".join(entry)
    return caption_text(entry, path, row)
