"""Retrieval metrics from a similarity matrix: R@K, median and mean rank, both directions (CLIP4Clip's conventions).

A rank is the 0-based position of the ground truth among the candidates sorted by descending score;
``R@K = 100 mean(rank < K)``, ``MdR = median(rank) + 1``, ``MnR = mean(rank) + 1``. Text-to-video uses the
similarity S (texts x videos) row by row, video-to-text uses S^T.

**Ties.** CLIP4Clip sorts with ``np.argsort(-S)``, whose order among equal scores is unspecified. We make it
deterministic. ``ties="stable"`` (the default) is the position in a stable sort: candidates with a strictly higher
score, plus tied candidates with a lower index (``np.argsort(-S, kind="stable")``); a constant S then scores like
chance. ``ties="pessimistic"`` counts every tied non-ground-truth candidate ahead of the ground truth, so a degenerate
model that gives many candidates the same score cannot gain from ties.

**Several captions per video** (MSVD, VATEX; ``caption_to_video`` gives each caption's video): every caption is a
text query whose positive is its video. Video-to-text has two protocols:

- ``"max_over_captions"`` (CLIP4Clip): the candidates are the videos' caption sets; the score of candidate set k for
  video j is the max over k's captions of S[c, j], and the positive is j's own set. The matrix is (N_v, N_v).
- ``"best_caption_rank"``: the candidates are all N_t captions; the rank is that of the best-ranked caption of the
  video. Numbers differ from CLIP4Clip's and are not comparable with them.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

TIE_RULES = ("stable", "pessimistic")
V2T_PROTOCOLS = ("max_over_captions", "best_caption_rank")
DEFAULT_KS = (1, 5, 10, 50)
_ROW_CHUNK = 2048


def _as_cpu_tensor(similarity: Tensor | np.ndarray) -> Tensor:
    scores = torch.as_tensor(similarity).detach().cpu()
    if scores.dim() != 2:
        raise ValueError(f"expected a 2-D similarity matrix (queries x candidates), got shape {tuple(scores.shape)}")
    if not scores.is_floating_point():
        scores = scores.double()
    if torch.isnan(scores).any():
        raise ValueError("the similarity matrix contains NaN: ranks would be meaningless")
    return scores


def _ranks_of_positives(scores: Tensor, positives: Tensor, ties: str) -> Tensor:
    """0-based rank of the best-ranked positive of each row. scores (q, C) float, positives (q, C) bool."""
    best = scores.masked_fill(~positives, float("-inf")).amax(dim=1, keepdim=True)  # (q, 1)
    greater = (scores > best).sum(dim=1)
    tied = scores == best
    if ties == "pessimistic":
        return greater + (tied & ~positives).sum(dim=1)
    candidate_index = torch.arange(scores.shape[1])
    first_tied_positive = torch.where(tied & positives, candidate_index, scores.shape[1]).amin(dim=1, keepdim=True)
    return greater + (tied & (candidate_index < first_tied_positive)).sum(dim=1)


def ranks_from_similarity(
    similarity: Tensor | np.ndarray,
    ground_truth: Tensor | np.ndarray,
    ties: str = "stable",
) -> np.ndarray:
    """0-based rank of the ground truth for each query row of ``similarity`` (Q, C).

    ``ground_truth`` is either (Q,) integer column indices, or a (Q, C) boolean mask of positives, in which case the
    best-ranked positive counts. See the module docstring for the tie rules. Returns (Q,) int64.
    """
    if ties not in TIE_RULES:
        raise ValueError(f"unknown tie rule {ties!r}; choose one of {TIE_RULES}")
    scores = _as_cpu_tensor(similarity)
    num_queries, num_candidates = scores.shape
    truth = torch.as_tensor(ground_truth).cpu()
    if truth.dtype == torch.bool:
        if truth.shape != scores.shape:
            raise ValueError(f"positive mask shape {tuple(truth.shape)} differs from similarity {tuple(scores.shape)}")
        if not truth.any(dim=1).all():
            raise ValueError(f"query {int((~truth.any(dim=1)).nonzero()[0])} has no positive candidate")
    else:
        truth = truth.long()
        if truth.shape != (num_queries,):
            raise ValueError(f"expected {num_queries} ground-truth indices, got shape {tuple(truth.shape)}")
        if num_queries and (truth.min() < 0 or truth.max() >= num_candidates):
            raise ValueError(f"ground-truth indices must lie in [0, {num_candidates}), "
                             f"got {int(truth.min())}..{int(truth.max())}")
    ranks = []
    for start in range(0, num_queries, _ROW_CHUNK):
        block = scores[start:start + _ROW_CHUNK]
        if truth.dtype == torch.bool:
            positives = truth[start:start + _ROW_CHUNK]
        else:
            positives = torch.zeros_like(block, dtype=torch.bool)
            positives[torch.arange(block.shape[0]), truth[start:start + _ROW_CHUNK]] = True
        ranks.append(_ranks_of_positives(block, positives, ties))
    return torch.cat(ranks).numpy() if ranks else np.zeros(0, dtype=np.int64)


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """R@K (percent), MdR and MnR (1-based) from 0-based ranks, plus the number of queries."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        raise ValueError("no queries to compute metrics on")
    metrics: dict[str, float] = {f"R@{k}": float(100.0 * np.mean(ranks < k)) for k in ks}
    metrics["MdR"] = float(np.median(ranks) + 1)
    metrics["MnR"] = float(np.mean(ranks) + 1)
    metrics["queries"] = int(ranks.size)
    return metrics


