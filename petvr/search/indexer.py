"""Indexing a folder of videos: scan, decide what changed, decode and embed, commit batch by batch, build faiss.

- **What is a video**: every file under the folder (recursively, hidden files and folders skipped) whose suffix is in
  ``VIDEO_SUFFIXES`` (containers PyAV/FFmpeg read); ``suffixes=`` widens or narrows that.
- **Incremental**: a file whose size and mtime match its row is left alone; one whose size or mtime changed is
  fingerprinted (sha256 of its size, first and last MiB) and re-embedded only if the fingerprint changed (a touched
  file just gets its new mtime); rows of files that disappeared are deleted.
- **Resumable**: videos are committed ``batch_videos`` at a time, each batch one SQLite transaction. A run killed in
  the middle keeps every committed batch; the next run finds those rows current and embeds only the rest.
- **Unreadable files** are reported (``IndexReport.failed``) and remembered with their size and mtime, so the next run
  reports them again without decoding them again, unless they changed. They never stop the run.
- **Long videos**: a video longer than ``segment_seconds`` is cut into ``ceil(duration / segment_seconds)`` equal
  windows, each embedded as its own clip (its own faiss vector), so a hit says where in the video it is.
- **torchrun**: with ``WORLD_SIZE`` > 1 every process embeds its share of the work list (every ``world``-th video)
  into its own shard store (``shards/rank-R.sqlite``, resumable like the main one); then rank 0 merges the shards
  into ``index.sqlite`` in one transaction and builds faiss. Gloo on CPU, NCCL on GPUs; one machine or several.
"""
from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..atomic import remove_unfinished_writes
from ..data.video import probe_video
from ..errors import DataError
from ..training import distributed
from .store import STORE_NAME, IndexedVideo, SegmentRow, Store
from .vectors import APPROXIMATE_ABOVE, choose_kind, refresh_vectors

INDEX_DIRNAME = ".petvr-index"
SHARDS_DIRNAME = "shards"
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts",
                            ".m2ts", ".wmv", ".flv", ".3gp", ".ogv", ".gif"})
DEFAULT_SEGMENT_SECONDS = 30.0
FINGERPRINT_BYTES = 1 << 20
CLIPS_PER_FORWARD = 16


class IndexMismatch(ValueError):
    """An index built with other vectors (another adapter, backbone or sampling) or for another folder."""


@dataclass
class IndexReport:
    """What one ``build_index`` run did. ``failed``: every unreadable file of the collection, ``(path, problem)``."""

    index: Path
    videos: int = 0
    segments: int = 0
    embedded: int = 0
    unchanged: int = 0
    touched: int = 0
    deleted: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    vector_kind: str = ""
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [f"{self.index}: {self.videos} videos, {self.segments} segments ({self.vector_kind} index); this run "
                 f"embedded {self.embedded}, kept {self.unchanged} unchanged, updated {self.touched} touched, "
                 f"removed {self.deleted} deleted, {len(self.failed)} unreadable ({self.seconds:.1f} s)"]
        lines += [f"  unreadable: {path}: {problem}" for path, problem in self.failed]
        return "\n".join(lines)


@dataclass(frozen=True)
class FileState:
    path: Path  # absolute
    relative: str  # POSIX, relative to the root: the store's key
    size: int
    mtime_ns: int


def scan_folder(root: Path, suffixes=VIDEO_SUFFIXES, skip: Path | None = None) -> dict[str, FileState]:
    """Every video file under ``root`` by relative path (sorted), hidden entries and ``skip`` left out."""
    suffixes = {s.lower() if s.startswith(".") else f".{s.lower()}" for s in suffixes}
    found = {}
    for directory, folders, files in os.walk(root, followlinks=False):
        here = Path(directory)
        folders[:] = sorted(name for name in folders if not name.startswith(".") and (here / name) != skip)
        for name in sorted(files):
            path = here / name
            if name.startswith(".") or path.suffix.lower() not in suffixes:
                continue
            try:
                status = path.stat()
            except OSError:
                continue
            relative = path.relative_to(root).as_posix()
            found[relative] = FileState(path, relative, status.st_size, status.st_mtime_ns)
    return dict(sorted(found.items()))


def content_fingerprint(path: Path, size: int) -> str:
    """sha256 of the size and the first and last MiB: cheap, and changes with any re-encode or edit in practice."""
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            handle.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(handle.read(FINGERPRINT_BYTES))
    return digest.hexdigest()[:32]


def segment_windows(duration: float, segment_seconds: float) -> list[tuple[float, float]]:
    """``[(start, end)]`` seconds: the whole video, or ``ceil(duration / segment_seconds)`` equal windows."""
    if duration <= segment_seconds:
        return [(0.0, duration)]
    count = math.ceil(duration / segment_seconds)
    width = duration / count
    return [(index * width, (index + 1) * width) for index in range(count)]


