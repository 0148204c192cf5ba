"""Frame cache on disk: decode each clip's candidate grid once, then sample from it every epoch.

An entry holds a clip's whole per-second candidate grid (``video.decode_grid``) as uint8 after resize and crop, before
normalisation, so one entry serves every ``max_frames``, every subsample mode and fresh random segment offsets each
epoch: ``get`` applies the same selection as on-the-fly decoding (``video.select_positions``) to the cached grid. Only
``feature_framerate`` and ``image_size`` (``SamplingConfig.decode_key``) change what is stored.

Entries are keyed by a hash of the file's absolute path, size and mtime (ns), the decode key and the span, so a
rewritten or touched file, or a new frame rate or image size, is decoded again. Each entry is two files: ``<key>.json``
(timestamps, frame numbers, source) then ``<key>.npy`` (frames ``(N, H, W, 3)`` uint8, read memory-mapped so only
the selected frames are touched). Both are written to a temporary file in the same folder and moved into place with
``os.replace``, the JSON first: a reader that finds the ``.npy`` finds a complete entry, and several DataLoader
workers or processes can fill the same cache at once. An entry that fails to load is decoded and written again.

``get_span`` serves any span of a video from the video's one whole-file entry (decoded once at ``feature_framerate``):
clip boundaries that change every round (``petvr.editing``) never decode the video again.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tqdm import tqdm

from petvr.atomic import atomic_write
from petvr.data import video
from petvr.errors import DataError, SkipReport
from petvr.data.video import DecodedClip, SamplingConfig, VideoSample

CACHE_FORMAT = 1
"""Bump when the entry layout changes; older entries are then ignored."""


def _span_value(value: float | None) -> float | None:
    return None if value is None else float(value)


class FrameCache:
    """Decoded candidate grids under ``cache_dir``, filled on first use (``get``) or ahead of time (``build_cache``)."""

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir)

    def entry_stem(self, path: str | Path, config: SamplingConfig, start: float | None = None,
                   end: float | None = None) -> Path:
        """The entry's path without suffix; raises ``DataError`` when the video file is missing."""
        identity = [CACHE_FORMAT, *video.file_signature(path), config.decode_key(), _span_value(start), _span_value(end)]
        digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
        return self.cache_dir / digest[:2] / digest

    def load_grid(self, path: str | Path, config: SamplingConfig, start: float | None = None,
                  end: float | None = None) -> DecodedClip | None:
        """The cached candidate grid (frames memory-mapped), or None when there is no complete entry."""
        stem = self.entry_stem(path, config, start, end)
        try:
            frames = np.load(stem.with_suffix(".npy"), mmap_mode="r")
            meta = json.loads(stem.with_suffix(".json").read_text())
        except (OSError, ValueError):
            return None
        size = config.image_size
        if (meta.get("format") != CACHE_FORMAT or frames.shape[1:] != (size, size, 3)
                or len(meta["timestamps"]) != len(frames) or len(frames) == 0):
            return None
        return DecodedClip(str(path), frames, np.asarray(meta["timestamps"], dtype=np.float64),
                           np.asarray(meta["frame_indices"], dtype=np.int64))

    def fill(self, path: str | Path, config: SamplingConfig, start: float | None = None,
             end: float | None = None) -> DecodedClip:
        """Decode the clip's grid and store it (replacing any entry under the same key); returns the grid."""
        stem = self.entry_stem(path, config, start, end)
        grid = video.decode_grid(path, config, start, end)
        meta = {"format": CACHE_FORMAT, "source": str(Path(path).resolve()), "start": _span_value(start),
                "end": _span_value(end), "decode_key": json.loads(config.decode_key()),
                "timestamps": grid.timestamps.tolist(), "frame_indices": grid.frame_indices.tolist()}
        stem.parent.mkdir(parents=True, exist_ok=True)
        # Not fsynced (an entry lost to a power cut is simply decoded again); the JSON lands before the frames.
        atomic_write(stem.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(meta)), durable=False)
        atomic_write(stem.with_suffix(".npy"), lambda tmp: _save_npy(tmp, grid.frames), durable=False)
        return grid

    def grid(self, path: str | Path, config: SamplingConfig, start: float | None = None,
             end: float | None = None) -> DecodedClip:
        """The clip's candidate grid: from the cache, or decoded and stored now."""
        cached = self.load_grid(path, config, start, end)
        return cached if cached is not None else self.fill(path, config, start, end)

    def get(self, path: str | Path, config: SamplingConfig, start: float | None = None, end: float | None = None,
            rng: np.random.Generator | None = None) -> VideoSample:
        """The model's input for a clip, as ``video.load_video`` gives it, read from the cache.

        Returns ``(frames (T, 3, H, W) float32, frame_mask (T,) bool, timestamps (T,) float64)``. ``rng`` draws the
        segment sampler's training offsets and the shuffle order, exactly as in on-the-fly decoding.
        """
        return video.to_model_input(video.select_frames(self.grid(path, config, start, end), config, rng), config)

    def get_span(self, path: str | Path, config: SamplingConfig, start: float | None = None, end: float | None = None,
                 rng: np.random.Generator | None = None) -> VideoSample:
        """Like ``get``, but the span's frames are taken from the whole video's grid (``grid_span``), so every span of a
        video shares one cache entry and one decode."""
        grid = grid_span(self.grid(path, config), start, end)
        return video.to_model_input(video.select_frames(grid, config, rng), config)


