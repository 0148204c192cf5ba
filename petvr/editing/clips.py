"""Clips built from timestamps, the candidate boundaries the teacher scores, and the editing decision.

A ``Clip`` is one training caption with its timestamp and its current ``[start, end]`` in seconds; ``reference``
holds the ground-truth span where the annotation has one, only to measure (``mean_iou``), never to build or move a
clip. Everything here is pure arithmetic on seconds, so it is tested without a model; ``petvr.editing.teacher``
supplies the scores.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..typed_config import dataclass_from_dict

INITIAL_RULES = ("midpoint", "fixed")
STUDENT_STARTS = ("restart", "continue")
FIRST_TEACHERS = ("warmup", "start")


@dataclass
class EditingConfig:
    """The ``[editing]`` table of a recipe. Warm-up epochs are ``[train] epochs``; see docs/editing.md.

    Initial clips (``initial``): ``"midpoint"`` spans from the midpoint with the previous timestamp of the same video
    to the midpoint with the next (the video's start and end for the first and last), ``"fixed"`` spans
    ``fixed_width`` seconds centred on the timestamp (moved inward at the video's ends); both are then kept within
    ``[min_length, max_length]`` seconds around the timestamp and inside the video.

    Editing: each round the teacher scores, for every training caption, its current clip and the candidates made by
    moving the start, the end, or both outwards or inwards by 1..``num_steps`` steps of ``step`` seconds; every
    candidate contains the timestamp and keeps the length limits. The best candidate replaces the clip when its score
    (caption-clip cosine similarity) beats the current clip's by more than ``margin``. The student then trains
    ``epochs_per_round`` epochs (by default as many as the warm-up) on the edited clips and is validated; the teacher
    takes its weights when the validation ``metric`` improves. ``student = "restart"`` (the default) starts every
    round's student from the recipe's starting weights, so that, with the default ``epochs_per_round``, a student
    differs from the warm-up model only in the clips it trained on and the comparison that decides the teacher update
    is fair; ``"continue"`` trains on from the previous round's student (cheaper, but then a student has also had more
    epochs). Editing stops after ``rounds`` rounds, or after ``patience`` rounds in a row without improvement.

    The first teacher (``first_teacher``) is the warmed-up model (``"warmup"``, the paper's order) or the recipe's
    starting weights (``"start"``: for CLIP4Clip the pretrained CLIP itself), validated like any stage. A model warmed
    up on the initial clips has learnt to match captions with what those clips hold around their events, so it can be
    blind to the very boundary errors it should correct; the starting weights never saw the initial clips.
    """

    initial: str = "midpoint"
    min_length: float = 2.0
    max_length: float = 60.0
    fixed_width: float = 10.0
    rounds: int = 3
    epochs_per_round: int | None = None  # None: as many as the warm-up ([train] epochs)
    student: str = "restart"
    first_teacher: str = "warmup"
    step: float = 1.0
    num_steps: int = 2
    margin: float = 0.0
    patience: int = 1
    metric: str = "t2v/R@1"
    score_batch_size: int = 32
    timeline_videos: int = 4

    def __post_init__(self) -> None:
        problems = []
        if self.initial not in INITIAL_RULES:
            problems.append(f"initial must be one of {INITIAL_RULES}, got {self.initial!r}")
        if self.first_teacher not in FIRST_TEACHERS:
            problems.append(f"first_teacher must be one of {FIRST_TEACHERS}, got {self.first_teacher!r}")
        if self.student not in STUDENT_STARTS:
            problems.append(f"student must be one of {STUDENT_STARTS}, got {self.student!r}")
        if not 0 < self.min_length <= self.max_length:
            problems.append(f"need 0 < min_length <= max_length, got {self.min_length} and {self.max_length}")
        for name in ("fixed_width", "step"):
            if not getattr(self, name) > 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("epochs_per_round", "num_steps", "patience", "score_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("rounds", "timeline_videos"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be at least 0, got {getattr(self, name)!r}")
        if self.margin < 0:
            problems.append(f"margin must be at least 0, got {self.margin!r}")
        if self.metric.count("/") != 1 or self.metric.split("/")[0] not in ("t2v", "v2t"):
            problems.append(f"metric must read like \"t2v/R@1\", got {self.metric!r}")
        if problems:
            raise ValueError("[editing]: " + "; ".join(problems))

    @classmethod
    def from_recipe(cls, recipe: dict) -> EditingConfig:
        return dataclass_from_dict(cls, recipe.get("editing", {}), "[editing]")


@dataclass(frozen=True)
class Clip:
    """One training caption: its video, its timestamp, its current span; ``reference`` only for measuring."""

    video_id: str
    path: Path
    caption_number: int
    caption: str
    timestamp: float
    duration: float
    start: float
    end: float
    reference: tuple[float, float] | None = field(default=None, compare=False)

    @property
    def span(self) -> tuple[float, float]:
        return self.start, self.end


def _fit(timestamp: float, start: float, end: float, duration: float, config: EditingConfig) -> tuple[float, float]:
    """``[start, end]`` kept at most ``max_length`` (cut around the timestamp), grown to ``min_length`` (equally on
    both sides, shifted inward at the video's ends), inside ``[0, duration]``."""
    start, end = max(start, timestamp - config.max_length / 2), min(end, timestamp + config.max_length / 2)
    missing = min(config.min_length, duration) - (end - start)
    if missing > 0:
        start, end = start - missing / 2, end + missing / 2
        if start < 0:
            start, end = 0.0, end - start
        if end > duration:
            start, end = max(0.0, start - (end - duration)), duration
    return max(0.0, start), min(duration, end)


def initial_clips(videos: Sequence[tuple[str, Path, float, list[str], list[float], list | None]],
                  config: EditingConfig) -> list[Clip]:
    """The initial clip of every caption from the timestamps of its video (rules in ``EditingConfig``).

    ``videos``: ``(video_id, path, duration, captions, timestamps, reference spans or None)``. Neighbours are taken in
    time order, whatever the captions' order; clips come back in caption order, video by video.
    """
    clips = []
    for video_id, path, duration, captions, timestamps, references in videos:
        order = sorted(range(len(timestamps)), key=lambda number: timestamps[number])
        spans: dict[int, tuple[float, float]] = {}
        for rank, number in enumerate(order):
            time = timestamps[number]
            if config.initial == "midpoint":
                start = 0.0 if rank == 0 else (timestamps[order[rank - 1]] + time) / 2
                end = duration if rank == len(order) - 1 else (time + timestamps[order[rank + 1]]) / 2
            else:
                start, end = time - config.fixed_width / 2, time + config.fixed_width / 2
                start, end = (0.0, end - start) if start < 0 else (start, end)
                start, end = (max(0.0, start - (end - duration)), duration) if end > duration else (start, end)
            spans[number] = _fit(time, start, end, duration, config)
        for number, caption in enumerate(captions):
            reference = None if references is None else tuple(references[number])
            clips.append(Clip(video_id, Path(path), number, caption, timestamps[number], duration,
                              *spans[number], reference))
    return clips


def candidate_spans(clip: Clip, config: EditingConfig) -> list[tuple[float, float]]:
    """The current span first, then every distinct span made by moving the start, the end, or both outwards or both
    inwards by ``k * step`` (k = 1..num_steps), kept inside the video; only spans that contain the timestamp and
    keep ``[min_length, max_length]`` are proposed."""
    spans, seen = [clip.span], {_key(clip.span)}
    lowest, highest = min(config.min_length, clip.duration), config.max_length
    for k in range(1, config.num_steps + 1):
        move = k * config.step
        for start_move, end_move in ((-move, 0), (move, 0), (0, -move), (0, move), (-move, move), (move, -move)):
            start = min(max(0.0, clip.start + start_move), clip.timestamp)
            end = max(min(clip.duration, clip.end + end_move), clip.timestamp)
            if lowest - 1e-6 <= end - start <= highest + 1e-6 and _key((start, end)) not in seen:
                spans.append((start, end))
                seen.add(_key((start, end)))
    return spans


def _key(span: tuple[float, float]) -> tuple[float, float]:
    return round(span[0], 6), round(span[1], 6)


Scorer = Callable[[Sequence[Clip], Sequence[Sequence[tuple[float, float]]]], list[list[float]]]
"""``scorer(clips, candidates)`` -> one score per candidate span of each clip (higher: the caption fits better)."""


@dataclass(frozen=True)
class Edit:
    """What one editing pass did to one clip: the new clip, its score and the old span's."""

    clip: Clip
    score: float
    previous_score: float

    @property
    def moved(self) -> bool:
        return self.score != self.previous_score


def edit_clips(clips: Sequence[Clip], scorer: Scorer, config: EditingConfig) -> list[Edit]:
    """One editing pass: every clip becomes its best-scored candidate when that beats the current span by more than
    ``margin``, else stays."""
    candidates = [candidate_spans(clip, config) for clip in clips]
    scores = scorer(clips, candidates)
    edits = []
    for clip, spans, values in zip(clips, candidates, scores):
        if len(values) != len(spans):
            raise ValueError(f"the scorer gave {len(values)} scores for {len(spans)} candidates of "
                             f"{clip.video_id} caption {clip.caption_number}")
        best = max(range(len(spans)), key=lambda index: (values[index], index == 0))
        if best != 0 and values[best] > values[0] + config.margin:
            edits.append(Edit(replace(clip, start=spans[best][0], end=spans[best][1]), values[best], values[0]))
        else:
            edits.append(Edit(clip, values[0], values[0]))
    return edits


def temporal_iou(first: tuple[float, float], second: tuple[float, float]) -> float:
    """Intersection over union of two spans in seconds."""
    overlap = max(0.0, min(first[1], second[1]) - max(first[0], second[0]))
    union = max(first[1], second[1]) - min(first[0], second[0])
    return overlap / union if union > 0 else float(first == second)


def mean_iou(clips: Sequence[Clip]) -> float | None:
    """Mean IoU of the clips with their ground-truth spans; ``None`` when no clip has one."""
    measured = [temporal_iou(clip.span, clip.reference) for clip in clips if clip.reference is not None]
    return sum(measured) / len(measured) if measured else None