class _DecodeJobs(Dataset):
    """Item ``i``: probe and decode every window of video ``i`` -> a dict with its clips, or its problem."""

    def __init__(self, files: list[tuple[FileState, str]], frames, segment_seconds: float):
        self.files, self.frames, self.segment_seconds = files, frames, segment_seconds

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        state, fingerprint = self.files[index]
        try:
            duration = probe_video(state.path).duration
            windows = segment_windows(duration, self.segment_seconds)
            whole = len(windows) == 1
            clips = [self.frames.load(state.path, None if whole else start, None if whole else end, None)
                     for start, end in windows]
        except DataError as error:
            return {"state": state, "problem": error.problem}
        except Exception as error:  # anything a damaged file makes the decoder raise: reported, never fatal
            return {"state": state, "problem": f"{type(error).__name__}: {error}"}
        return {"state": state, "fingerprint": fingerprint, "duration": duration, "windows": windows, "clips": clips}


def _first(batch: list):
    return batch[0]


def check_identity(store: Store, identity: dict, root: Path, segment_seconds: float) -> None:
    """Refuse an index whose vectors another adapter/backbone/sampling made, or that indexes another folder."""
    recorded = store.get_meta("identity")
    if recorded is None:
        return
    if recorded.get("adapter_hash") != identity["adapter_hash"] or recorded.get("backbone_hash") != identity["backbone_hash"]:
        raise IndexMismatch(
            f"{store.path.parent}: this index was built with adapter {recorded.get('adapter')!r} (adapter hash "
            f"{recorded.get('adapter_hash')}, backbone {recorded.get('backbone')!r} hash {recorded.get('backbone_hash')})"
            f", not adapter {identity['adapter']!r} (adapter hash {identity['adapter_hash']}, backbone "
            f"{identity['backbone']!r} hash {identity['backbone_hash']}); an index is only ever queried and extended "
            "with the adapter that built it: index into another --out (or delete this one) to use the new adapter")
    if recorded.get("sampling") != identity["sampling"]:
        raise IndexMismatch(f"{store.path.parent}: this index sampled frames as {recorded.get('sampling')}, the "
                            f"retriever samples {identity['sampling']}; index into another --out")
    recorded_root = store.get_meta("root")
    if recorded_root is not None and Path(recorded_root) != root:
        raise IndexMismatch(f"{store.path.parent}: this index is of folder {recorded_root}, not {root}")
    recorded_segments = store.get_meta("segment_seconds")
    if recorded_segments is not None and float(recorded_segments) != float(segment_seconds):
        raise IndexMismatch(f"{store.path.parent}: this index cuts long videos into {recorded_segments} s "
                            f"segments, not {segment_seconds} s; index into another --out to change it")


def build_index(retriever, folder: str | Path, out: str | Path | None = None, *,
                segment_seconds: float = DEFAULT_SEGMENT_SECONDS, batch_videos: int = 8, workers: int = 0,
                vector_kind: str = "auto", approximate_above: int = APPROXIMATE_ABOVE, suffixes=VIDEO_SUFFIXES,
                progress: bool = True) -> IndexReport:
    """Index every video under ``folder`` into ``out`` (default ``folder/.petvr-index``) with ``retriever``.

    ``batch_videos``: videos per committed transaction; ``workers``: decoding processes (DataLoader workers);
    ``vector_kind``/``approximate_above``: the faiss index (see ``vectors.py``). Under torchrun, every process calls
    this with the same arguments (see the module docstring)."""
    started = time.time()
    root = Path(folder).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of videos")
    out = (root / INDEX_DIRNAME) if out is None else Path(out).expanduser().resolve()
    if segment_seconds <= 0:
        raise ValueError(f"segment_seconds must be positive, got {segment_seconds}")
    choose_kind(0, vector_kind)
    info = distributed.init_distributed_from_env()
    rank, world = info.rank, info.world_size
    identity = retriever.identity()
    report = IndexReport(out)

    refusal = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        remove_unfinished_writes(out)  # a faiss folder whose replacement a killed run cut short
        with Store(out / STORE_NAME, create=True) as store:
            try:
                check_identity(store, identity, root, segment_seconds)
            except IndexMismatch as error:
                refusal = str(error)
            else:
                store.set_meta({"identity": identity, "root": str(root), "segment_seconds": float(segment_seconds),
                                "vector_kind": vector_kind, "approximate_above": int(approximate_above)})
    refusal = distributed.broadcast_object(refusal)  # every process stops, none waits at a barrier for rank 0
    if refusal is not None:
        raise IndexMismatch(refusal)

    store = Store(out / STORE_NAME)
    try:
        check_identity(store, identity, root, segment_seconds)
        files = scan_folder(root, suffixes, skip=out)
        known, failures = store.videos(), store.failures()
        shard_dir = out / SHARDS_DIRNAME
        if world > 1:  # what killed shard runs already embedded counts as done
            for shard_path in sorted(shard_dir.glob("*.sqlite")):
                with Store(shard_path) as shard:
                    known.update(shard.videos())
        todo, touched = [], []
        for relative, state in files.items():
            row = known.get(relative)
            if row is not None and (row.size, row.mtime_ns) == (state.size, state.mtime_ns):
                report.unchanged += 1
                continue
            failure = failures.get(relative)
            if failure is not None and failure[:2] == (state.size, state.mtime_ns):
                continue  # reported again below, not decoded again
            try:
                fingerprint = content_fingerprint(state.path, state.size)
            except OSError:
                todo.append((state, ""))  # decoding will report it as unreadable
                continue
            if row is not None and row.fingerprint == fingerprint:
                touched.append((relative, state.size, state.mtime_ns))
            else:
                todo.append((state, fingerprint))
        deleted = [path for path in {**store.videos(), **failures} if path not in files]
        if rank == 0:
            report.deleted = store.delete_videos(deleted)
            store.touch_videos(touched)
        report.touched = len(touched)
        mine = todo[rank::world]
        if world > 1:
            shard = Store(shard_dir / f"rank-{rank}.sqlite", create=True)
        else:
            shard = store
        try:
            report.embedded = _embed_files(retriever, mine, shard, segment_seconds, batch_videos, workers,
                                           progress, rank, world)
        finally:
            if shard is not store:
                shard.close()
        distributed.barrier()
        if rank == 0:
            if world > 1:
                merge_shards(store, shard_dir)
            report.vector_kind = refresh_vectors(out, store, retriever.dim, vector_kind, approximate_above).kind
        distributed.barrier()
        report.videos = store.count("videos")
        report.segments = store.count("segments")
        report.failed = [(path, problem) for path, (_, _, problem) in store.failures().items()]
        report.embedded = int(_sum_over_ranks(report.embedded))
    finally:
        store.close()
    report.seconds = time.time() - started
    return report


