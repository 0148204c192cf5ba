"""Retrieval metrics and the block-wise similarity evaluation."""
from .metrics import (
    DEFAULT_KS, TIE_RULES, V2T_PROTOCOLS, format_metrics_table, metrics_from_ranks, ranks_from_similarity,
    retrieval_metrics, video_to_caption_set_similarity,
)
from .similarity import blockwise_similarity

__all__ = [
    "DEFAULT_KS", "TIE_RULES", "V2T_PROTOCOLS", "blockwise_similarity", "format_metrics_table", "metrics_from_ranks",
    "ranks_from_similarity", "retrieval_metrics", "video_to_caption_set_similarity",
]
