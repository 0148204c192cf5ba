"""What every reader shares: loading annotation files with errors that name file and row, checking captions and
time spans, finding video files by name or stem, and the raise-or-skip policy of ``skip_unreadable``.

File-level problems (a missing annotation file, malformed JSON, a CSV header without a needed column) are always
raised: nothing of the file can be read. Item-level problems (a row naming a video with no file, a caption that is not
a string, a bad time span, a CSV row with the wrong number of fields) are raised too, unless the reader runs with
``skip_unreadable=True``; then the item is left out and recorded in the split's ``SkipReport``.

The row of an error is the 1-based line of a text, CSV or JSON-lines file (and the line where a JSON parser stopped),
the bracketed 0-based index of an item in a JSON list (``[3]``, ``sentences[3]``), or the key of a JSON object entry.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from petvr.errors import DataError, SkipReport
from petvr.data.records import VIDEO_EXTENSIONS, VideoRecord


class Problems:
    """Item-level problems of one read: raised, or recorded in ``report`` under ``skip_unreadable``."""

    def __init__(self, skip_unreadable: bool):
        self.skip_unreadable = skip_unreadable
        self.report = SkipReport()

    @contextmanager
    def item(self) -> Iterator[None]:
        """Guard one item: a ``DataError`` inside the block is raised, or recorded and the rest of the block skipped."""
        try:
            yield
        except DataError as error:
            if not self.skip_unreadable:
                raise
            self.report.add(error)


def read_entries(entries: list, read_one, problems: Problems, path: str | Path, row: int | str, what: str) -> list:
    """``read_one(number, entry)`` for every entry of one video, each guarded by ``problems``; the readable results.

    A video left with none raises ``DataError(path, "no readable <what>", row)`` (recorded under ``skip_unreadable``
    when the caller guards the video too).
    """
    results = []
    for number, entry in enumerate(entries):
        with problems.item():
            results.append(read_one(number, entry))
    if not results:
        raise DataError(path, f"no readable {what}", row)
    return results


def require_file(path: str | Path, what: str = "annotation file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, f"{what} not found")
    return path


def read_text(path: str | Path) -> str:
    path = require_file(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise DataError(path, f"not UTF-8 text ({error.reason} at byte {error.start})") from None


def load_json(path: str | Path) -> Any:
    """Parse a JSON file; malformed JSON raises ``DataError`` with the line the parser stopped on as the row."""
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DataError(path, f"malformed JSON: {error.msg} (column {error.colno})", row=error.lineno) from None


def expect_type(value: Any, expected: type | tuple[type, ...], path: str | Path, what: str,
                row: int | str | None = None) -> Any:
    """Return ``value`` if it has the expected JSON type, else raise a ``DataError`` naming what was found."""
    if not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise DataError(path, f"{what} should be a {names}, found {type(value).__name__}", row=row)
    return value


def get_key(item: Any, key: str, path: str | Path, row: int | str | None = None) -> Any:
    """``item[key]`` for a JSON object, with a ``DataError`` when the item is not an object or lacks the key."""
    expect_type(item, dict, path, "entry", row)
    if key not in item:
        raise DataError(path, f'missing key "{key}"', row=row)
    return item[key]


def caption_text(value: Any, path: str | Path, row: int | str) -> str:
    """A caption as clean text: it must be a non-empty string."""
    if not isinstance(value, str):
        raise DataError(path, f"caption is not a string (found {type(value).__name__}: {value!r:.60})", row=row)
    text = " ".join(value.split())
    if not text:
        raise DataError(path, "caption is empty", row=row)
    return text


def seconds(value: Any, path: str | Path, what: str, row: int | str) -> float:
    """A finite, non-negative time in seconds from a JSON number or a CSV string."""
    if isinstance(value, bool):
        raise DataError(path, f"{what} is not a number: {value!r}", row=row)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(path, f"{what} is not a number: {value!r:.60}", row=row) from None
    if not math.isfinite(number) or number < 0:
        raise DataError(path, f"{what} must be a finite time >= 0 s, found {number}", row=row)
    return number


def time_span(value: Any, path: str | Path, row: int | str, duration: float | None = None) -> tuple[float, float]:
    """A ``[start, end]`` pair in seconds, clipped to ``[0, duration]`` when the duration is known."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise DataError(path, f"time span should be [start, end], found {value!r:.60}", row=row)
    start, end = (seconds(v, path, name, row) for v, name in zip(value, ("span start", "span end")))
    if start > end:
        raise DataError(path, f"span starts after it ends: [{start}, {end}]", row=row)
    if duration is not None:
        if start >= duration:
            raise DataError(path, f"span [{start}, {end}] starts at or after the end of the {duration} s video",
                            row=row)
        end = min(end, duration)
    return start, end


def read_id_list(path: str | Path) -> list[tuple[int, str]]:
    """``(line number, id)`` for each non-blank line of a split list; a ``.npy`` list (HGR splits) gives index + 1."""
    path = require_file(path, "split list")
    if path.suffix == ".npy":
        try:
            names = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise DataError(path, f"not a plain array of names: {error}") from None
        return [(index + 1, str(name).strip()) for index, name in enumerate(names.reshape(-1)) if str(name).strip()]
    lines = read_text(path).splitlines()
    return [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()]


