"""Torch datasets joining annotation records, frames (from the frame cache or decoded on the fly) and tokens.

``CaptionVideoDataset`` feeds training: items ``{"video_id", "token_ids", "token_mask", "frames", "frame_mask"}``.
``VideoDataset`` feeds evaluation and indexing: each video once, ``{"video_id", "frames", "frame_mask"}``.
Random choices (which caption, training frame offsets) come from ``(seed, epoch, index)``, so a run and its resume
see the same samples, whatever the number of DataLoader workers.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset, get_worker_info

from ..backbone.tokenizer import Tokenizer
from ..errors import WorkerError
from .cache import FrameCache
from .records import CaptionPair, TrainingSamples, VideoRecord
from .video import SamplingConfig, VideoSample, load_video


class FrameSource:
    """Where frames come from: the frame cache when ``cache_dir`` is set, else decoding every time.

    ``whole_video``: every span is read from its video's one whole-file cache entry (``FrameCache.get_span``), for
    clips whose boundaries keep changing (``petvr.editing``); it needs ``cache_dir``."""

    def __init__(self, sampling: SamplingConfig, cache_dir: str | Path | None = None, whole_video: bool = False):
        if whole_video and not cache_dir:
            raise ValueError("FrameSource(whole_video=True) reads spans from the frame cache: give a cache_dir")
        self.sampling = sampling
        self.cache = FrameCache(cache_dir) if cache_dir else None
        self.whole_video = whole_video

    def load(self, path: Path, start: float | None, end: float | None, rng: np.random.Generator | None) -> VideoSample:
        if self.whole_video:
            return self.cache.get_span(path, self.sampling, start, end, rng)
        if self.cache is not None:
            return self.cache.get(path, self.sampling, start, end, rng)
        return load_video(path, self.sampling, start, end, rng)


def errors_leave_workers_whole(get_item):
    """A dataset's ``__getitem__`` whose exceptions in a DataLoader worker reach the main process as their own type
    and message (see ``WorkerError``), as they do with ``num_workers = 0``."""

    @functools.wraps(get_item)
    def wrapped(self, index):
        try:
            return get_item(self, index)
        except Exception as error:
            if get_worker_info() is None:
                raise
            raise WorkerError.carrying(error) from error

    return wrapped


class CaptionVideoDataset(Dataset):
    """Training samples (``TrainingSamples`` of ``CaptionPair``) -> tokens and frames."""

    def __init__(self, samples: TrainingSamples | Sequence[CaptionPair], frames: FrameSource, tokenizer: Tokenizer,
                 seed: int = 0):
        self.samples, self.frames, self.tokenizer, self.seed = samples, frames, tokenizer, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.samples, "set_epoch"):
            self.samples.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    @errors_leave_workers_whole
    def __getitem__(self, index: int) -> dict:
        pair = self.samples[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        video = self.frames.load(pair.path, pair.start, pair.end, rng)
        token_ids, token_mask = self.tokenizer(pair.caption)
        return {"video_id": pair.video_id, "token_ids": token_ids[0], "token_mask": token_mask[0],
                "frames": video.frames, "frame_mask": video.frame_mask}


class VideoDataset(Dataset):
    """Each video once (evaluation, indexing)."""

    def __init__(self, videos: Sequence[VideoRecord], frames: FrameSource):
        self.videos, self.frames = videos, frames

    def __len__(self) -> int:
        return len(self.videos)

    @errors_leave_workers_whole
    def __getitem__(self, index: int) -> dict:
        record = self.videos[index]
        video = self.frames.load(record.path, record.start, record.end, None)
        return {"video_id": record.video_id, "frames": video.frames, "frame_mask": video.frame_mask}
