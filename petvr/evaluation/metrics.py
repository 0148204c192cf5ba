"""Retrieval metrics from a similarity matrix: R@K, median and mean rank, both directions (CLIP4Clip's conventions).

A rank is the 0-based position of the ground truth among the candidates sorted by descending score;
``R@K = 100 mean(rank < K)``, ``MdR = median(rank) + 1``, ``MnR = mean(rank) + 1``. Text-to-video uses the
similarity S (texts x videos) row by row, video-to-text uses S^T.

**Ties.** CLIP4Clip's square metrics (``compute_metrics``) sort each row's scores and take every position whose score
equals the ground truth's: a query with tied scores contributes several ranks, and R@K, MdR and MnR are taken over all
of them (a 200 x 200 matrix of scores drawn from {0, 1, 2, 3} gives about 10,000 ranks for 200 queries). Its
multi-caption text-to-video metrics rank by a double argsort instead, one rank per query, in an unspecified order
among ties. Our default is one deterministic rank per query:

- ``ties="stable"`` (the default): the position in a stable sort, i.e. candidates with a strictly higher score plus
  tied candidates with a lower index (``np.argsort(-S, kind="stable")``); a constant S then scores like chance.
- ``ties="pessimistic"``: every tied non-ground-truth candidate counts ahead of the ground truth, so a degenerate
  model that gives many candidates the same score cannot gain from ties.
- ``ties="official"``: CLIP4Clip's numbers, for comparing with a paper. Where CLIP4Clip uses ``compute_metrics``
  (both square directions, multi-caption video-to-text) every tied position counts; multi-caption text-to-video
  uses the stable rule (CLIP4Clip's tie order there is unspecified). ``"best_caption_rank"`` is not CLIP4Clip's and
  refuses it. Without ties all three rules agree.

Every direction reports ``queries``, the number of queries; when tied positions make the ranks outnumber them
(``ties="official"`` only), ``ranked`` gives the number of ranks averaged over.

**Several captions per video** (MSVD, VATEX; ``caption_to_video`` gives each caption's video, and some video has more
than one; a one-to-one mapping is the square protocol): every caption is a text query whose positive is its video.
Video-to-text has two protocols:

- ``"max_over_captions"`` (CLIP4Clip): the candidates are the videos' caption sets; the score of candidate set k for
  video j is the max over k's captions of S[c, j], and the positive is j's own set. The matrix is (N_v, N_v).
- ``"best_caption_rank"``: the candidates are all N_t captions; the rank is that of the best-ranked caption of the
  video. Numbers differ from CLIP4Clip's and are not comparable with them.

**Median.** With an even number of ranks, ``median="midpoint"`` averages the two middle ones (``np.median``) and
``median="lower"`` takes the lower (``torch.median``). As in CLIP4Clip, multi-caption text-to-video uses the lower
median; every other direction uses the midpoint: both square directions and ``"max_over_captions"`` (CLIP4Clip's
``np.median``), and ``"best_caption_rank"`` (ours, not CLIP4Clip's).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

TIE_RULES = ("stable", "pessimistic", "official")
MEDIANS = ("midpoint", "lower")
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
    """0-based rank of the best-ranked positive of each row. scores (q, C) float, positives (q, C) bool.

    Under ``ties="official"`` (one positive per row) the result is flat: every position tied with the positive, row
    after row, so rows with ties contribute several ranks."""
    best = scores.masked_fill(~positives, float("-inf")).amax(dim=1, keepdim=True)  # (q, 1)
    greater = (scores > best).sum(dim=1)
    tied = scores == best
    if ties == "official":
        count = tied.sum(dim=1)  # (q,), at least 1: the positive itself
        first_of_row = torch.repeat_interleave(count.cumsum(0) - count, count)
        return torch.repeat_interleave(greater, count) + torch.arange(int(count.sum())) - first_of_row
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
    best-ranked positive counts. See the module docstring for the tie rules. Returns (Q,) int64; under
    ``ties="official"`` (integer ground truth only) every tied position of each row, row after row: (>= Q,) int64.
    """
    if ties not in TIE_RULES:
        raise ValueError(f"unknown tie rule {ties!r}; choose one of {TIE_RULES}")
    scores = _as_cpu_tensor(similarity)
    num_queries, num_candidates = scores.shape
    truth = torch.as_tensor(ground_truth).cpu()
    if truth.dtype == torch.bool and ties == "official":
        raise ValueError("ties='official' ranks one ground-truth column per query (CLIP4Clip's compute_metrics); "
                         "a mask of several positives has no official tie rule")
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


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS, median: str = "midpoint",
                       queries: int | None = None) -> dict[str, float]:
    """R@K (percent), MdR and MnR (1-based) from 0-based ranks, plus the number of queries.

    ``median`` is ``"midpoint"`` (``np.median``) or ``"lower"`` (``torch.median``): see the module docstring.
    ``queries`` defaults to the number of ranks; when it is given and differs (``ties="official"`` counts every tied
    position), the number of ranks is reported as ``ranked``.
    """
    if median not in MEDIANS:
        raise ValueError(f"unknown median {median!r}; choose one of {MEDIANS}")
    ranks = np.sort(np.asarray(ranks))
    if ranks.size == 0:
        raise ValueError("no queries to compute metrics on")
    metrics: dict[str, float] = {f"R@{k}": float(100.0 * np.mean(ranks < k)) for k in ks}
    middle = ranks[(ranks.size - 1) // 2] if median == "lower" else np.median(ranks)
    metrics["MdR"] = float(middle + 1)
    metrics["MnR"] = float(np.mean(ranks) + 1)
    metrics["queries"] = int(ranks.size if queries is None else queries)
    if ranks.size != metrics["queries"]:
        metrics["ranked"] = int(ranks.size)
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
    ActivityNet paragraphs). With it (N_t,), see the module docstring (tie rules, medians). Returns a
    JSON-serialisable dict: ``{"t2v": {"R@1": .., ..., "MdR": .., "MnR": .., "queries": ..}, "v2t": {...},
    "v2t_protocol": .., "ties": ..}`` (and ``ranked`` in a direction whose tied positions outnumber its queries).
    """
    if v2t_protocol not in V2T_PROTOCOLS:
        raise ValueError(f"unknown video-to-text protocol {v2t_protocol!r}; choose one of {V2T_PROTOCOLS}")
    if ties not in TIE_RULES:
        raise ValueError(f"unknown tie rule {ties!r}; choose one of {TIE_RULES}")
    scores = _as_cpu_tensor(similarity)
    num_texts, num_videos = scores.shape
    if caption_to_video is None:
        if num_texts != num_videos:
            raise ValueError(f"a {num_texts} x {num_videos} similarity needs caption_to_video "
                             "(it is not one caption per video)")
        index = torch.arange(num_texts)
    else:
        index = _check_caption_to_video(caption_to_video, num_texts, num_videos)
    multi_caption = num_texts != num_videos  # every video has a caption, so equal counts mean one each
    if not multi_caption:  # the square protocol, whatever v2t_protocol says (both reduce to it)
        t2v = ranks_from_similarity(scores, index, ties)
        v2t = ranks_from_similarity(scores.t(), torch.argsort(index), ties)  # video j's caption
    else:
        if v2t_protocol == "best_caption_rank" and ties == "official":
            raise ValueError("ties='official' has no meaning for v2t_protocol='best_caption_rank', which is not "
                             "CLIP4Clip's protocol; use 'max_over_captions' to compare with CLIP4Clip")
        # CLIP4Clip ranks each caption by argsort here, in an unspecified order among ties: ours is the stable one
        t2v = ranks_from_similarity(scores, index, "stable" if ties == "official" else ties)
        if v2t_protocol == "max_over_captions":
            v2t = ranks_from_similarity(video_to_caption_set_similarity(scores, index), torch.arange(num_videos), ties)
        else:
            positives = index.unsqueeze(0) == torch.arange(num_videos).unsqueeze(1)  # (N_v, N_t)
            v2t = ranks_from_similarity(scores.t(), positives, ties)
    return {
        "t2v": metrics_from_ranks(t2v, ks, median="lower" if multi_caption else "midpoint", queries=num_texts),
        "v2t": metrics_from_ranks(v2t, ks, queries=num_videos),
        "v2t_protocol": v2t_protocol,
        "ties": ties,
    }


def format_metrics_table(metrics: dict) -> str:
    """A fixed-width table of ``retrieval_metrics``' result: one row per direction."""
    directions = [name for name in ("t2v", "v2t") if name in metrics]
    columns = [key for key in metrics[directions[0]] if key not in ("queries", "ranked")]
    width = max(7, *(len(column) + 2 for column in columns))
    lines = ["direction" + "".join(f"{column:>{width}}" for column in columns) + f"{'queries':>{width + 2}}"]
    for name in directions:
        row = metrics[name]
        lines.append(f"{name:<9}" + "".join(f"{row[column]:>{width}.1f}" for column in columns)
                     + f"{row['queries']:>{width + 2}d}")
    notes = [f"{key}={metrics[key]}" for key in ("v2t_protocol", "ties") if key in metrics]
    notes += [f"{name} ranks {metrics[name]['ranked']} tied positions" for name in directions
              if "ranked" in metrics[name]]
    if notes:
        lines.append("(" + ", ".join(notes) + ")")
    return "\n".join(lines)