class CsvTable:
    """The rows of a delimited text file, with line numbers.

    With ``columns=None`` the first line is the header and must contain ``required``; with ``columns`` given the file
    has no header and every row must have exactly those fields (LSMDC). ``row(line, fields)`` maps a row's fields to
    column names and raises a ``DataError`` for a row with the wrong number of fields.
    """

    def __init__(self, path: str | Path, required: tuple[str, ...] = (), columns: tuple[str, ...] | None = None,
                 delimiter: str = ","):
        self.path = require_file(path)
        quoting = csv.QUOTE_NONE if columns is not None else csv.QUOTE_MINIMAL
        reader = csv.reader(io.StringIO(read_text(self.path), newline=""), delimiter=delimiter, quoting=quoting)
        self.rows: list[tuple[int, list[str]]] = []
        try:
            for fields in reader:
                if any(field.strip() for field in fields):
                    self.rows.append((reader.line_num, fields))
        except csv.Error as error:
            raise DataError(self.path, f"malformed CSV: {error}", row=reader.line_num) from None
        if columns is None:
            if not self.rows:
                raise DataError(self.path, "empty file: no header row")
            header_line, header = self.rows.pop(0)
            columns = tuple(name.strip() for name in header)
            missing = [name for name in required if name not in columns]
            if missing:
                raise DataError(self.path, f"missing column(s) {', '.join(missing)}; "
                                           f"the header has {', '.join(columns)}", row=header_line)
        self.columns = columns

    def row(self, line: int, fields: list[str]) -> dict[str, str]:
        if len(fields) != len(self.columns):
            raise DataError(self.path, f"expected {len(self.columns)} fields ({', '.join(self.columns)}), "
                                       f"found {len(fields)}", row=line)
        return dict(zip(self.columns, fields))


class VideoIndex:
    """The video files under a folder, found by one recursive walk (on first use) and looked up by name or stem.

    A key matches a file name exactly (``"x.mov"``) or a file's stem, the name without its last extension
    (``"x"`` for ``x.mp4``, ``"x.mov"`` for ``x.mov.mp4``). When one stem has several files, the extension earlier in
    ``extensions`` wins (``.mp4`` before ``.webm``), then the first in sorted walk order. Hidden files are ignored.
    """

    def __init__(self, root: str | Path, extensions: tuple[str, ...] = VIDEO_EXTENSIONS):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "video folder not found")
        self.extensions = tuple(extension.lower() for extension in extensions)
        self._files: list[Path] | None = None
        self._by_name: dict[str, Path] = {}
        self._by_stem: dict[str, Path] = {}

    def files(self) -> list[Path]:
        """Every video file under the root, in sorted walk order."""
        self._build()
        return list(self._files)

    def find(self, *keys: str) -> Path | None:
        self._build()
        for key in keys:
            path = self._by_name.get(key) or self._by_stem.get(key)
            if path is not None:
                return path
        return None

    def lookup(self, keys: tuple[str, ...], annotation_path: str | Path, row: int | str) -> Path:
        """The file for the first key that has one, else a ``DataError`` naming the annotation file and row."""
        path = self.find(*keys)
        if path is None:
            tried = " or ".join(repr(key) for key in keys)
            raise DataError(annotation_path, f"no video file named {tried} (by name or stem) under {self.root}",
                            row=row)
        return path

    def _build(self) -> None:
        if self._files is not None:
            return
        files: list[Path] = []
        rank: dict[str, int] = {}
        visited: set[str] = set()  # real folders already walked: symlinked folders are followed, cycles are not
        with tqdm(desc=f"indexing videos in {self.root}", unit="file", disable=None, leave=False) as progress:
            for folder, subfolders, names in os.walk(self.root, followlinks=True):
                real = os.path.realpath(folder)
                if real in visited:
                    subfolders.clear()
                    continue
                visited.add(real)
                subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
                for name in sorted(names):
                    stem, extension = os.path.splitext(name)
                    extension = extension.lower()
                    if name.startswith(".") or extension not in self.extensions:
                        continue
                    path = Path(folder) / name
                    files.append(path)
                    self._by_name.setdefault(name, path)
                    preference = self.extensions.index(extension)
                    if stem not in self._by_stem or preference < rank[stem]:
                        self._by_stem[stem], rank[stem] = path, preference
                    progress.update()
        self._files = files


class CaptionGroups:
    """Captions of one-caption-per-row files collected per video, videos in order of first appearance."""

    def __init__(self, split: str):
        self.split = split
        self._videos: dict[str, VideoRecord] = {}

    def add(self, video_id: str, path: Path, caption: str) -> None:
        record = self._videos.setdefault(video_id, VideoRecord(video_id, path, self.split, []))
        record.captions.append(caption)

    def records(self) -> list[VideoRecord]:
        return list(self._videos.values())