def span_positions(timestamps: np.ndarray, start: float | None, end: float | None) -> np.ndarray:
    """Positions of the whole-video grid's candidates shown within ``[start, end]`` seconds; a span between two
    candidates (shorter than the grid's spacing) gets the one nearest its middle."""
    low = -np.inf if start is None else float(start) - 1e-6
    high = np.inf if end is None else float(end) + 1e-6
    inside = np.flatnonzero((timestamps >= low) & (timestamps <= high))
    if len(inside) == 0:
        first, last = timestamps[0], timestamps[-1]
        middle = np.clip((max(low, first) + min(high, last)) / 2, first, last)
        inside = np.array([int(np.argmin(np.abs(timestamps - middle)))])
    return inside


def grid_span(grid: DecodedClip, start: float | None, end: float | None) -> DecodedClip:
    """The part of a whole-video ``grid`` that a span shows (``span_positions``)."""
    return grid.take(span_positions(grid.timestamps, start, end))


def _save_npy(path: Path, frames: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a file handle, so numpy does not append ".npy" to the temporary name
        np.save(handle, frames)


@dataclass
class CacheBuildReport:
    """What ``build_cache`` did: clips decoded now, clips already cached, and what it skipped and why."""

    decoded: int = 0
    already_cached: int = 0
    skipped: SkipReport = field(default_factory=SkipReport)

    def summary(self) -> str:
        return (f"{self.decoded} decoded, {self.already_cached} already cached, {len(self.skipped)} skipped"
                + ("" if not self.skipped else "\n" + self.skipped.summary()))


ClipSpec = tuple[str, float | None, float | None]


def _clip_spec(item: Any) -> ClipSpec:
    """A path, a ``(path, start, end)`` tuple, or a record with ``path`` (and ``start``/``end``) attributes."""
    if isinstance(item, (str, os.PathLike)):
        return str(item), None, None
    if isinstance(item, tuple):
        path, start, end = (*item, None, None)[:3]
        return str(path), _span_value(start), _span_value(end)
    return str(item.path), _span_value(getattr(item, "start", None)), _span_value(getattr(item, "end", None))


def _fill_one(cache_dir: str, config: SamplingConfig, spec: ClipSpec) -> tuple[str, str | None]:
    """Worker job: ``("cached" | "decoded", None)`` or ``("skipped", problem)``; DataErrors travel as text."""
    cache = FrameCache(cache_dir)
    path, start, end = spec
    try:
        if cache.load_grid(path, config, start, end) is not None:
            return "cached", None
        cache.fill(path, config, start, end)
        return "decoded", None
    except DataError as error:
        return "skipped", error.problem


def build_cache(video_items: Iterable[Any], config: SamplingConfig, cache_dir: str | Path, num_workers: int = 0,
                skip_unreadable: bool = True) -> CacheBuildReport:
    """Decode every clip of ``video_items`` into the cache at ``cache_dir``, with a progress bar.

    Items are paths, ``(path, start, end)`` tuples or records with ``path``/``start``/``end`` (``VideoRecord``,
    ``CaptionPair``); repeats are decoded once. Unreadable videos are reported as they are met and collected in the
    returned report's ``skipped``; with ``skip_unreadable=False`` the first one raises its ``DataError`` instead.
    ``num_workers > 0`` decodes in that many processes.
    """
    specs = list(dict.fromkeys(_clip_spec(item) for item in video_items))
    report = CacheBuildReport()
    progress = tqdm(total=len(specs), desc="caching frames", unit="clip")

    def record(spec: ClipSpec, outcome: str, problem: str | None) -> None:
        if outcome == "skipped":
            error = DataError(spec[0], problem)
            if not skip_unreadable:
                raise error
            report.skipped.add(error)
            progress.write(f"skipped {error}")
        elif outcome == "decoded":
            report.decoded += 1
        else:
            report.already_cached += 1
        progress.set_postfix(decoded=report.decoded, cached=report.already_cached, skipped=len(report.skipped))
        progress.update()

    try:
        if num_workers > 0:
            with ProcessPoolExecutor(max_workers=num_workers) as pool:
                outcomes = pool.map(_fill_one, [str(cache_dir)] * len(specs), [config] * len(specs), specs)
                try:
                    for spec, (outcome, problem) in zip(specs, outcomes):
                        record(spec, outcome, problem)
                except BaseException:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
        else:
            for spec in specs:
                record(spec, *_fill_one(str(cache_dir), config, spec))
    finally:
        progress.close()
    return report
