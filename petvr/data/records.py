"""The record types every annotation reader yields, and the views training and evaluation take of them.

A reader returns one ``RetrievalSplit``: the videos of one split, each a ``VideoRecord`` carrying its captions (and,
where the dataset has them, one time span per caption). Evaluation reads ``split.queries()``: every caption is a text
query paired with the index of its video, captions grouped per video in video order, so single-caption benchmarks
(MSR-VTT 1k-A, paragraph ActivityNet/DiDeMo) give a square similarity matrix and multi-caption ones (MSVD, VATEX) give
``(N_t, N_v)`` with ``N_t > N_v``. Training reads ``split.training_samples(expand_sentences)``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from petvr.errors import SkipReport

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp", ".ogv")
"""File extensions the readers recognise as videos, in order of preference when one stem has several files."""


@dataclass(frozen=True)
class CaptionPair:
    """One (video, caption) training or query sample; ``start``/``end`` in seconds, ``None`` for the whole file."""

    video_id: str
    path: Path
    caption: str
    start: float | None = None
    end: float | None = None
    split: str = ""


@dataclass
class VideoRecord:
    """One video of a split with all its captions.

    ``start``/``end`` (seconds) bound the part of the file the video stands for (``None``: the whole file).
    ``caption_times`` holds one ``(start, end)`` span in seconds per caption where the dataset localises its captions
    (ActivityNet, DiDeMo and YouCook2 in sentence mode, custom rows with times), else ``None``. ``duration`` is the
    annotated duration in seconds where the annotation gives one.

    Timestamp supervision (``petvr.editing``): ``caption_timestamps`` holds one time in seconds per caption, a single
    click inside its moment, and then ``caption_times`` is ``None`` so no training path can read a span;
    ``reference_times`` keeps the ground-truth spans, where the annotation has them, only to measure clips against.
    """

    video_id: str
    path: Path
    split: str
    captions: list[str]
    start: float | None = None
    end: float | None = None
    caption_times: list[tuple[float, float]] | None = None
    duration: float | None = None
    caption_timestamps: list[float] | None = None
    reference_times: list[tuple[float, float]] | None = None

    def __post_init__(self) -> None:
        if self.caption_times is not None and len(self.caption_times) != len(self.captions):
            raise ValueError(f"{self.video_id}: {len(self.captions)} captions but {len(self.caption_times)} spans")
        for name in ("caption_timestamps", "reference_times"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.captions):
                raise ValueError(f"{self.video_id}: {len(self.captions)} captions but {len(values)} {name}")

    def pairs(self) -> list[CaptionPair]:
        """One ``CaptionPair`` per caption; a caption's own span wins over the video's span."""
        spans = self.caption_times or [(self.start, self.end)] * len(self.captions)
        return [CaptionPair(self.video_id, self.path, caption, start, end, self.split)
                for caption, (start, end) in zip(self.captions, spans)]


@dataclass
class RetrievalSplit:
    """The videos of one split of one dataset, in annotation order, and what the reader skipped on the way."""

    dataset: str
    split: str
    videos: list[VideoRecord]
    skipped: SkipReport = field(default_factory=SkipReport)

    def __len__(self) -> int:
        return len(self.videos)

    def queries(self) -> list[tuple[str, int]]:
        """Every caption as a text query with the index of its video: ``(caption, video_index)``, grouped by video."""
        return [(caption, index) for index, video in enumerate(self.videos) for caption in video.captions]

    @property
    def multi_caption(self) -> bool:
        """True when some video has more than one caption (the MSVD/VATEX evaluation protocol applies)."""
        return any(len(video.captions) > 1 for video in self.videos)

    def pairs(self) -> list[CaptionPair]:
        """Every (video, caption) pair, grouped by video."""
        return [pair for video in self.videos for pair in video.pairs()]

    def clips(self) -> RetrievalSplit:
        """Clip-level view: each timed caption becomes its own video record spanning that caption's time.

        Videos without ``caption_times`` are kept as they are. This is the split for clip retrieval on
        ActivityNet/DiDeMo/YouCook2 sentence mode, where a caption's target is its moment, not the whole video.
        """
        clips = []
        for video in self.videos:
            if video.caption_times is None:
                clips.append(video)
                continue
            for number, (caption, (start, end)) in enumerate(zip(video.captions, video.caption_times)):
                clips.append(replace(video, video_id=f"{video.video_id}#{number}", captions=[caption],
                                     start=start, end=end, caption_times=None))
        return RetrievalSplit(self.dataset, self.split, clips, self.skipped)

    def training_samples(self, expand_sentences: bool, seed: int | None = None) -> TrainingSamples:
        """Training view: one sample per (video, caption) pair, or one per video with a random caption each time."""
        return TrainingSamples(self.videos, expand_sentences, seed)


class TrainingSamples:
    """Indexable training samples, each a ``CaptionPair``.

    With ``expand_sentences`` every (video, caption) pair is one sample (MSR-VTT 9k: 9,000 x 20 = 180,000). Without it
    there is one sample per video and each access draws one of its captions: from Python's ``random`` (seeded per
    DataLoader worker by torch) when ``seed`` is ``None``, else deterministically from ``(seed, epoch, index)``; call
    ``set_epoch`` each epoch so the draw changes, as with ``DistributedSampler``. Videos without captions are left out.
    """

    def __init__(self, videos: list[VideoRecord], expand_sentences: bool, seed: int | None = None):
        self.videos = [video for video in videos if video.captions]
        self.expand_sentences = expand_sentences
        self.seed = seed
        self.epoch = 0
        self._pairs = [pair for video in self.videos for pair in video.pairs()] if expand_sentences else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._pairs) if self._pairs is not None else len(self.videos)

    def __getitem__(self, index: int) -> CaptionPair:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        if self._pairs is not None:
            return self._pairs[index]
        pairs = self.videos[index].pairs()
        draw = random if self.seed is None else random.Random(f"{self.seed}:{self.epoch}:{index % len(self)}")
        return draw.choice(pairs)