def _sum_over_ranks(value: int) -> int:
    if not distributed.is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.long)
    torch.distributed.all_reduce(tensor)
    return int(tensor.item())


def _embed_files(retriever, files: list[tuple[FileState, str]], store: Store, segment_seconds: float,
                 batch_videos: int, workers: int, progress: bool, rank: int, world: int) -> int:
    """Decode and embed ``files``, committing every ``batch_videos`` videos; returns how many were embedded."""
    if not files:
        return 0
    loader = DataLoader(_DecodeJobs(files, retriever.frames, segment_seconds), batch_size=1, collate_fn=_first,
                        num_workers=workers)
    label = "indexing videos" + (f" (rank {rank}/{world})" if world > 1 else "")
    bar = tqdm(total=len(files), desc=label, unit="video", disable=not progress, position=rank)
    pending, failures, embedded = [], [], 0

    def flush() -> None:
        nonlocal embedded
        if pending:
            store.put_videos(_embed_batch(retriever, pending))
            embedded += len(pending)
        if failures:
            store.put_failures(failures)
            for path, _, _, problem in failures:
                bar.write(f"unreadable: {path}: {problem}")
        pending.clear()
        failures.clear()
        bar.set_postfix(embedded=embedded, unreadable=len(store.failures()))

    for item in loader:
        state = item["state"]
        if "problem" in item:
            failures.append((state.relative, state.size, state.mtime_ns, item["problem"]))
        else:
            pending.append(item)
        bar.update()
        if len(pending) + len(failures) >= batch_videos:
            flush()
    flush()
    bar.close()
    return embedded


def _embed_batch(retriever, items: list[dict]) -> list[IndexedVideo]:
    clips = [(index, clip) for index, item in enumerate(items) for clip in item["clips"]]
    segments: list[list[SegmentRow]] = [[] for _ in items]
    for start in range(0, len(clips), CLIPS_PER_FORWARD):
        chunk = clips[start:start + CLIPS_PER_FORWARD]
        embeddings = retriever.embed_clips(torch.stack([clip.frames for _, clip in chunk]),
                                           torch.stack([clip.frame_mask for _, clip in chunk]),
                                           torch.stack([clip.timestamps for _, clip in chunk]))
        for row, (owner, _) in enumerate(chunk):
            segments[owner].append(SegmentRow(0.0, 0.0, embeddings.vectors[row], embeddings.frames[row],
                                              embeddings.times[row], embeddings.extras[row]))
    videos = []
    for item, rows in zip(items, segments):
        for row, (window_start, window_end) in zip(rows, item["windows"]):
            row.start, row.end = float(window_start), float(window_end)
        state = item["state"]
        videos.append(IndexedVideo(state.relative, state.size, state.mtime_ns, item["fingerprint"],
                                   float(item["duration"]), rows))
    return videos


def merge_shards(store: Store, shard_dir: Path) -> None:
    """Move every shard store's videos and failures into ``store`` (one transaction each), then delete the shard."""
    for shard_path in sorted(shard_dir.glob("*.sqlite")):
        with Store(shard_path) as shard:
            videos = list(shard.indexed_videos())
            failures = [(path, size, mtime, problem) for path, (size, mtime, problem) in shard.failures().items()]
        if videos:
            store.put_videos(videos)
        if failures:
            store.put_failures(failures)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{shard_path}{suffix}").unlink(missing_ok=True)
