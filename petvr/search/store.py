"""The index's SQLite store: what the vectors belong to.

``index.sqlite`` holds

- ``meta``: the identity of the vectors (adapter and backbone hashes, method, sampling, dimension), the collection's
  root folder, the segment length, and ``generation``, bumped by every committed change;
- ``videos``: one row per indexed file: its path relative to the root, size, mtime, content fingerprint, duration;
- ``segments``: one row per embedded clip of a video (the whole video, or one window of a long one): start and end
  seconds, the vector faiss searches (float32), the frame features (float16) and their times (float64), and for a
  method whose ``encode_video`` gives more than frame features (a dict), the rest as float16 ``.npz`` bytes;
- ``failures``: files that could not be read, with the problem, so the next run reports them without retrying
  unless the file changed.

Every batch of videos is one transaction (SQLite's journal makes it atomic): a process killed mid-run leaves every
finished batch in place and nothing half-written, which is what makes indexing resumable. A segment's row id is its
id in faiss.
"""
from __future__ import annotations

import io
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STORE_NAME = "index.sqlite"
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS videos (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    fingerprint TEXT NOT NULL, duration REAL NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY, video_id INTEGER NOT NULL REFERENCES videos(id) ON DELETE CASCADE,
    start REAL NOT NULL, end REAL NOT NULL, vector BLOB NOT NULL, frames BLOB NOT NULL, times BLOB NOT NULL,
    extras BLOB);
CREATE INDEX IF NOT EXISTS segments_by_video ON segments(video_id);
CREATE TABLE IF NOT EXISTS failures (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, problem TEXT NOT NULL);
"""


@dataclass(frozen=True)
class VideoRow:
    id: int
    path: str
    size: int
    mtime_ns: int
    fingerprint: str
    duration: float


@dataclass
class SegmentRow:
    """One embedded clip: ``vector (D,)`` float32, ``frames (T, D)`` float16, ``times (T,)`` seconds, ``extras``:
    the other per-video tensors of a method's ``encode_video`` dict (e.g. patch features), by name."""

    start: float
    end: float
    vector: np.ndarray
    frames: np.ndarray
    times: np.ndarray
    extras: dict[str, np.ndarray] | None = None
    id: int | None = None
    video_id: int | None = None


@dataclass(frozen=True)
class IndexedVideo:
    """A file and its clips, ready to be written in one transaction (``Store.put_videos``)."""

    path: str
    size: int
    mtime_ns: int
    fingerprint: str
    duration: float
    segments: list[SegmentRow]