def _check_caption_to_video(caption_to_video: Tensor | np.ndarray, num_texts: int, num_videos: int) -> Tensor:
    index = torch.as_tensor(caption_to_video).cpu().long()
    if index.shape != (num_texts,):
        raise ValueError(f"caption_to_video needs one video index per caption ({num_texts}), "
                         f"got shape {tuple(index.shape)}")
    if index.min() < 0 or index.max() >= num_videos:
        raise ValueError(f"caption_to_video indices must lie in [0, {num_videos}), "
                         f"got {int(index.min())}..{int(index.max())}")
    counts = torch.bincount(index, minlength=num_videos)
    if (counts == 0).any():
        raise ValueError(f"video {int((counts == 0).nonzero()[0])} has no caption: video-to-text is undefined for it")
    return index


def video_to_caption_set_similarity(similarity: Tensor | np.ndarray, caption_to_video: Tensor | np.ndarray) -> Tensor:
    """CLIP4Clip's multi-caption video-to-text matrix: (N_v query videos, N_v caption sets).

    Entry [j, k] = max over the captions c of video k of S[c, j], for S (N_t, N_v).
    """
    scores = _as_cpu_tensor(similarity)
    index = _check_caption_to_video(caption_to_video, *scores.shape)
    per_set = torch.full((scores.shape[1], scores.shape[1]), float("-inf"), dtype=scores.dtype)
    per_set.scatter_reduce_(0, index.unsqueeze(1).expand_as(scores), scores, "amax")  # (N_v sets, N_v videos)
    return per_set.t()


def retrieval_metrics(
    similarity: Tensor | np.ndarray,
    caption_to_video: Tensor | np.ndarray | None = None,
    v2t_protocol: str = "max_over_captions",
    ties: str = "stable",
    ks: tuple[int, ...] = DEFAULT_KS,
) -> dict:
    """Both directions from S (N_t texts, N_v videos).

    Without ``caption_to_video`` S must be square with text i paired with video i (MSR-VTT 1k-A, LSMDC, DiDeMo,
    ActivityNet paragraphs). With it (N_t,), see the module docstring. Returns a JSON-serialisable dict:
    ``{"t2v": {"R@1": .., ..., "MdR": .., "MnR": .., "queries": ..}, "v2t": {...}, "v2t_protocol": .., "ties": ..}``.
    """
    if v2t_protocol not in V2T_PROTOCOLS:
        raise ValueError(f"unknown video-to-text protocol {v2t_protocol!r}; choose one of {V2T_PROTOCOLS}")
    scores = _as_cpu_tensor(similarity)
    num_texts, num_videos = scores.shape
    if caption_to_video is None:
        if num_texts != num_videos:
            raise ValueError(f"a {num_texts} x {num_videos} similarity needs caption_to_video "
                             "(it is not one caption per video)")
        index = torch.arange(num_texts)
    else:
        index = _check_caption_to_video(caption_to_video, num_texts, num_videos)
    t2v = ranks_from_similarity(scores, index, ties)
    if v2t_protocol == "max_over_captions":
        v2t = ranks_from_similarity(video_to_caption_set_similarity(scores, index), torch.arange(num_videos), ties)
    else:
        positives = index.unsqueeze(0) == torch.arange(num_videos).unsqueeze(1)  # (N_v, N_t)
        v2t = ranks_from_similarity(scores.t(), positives, ties)
    return {
        "t2v": metrics_from_ranks(t2v, ks),
        "v2t": metrics_from_ranks(v2t, ks),
        "v2t_protocol": v2t_protocol,
        "ties": ties,
    }


def format_metrics_table(metrics: dict) -> str:
    """A fixed-width table of ``retrieval_metrics``' result: one row per direction."""
    directions = [name for name in ("t2v", "v2t") if name in metrics]
    columns = [key for key in metrics[directions[0]] if key != "queries"]
    width = max(7, *(len(column) + 2 for column in columns))
    lines = ["direction" + "".join(f"{column:>{width}}" for column in columns) + f"{'queries':>{width + 2}}"]
    for name in directions:
        row = metrics[name]
        lines.append(f"{name:<9}" + "".join(f"{row[column]:>{width}.1f}" for column in columns)
                     + f"{row['queries']:>{width + 2}d}")
    notes = [f"{key}={metrics[key]}" for key in ("v2t_protocol", "ties") if key in metrics]
    if notes:
        lines.append("(" + ", ".join(notes) + ")")
    return "\n".join(lines)

