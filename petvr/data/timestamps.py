"""Timestamp supervision: one click per caption instead of its start and end (Zhu et al., arXiv 2402.02335).

The readers of ActivityNet Captions, YouCook2 and DiDeMo take ``timestamps="uniform"`` (or another rule of
``TIMESTAMP_RULES``) and ``timestamp_seed``: each caption's ground-truth span is replaced by one time drawn inside it,
as an annotator would click, and the span is kept in ``VideoRecord.reference_times`` only to measure clips against.
Each draw depends on ``(seed, video id, caption number)`` alone, so it is the same whatever the order, the split's
other videos or the number of processes. A user's own caption file can give the timestamps directly (a ``timestamp``
column, ``petvr.data.readers.custom``).

Rules (ours; the paper does not say how its timestamps were made from the spans):

- ``uniform``: anywhere in the span with equal chance;
- ``centre``: the span's middle (the best case for heuristics built on the timestamps);
- ``normal``: around the middle, standard deviation a sixth of the span, kept inside it.
"""
from __future__ import annotations

import random
from dataclasses import replace

from .records import VideoRecord

TIMESTAMP_RULES = ("uniform", "centre", "normal")


def draw_timestamp(span: tuple[float, float], rule: str, draw: random.Random) -> float:
    """One time in seconds inside ``span`` (``start <= t <= end``) by ``rule``."""
    start, end = span
    if rule == "uniform":
        return draw.uniform(start, end)
    if rule == "centre":
        return (start + end) / 2
    if rule == "normal":
        return min(end, max(start, draw.gauss((start + end) / 2, (end - start) / 6)))
    raise ValueError(f"unknown timestamp rule {rule!r}; choose from {TIMESTAMP_RULES}")


def check_timestamp_rule(rule: str | None, mode: str) -> None:
    """Refuse an unknown rule, and timestamps outside sentence mode (a paragraph has no moment to click in)."""
    if rule is None:
        return
    if rule not in TIMESTAMP_RULES:
        raise ValueError(f"timestamps must be one of {TIMESTAMP_RULES} (or left out for spans), got {rule!r}")
    if mode != "sentence":
        raise ValueError(f"timestamps={rule!r} needs mode=\"sentence\" (one timed caption per moment), got "
                         f"mode={mode!r}")


def with_timestamps(record: VideoRecord, rule: str | None, seed: int = 0) -> VideoRecord:
    """``record`` with one drawn timestamp per caption and its spans moved to ``reference_times``; unchanged when
    ``rule`` is ``None`` or the record has no spans."""
    if rule is None or record.caption_times is None:
        return record
    timestamps = [draw_timestamp(span, rule, random.Random(f"{seed}:{record.video_id}:{number}"))
                  for number, span in enumerate(record.caption_times)]
    return replace(record, caption_times=None, caption_timestamps=timestamps,
                   reference_times=list(record.caption_times))