class Store:
    """One connection to an index's ``index.sqlite`` (or a shard's). Not shared between threads."""

    def __init__(self, path: str | Path, create: bool = False):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no index store here (build one with `petvr index FOLDER`)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.connection = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
            self.connection.execute("PRAGMA foreign_keys = ON")
            self.connection.execute("PRAGMA journal_mode = WAL")
            self.connection.executescript(SCHEMA)
        except sqlite3.DatabaseError as error:
            raise ValueError(f"{self.path}: not a petvr index store ({error})") from None
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta({"schema_version": SCHEMA_VERSION})
        elif version != SCHEMA_VERSION:
            raise ValueError(f"{self.path}: index store format {version}, this petvr reads {SCHEMA_VERSION}; "
                             "index the folder again into a new --out")

    def close(self) -> None:
        self.connection.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- meta -------------------------------------------------------------------------------------------------------
    def get_meta(self, key: str, default=None):
        row = self.connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def meta(self) -> dict:
        return {key: json.loads(value) for key, value in self.connection.execute("SELECT key, value FROM meta")}

    def set_meta(self, values: dict) -> None:
        with self.transaction():
            self._set_meta(values)

    def _set_meta(self, values: dict) -> None:
        self.connection.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                                    [(key, json.dumps(value)) for key, value in values.items()])

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation", 0))

    def _bump(self) -> None:
        self._set_meta({"generation": self.generation + 1})

    # -- transactions -----------------------------------------------------------------------------------------------
    def transaction(self):
        store = self

        class _Transaction:
            def __enter__(self):
                store.connection.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind, value, traceback):
                store.connection.execute("COMMIT" if kind is None else "ROLLBACK")

        return _Transaction()

    # -- videos -----------------------------------------------------------------------------------------------------
    def videos(self) -> dict[str, VideoRow]:
        """Every indexed file, by relative path."""
        rows = self.connection.execute("SELECT id, path, size, mtime_ns, fingerprint, duration FROM videos")
        return {row[1]: VideoRow(*row) for row in rows}

    def video(self, video_id: int) -> VideoRow | None:
        row = self.connection.execute("SELECT id, path, size, mtime_ns, fingerprint, duration FROM videos "
                                      "WHERE id = ?", (int(video_id),)).fetchone()
        return None if row is None else VideoRow(*row)

    def count(self, table: str) -> int:
        if table not in ("videos", "segments", "failures"):
            raise ValueError(f"no table {table!r}")
        return self.connection.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    def put_videos(self, videos: Iterable[IndexedVideo]) -> None:
        """Insert (or replace, by path) videos with their segments, and clear their failures: one transaction."""
        with self.transaction():
            for video in videos:
                self.connection.execute("DELETE FROM videos WHERE path = ?", (video.path,))
                self.connection.execute("DELETE FROM failures WHERE path = ?", (video.path,))
                cursor = self.connection.execute(
                    "INSERT INTO videos(path, size, mtime_ns, fingerprint, duration) VALUES (?, ?, ?, ?, ?)",
                    (video.path, video.size, video.mtime_ns, video.fingerprint, video.duration))
                self.connection.executemany(
                    "INSERT INTO segments(video_id, start, end, vector, frames, times, extras) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(cursor.lastrowid, s.start, s.end, _blob(s.vector, np.float32), _blob(s.frames, np.float16),
                      _blob(s.times, np.float64), _extras_blob(s.extras)) for s in video.segments])
            self._bump()

    def touch_videos(self, updates: Iterable[tuple[str, int, int]]) -> None:
        """Record new ``(path, size, mtime_ns)`` of files whose content fingerprint did not change."""
        with self.transaction():
            self.connection.executemany("UPDATE videos SET size = ?, mtime_ns = ? WHERE path = ?",
                                        [(size, mtime, path) for path, size, mtime in updates])

    def delete_videos(self, paths: Iterable[str]) -> int:
        paths = list(paths)
        if not paths:
            return 0
        with self.transaction():
            self.connection.executemany("DELETE FROM videos WHERE path = ?", [(p,) for p in paths])
            self.connection.executemany("DELETE FROM failures WHERE path = ?", [(p,) for p in paths])
            self._bump()
        return len(paths)

    # -- failures ---------------------------------------------------------------------------------------------------
    def failures(self) -> dict[str, tuple[int, int, str]]:
        rows = self.connection.execute("SELECT path, size, mtime_ns, problem FROM failures ORDER BY path")
        return {row[0]: (row[1], row[2], row[3]) for row in rows}

    def put_failures(self, failures: Iterable[tuple[str, int, int, str]]) -> None:
        with self.transaction():
            for path, size, mtime, problem in failures:
                self.connection.execute("DELETE FROM videos WHERE path = ?", (path,))
                self.connection.execute("INSERT OR REPLACE INTO failures(path, size, mtime_ns, problem) "
                                        "VALUES (?, ?, ?, ?)", (path, size, mtime, problem))
            self._bump()

    # -- segments ---------------------------------------------------------------------------------------------------
    def vectors(self, dim: int, batch: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids (n,) int64, vectors (n, D) float32)`` chunks of every segment, in id order."""
        cursor = self.connection.execute("SELECT id, vector FROM segments ORDER BY id")
        while rows := cursor.fetchmany(batch):
            ids = np.fromiter((row[0] for row in rows), dtype=np.int64, count=len(rows))
            vectors = np.frombuffer(b"".join(row[1] for row in rows), dtype=np.float32).reshape(len(rows), dim)
            yield ids, vectors

    def segments(self, ids: Iterable[int], dim: int) -> dict[int, SegmentRow]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self.connection.execute(f"SELECT id, video_id, start, end, vector, frames, times, extras FROM segments "
                                       f"WHERE id IN ({marks})", ids)
        return {row[0]: SegmentRow(row[2], row[3], np.frombuffer(row[4], np.float32),
                                   np.frombuffer(row[5], np.float16).reshape(-1, dim),
                                   np.frombuffer(row[6], np.float64), _read_extras(row[7]), id=row[0],
                                   video_id=row[1]) for row in rows}

    def indexed_videos(self) -> Iterator[IndexedVideo]:
        """Every video with its segments (what ``put_videos`` takes): merging a shard into the main store."""
        for row in self.videos().values():
            segments = [SegmentRow(start, end, np.frombuffer(vector, np.float32), np.frombuffer(frames, np.float16),
                                   np.frombuffer(times, np.float64), _read_extras(extras))
                        for start, end, vector, frames, times, extras in self.connection.execute(
                            "SELECT start, end, vector, frames, times, extras FROM segments WHERE video_id = ? "
                            "ORDER BY id",
                            (row.id,))]
            yield IndexedVideo(row.path, row.size, row.mtime_ns, row.fingerprint, row.duration, segments)

    def video_segments(self, video_id: int) -> list[tuple[int, float, float]]:
        return list(self.connection.execute("SELECT id, start, end FROM segments WHERE video_id = ? ORDER BY start",
                                            (int(video_id),)))


def _blob(array: np.ndarray, dtype) -> bytes:
    return np.ascontiguousarray(array, dtype=dtype).tobytes()


def _extras_blob(extras: dict[str, np.ndarray] | None) -> bytes | None:
    if not extras:
        return None
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value, dtype=np.float16) for name, value in extras.items()})
    return buffer.getvalue()


def _read_extras(blob: bytes | None) -> dict[str, np.ndarray] | None:
    if blob is None:
        return None
    with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
