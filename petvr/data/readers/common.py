"""What every reader shares: loading annotation files with errors that name file and row, checking captions and
time spans, finding video files by name or stem, and the raise-or-skip policy of ``skip_unreadable``.

File-level problems (a missing annotation file, malformed JSON, a CSV header without a needed column) are always
raised: nothing of the file can be read. Item-level problems (a row naming a video with no file, a caption that is not
a string, a bad time span, a CSV row with the wrong number of fields) are raised too, unless the reader runs with
``skip_unreadable=True``; then the item is left out and recorded in the split's ``SkipReport``.

The row of an error is the 1-based line of a text, CSV or JSON-lines file (and the line where a JSON parser stopped),
the bracketed 0-based index of an item in a JSON list (``[3]``, ``sentences[3]``), or the key of a JSON object entry.

Ambiguous data is refused or reported, never silently resolved. Every reader hands its records to a ``SplitBuilder``,
which refuses a video id listed twice, one file under two ids, two files of one stem in one folder (``a.mp4`` and
``a.avi``) and an empty split, and warns (``DataWarning``) about a repeated (video, caption) pair (kept: see
``SplitBuilder``). ``load_json`` refuses a key repeated in one object (JSON would keep the last value silently).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from petvr.errors import DataError, DataWarning, SkipReport
from petvr.data.records import VIDEO_EXTENSIONS, RetrievalSplit, VideoRecord


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
    """Parse a JSON file; malformed JSON raises ``DataError`` with the line the parser stopped on as the row, and a key
    repeated within one object (whose earlier value JSON would drop silently) raises ``DataError`` naming the key."""
    text = read_text(path)

    def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            seen: set[str] = set()
            repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
            raise DataError(path, f'key "{repeated}" appears twice in one object; which entry is meant is ambiguous')
        return result

    try:
        return json.loads(text, object_pairs_hook=unique_keys)
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
    (``"x"`` for ``x.mp4``, ``"x.mov"`` for ``x.mov.mp4``). When one key matches several files, the benchmark readers
    follow the official loaders: the extension earlier in ``extensions`` wins (``.mp4`` before ``.webm``), then the
    first in sorted walk order. With ``unique=True`` (a user's own folder, where no convention says which is meant)
    such a key is refused instead, with a ``DataError`` naming the files. Hidden files are ignored.
    """

    def __init__(self, root: str | Path, extensions: tuple[str, ...] = VIDEO_EXTENSIONS, unique: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(self.root, "video folder not found")
        self.extensions = tuple(extension.lower() for extension in extensions)
        self.unique = unique
        self._files: list[Path] | None = None
        self._by_name: dict[str, list[Path]] = {}
        self._by_stem: dict[str, list[Path]] = {}

    def files(self) -> list[Path]:
        """Every video file under the root, in sorted walk order."""
        self._build()
        return list(self._files)

    def matches(self, key: str) -> list[Path]:
        """The files ``key`` names, by exact name else by stem, best first (see the class docstring)."""
        self._build()
        return self._by_name.get(key) or self._by_stem.get(key) or []

    def find(self, *keys: str) -> Path | None:
        return next((self.matches(key)[0] for key in keys if self.matches(key)), None)

    def lookup(self, keys: tuple[str, ...], annotation_path: str | Path, row: int | str) -> Path:
        """The file for the first key that has one, else a ``DataError`` naming the annotation file and row (and, with
        ``unique``, one when the key names several files)."""
        key = next((key for key in keys if self.matches(key)), None)
        path = None if key is None else self.matches(key)[0]
        if path is not None and self.unique and len(self.matches(key)) > 1:
            files = " and ".join(str(file) for file in self.matches(key))
            raise DataError(annotation_path, f"video {key!r} is ambiguous: it names {files}; give the path of one",
                            row=row)
        if path is None:
            tried = " or ".join(repr(key) for key in keys)
            raise DataError(annotation_path, f"no video file named {tried} (by name or stem) under {self.root}",
                            row=row)
        return path

    def _build(self) -> None:
        if self._files is not None:
            return
        files: list[Path] = []
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
                    self._by_name.setdefault(name, []).append(path)
                    self._by_stem.setdefault(stem, []).append(path)
                    progress.update()
        for paths in self._by_stem.values():  # stable: walk order within one extension
            paths.sort(key=lambda path: self.extensions.index(path.suffix.lower()))
        self._files = files


class CaptionGroups:
    """Captions of one-caption-per-row files collected per video, videos in order of first appearance: rows naming
    one video are its captions (so a repeated id is not a repeated video here)."""

    def __init__(self, split: str):
        self.split = split
        self._videos: dict[str, tuple[VideoRecord, int | str, list[int | str]]] = {}

    def add(self, video_id: str, path: Path, caption: str, row: int | str) -> None:
        record, _, rows = self._videos.setdefault(video_id, (VideoRecord(video_id, path, self.split, []), row, []))
        record.captions.append(caption)
        rows.append(row)

    def add_to(self, builder: SplitBuilder, annotation_path: str | Path) -> None:
        for record, row, caption_rows in self._videos.values():
            builder.add(record, annotation_path, row, caption_rows=caption_rows)


class SplitBuilder:
    """One split's records, each with the file and row it came from, checked as they come and when done.

    Refused with a ``DataError`` (raised in ``add``, so a reader's ``problems.item()`` guard skips and reports the later
    record under ``skip_unreadable``): a video id twice (naming both rows: one video would be its own negative), one
    file and span under two ids, and two files of one stem in one folder (``a.mp4`` and ``a.avi``, naming both). An
    empty split is refused in ``finish()`` (naming the files and the split), even under ``skip_unreadable``.

    A repeated (video, caption) pair (the same caption, and span where captions are timed, twice for one video) is
    *reported and kept*: one ``DataWarning`` per split names the caption file, the video and the rows. Real
    annotations hold such repeats (MSR-VTT's 20 and MSVD's ~40 crowd captions per video repeat short sentences), the
    official loaders (CLIP4Clip) keep every caption, and the benchmark protocols count every caption as a query, so
    dropping them would change the numbers being reproduced.
    """

    MAX_LISTED = 3

    def __init__(self, dataset: str, split: str, sources: list[str | Path], problems: Problems):
        self.dataset, self.split, self.sources, self.problems = dataset, split, sources, problems
        self.records: list[VideoRecord] = []
        self._ids: dict[str, tuple[str, int | str | None]] = {}
        self._files: dict[tuple[Path, str], list[tuple[VideoRecord, str, int | str | None]]] = {}
        self._repeats: list[tuple[int, str]] = []  # (extra copies, where)
        self._repeat_files: list[str] = []

    def add(self, record: VideoRecord, annotation_path: str | Path, row: int | str | None,
            caption_rows: list[int | str] | None = None, caption_path: str | Path | None = None) -> None:
        """Check and keep ``record``, read at ``row`` of ``annotation_path``; its captions at ``caption_rows`` of
        ``caption_path`` (default: the same file; without rows, captions are named by their position)."""
        where = str(annotation_path)
        if record.video_id in self._ids:
            first_path, first_row = self._ids[record.video_id]
            raise DataError(annotation_path, f"video {record.video_id!r} is listed twice (also "
                                             f"{_at(first_path, first_row, where)}); one video would be its own "
                                             "negative", row)
        folder_stem = (record.path.parent, os.path.splitext(record.path.name)[0])
        for other, other_path, other_row in self._files.get(folder_stem, []):
            if other.path != record.path:
                raise DataError(annotation_path, f"video {record.video_id!r} is {record.path} and video "
                                                 f"{other.video_id!r} ({_at(other_path, other_row, where)}) is "
                                                 f"{other.path}: two files of one stem, likely one video twice; "
                                                 "keep one, or rename one", row)
            if (other.start, other.end) == (record.start, record.end):
                raise DataError(annotation_path, f"video {record.video_id!r} is the file {record.path}, already video "
                                                 f"{other.video_id!r} ({_at(other_path, other_row, where)}); one video "
                                                 "would be its own negative", row)
        self._ids[record.video_id] = (where, row)
        self._files.setdefault(folder_stem, []).append((record, where, row))
        self.records.append(record)
        self._note_repeats(record, caption_rows, caption_path or annotation_path)

    def _note_repeats(self, record: VideoRecord, caption_rows: list[int | str] | None,
                      caption_path: str | Path) -> None:
        spans = record.caption_times or [None] * len(record.captions)
        rows = [f"row {row}" if isinstance(row, int) else row for row in caption_rows] if caption_rows else \
            [f"caption {number}" for number in range(len(record.captions))]
        places: dict[tuple, list[str]] = {}
        for caption, span, row in zip(record.captions, spans, rows):
            places.setdefault((caption, span), []).append(str(row))
        for (caption, _), where in places.items():
            if len(where) > 1:
                self._repeats.append((len(where) - 1, f"video {record.video_id!r}: {caption!r:.60} at "
                                                      f"{', '.join(where[:4])}{', ...' if len(where) > 4 else ''}"))
                if str(caption_path) not in self._repeat_files:
                    self._repeat_files.append(str(caption_path))

    def finish(self) -> RetrievalSplit:
        """The checked split; a ``DataWarning`` for repeated captions, a ``DataError`` when no video is left."""
        if not self.records:
            skipped = self.problems.report.items
            why = (f" ({len(skipped)} unreadable item(s) skipped; the first: {skipped[0].path}"
                   f"{'' if skipped[0].row is None else f' row {skipped[0].row}'}: {skipped[0].problem})"
                   if skipped else "")
            raise DataError(", ".join(str(source) for source in self.sources),
                            f"{self.dataset} split {self.split!r} has no videos{why}")
        if self._repeats:
            listed = "; ".join(where for _, where in self._repeats[:self.MAX_LISTED])
            more = f"; and {len(self._repeats) - self.MAX_LISTED} more" if len(self._repeats) > self.MAX_LISTED else ""
            copies = sum(count for count, _ in self._repeats)
            warnings.warn(DataWarning(f"{', '.join(self._repeat_files)}: {copies} repeated (video, caption) pair(s) in "
                                      f"{self.dataset} split {self.split!r}, kept as the annotation gives them (as the "
                                      f"official loaders do): {listed}{more}"), stacklevel=3)
        return RetrievalSplit(self.dataset, self.split, self.records, self.problems.report)


def _at(path: str, row: int | str | None, here: str) -> str:
    """Where an earlier item was: ``row 3``, or ``other.csv row 3`` when it is another file."""
    place = f"row {row}" if row is not None else ""
    return place if path == here and place else f"{path} {place}".strip()
