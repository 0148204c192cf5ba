"""Block-wise similarity: the full (N_t, N_v) logit matrix of a test split, one (text block x video block) at a time.

Pairwise heads (a cross-encoder, query-aware frame pooling) build tensors that grow with the number of text-video
pairs, e.g. (N_t, N_v, T); calling them on blocks keeps that at (text_block, video_block, T). Only the current two
blocks of items, the head's intermediates for them and the float32 result matrix on the CPU are alive at once. This
is CLIP4Clip's evaluation loop (cached features, then every text batch against every video batch).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor
from tqdm.auto import tqdm

Items = Tensor | Mapping[str, "Items"]
ScoreFunction = Callable[[Items, Items], Tensor]


def _num_items(items: Items, what: str) -> int:
    """Length along dim 0; all tensors of a dict (and of dicts inside it) must agree."""
    if isinstance(items, Tensor):
        return items.shape[0]
    if not items:
        raise ValueError(f"{what} is an empty dict: nothing to score")
    lengths = {key: _num_items(value, f"{what}[{key!r}]") for key, value in items.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{what}: the tensors differ in length along dim 0: {lengths}")
    return next(iter(lengths.values()))


def _slice(items: Items, start: int, stop: int) -> Items:
    if isinstance(items, Tensor):
        return items[start:stop]
    return {key: _slice(value, start, stop) for key, value in items.items()}


@torch.no_grad()
def blockwise_similarity(
    score_fn: ScoreFunction,
    text_items: Items,
    video_items: Items,
    text_block: int = 256,
    video_block: int = 256,
    progress: bool = True,
) -> Tensor:
    """``score_fn(texts, videos) -> (bt, bv)`` logits over all blocks -> (N_t, N_v) float32 CPU tensor.

    ``text_items`` and ``video_items`` are tensors or dicts of tensors, possibly nested (e.g. frame features
    (N_v, T, D), or a method's dict of per-video features, and a frame mask (N_v, T)); each block is their slice along dim 0, on whatever device they live on. Runs without gradients.
    """
    if text_block <= 0 or video_block <= 0:
        raise ValueError(f"block sizes must be positive, got text_block={text_block}, video_block={video_block}")
    num_texts = _num_items(text_items, "text_items")
    num_videos = _num_items(video_items, "video_items")
    similarity = torch.empty(num_texts, num_videos, dtype=torch.float32)
    total = math.ceil(num_texts / text_block) * math.ceil(num_videos / video_block)
    with tqdm(total=total, desc="similarity blocks", disable=not progress, leave=False) as bar:
        for text_start in range(0, num_texts, text_block):
            text_stop = min(text_start + text_block, num_texts)
            texts = _slice(text_items, text_start, text_stop)
            for video_start in range(0, num_videos, video_block):
                video_stop = min(video_start + video_block, num_videos)
                logits = score_fn(texts, _slice(video_items, video_start, video_stop))
                expected = (text_stop - text_start, video_stop - video_start)
                if tuple(logits.shape) != expected:
                    raise ValueError(f"score_fn returned shape {tuple(logits.shape)} for a block of "
                                     f"{expected[0]} texts x {expected[1]} videos; expected {expected}")
                similarity[text_start:text_stop, video_start:video_stop] = logits.float().cpu()
                bar.update(1)
    return similarity
