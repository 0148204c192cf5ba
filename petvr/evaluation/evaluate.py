"""Evaluate a retrieval model on a split: encode every caption and every video once, score, compute metrics.

Loose heads (meanP, seqLSTM, seqTransf) score all pairs in one call; pairwise heads (tightTransf, query scoring)
are scored block by block (``blockwise_similarity``) so a 1,000 x 1,000 test runs in bounded memory. Multi-caption
splits (MSVD, VATEX) use every caption as a query and CLIP4Clip's video-to-text rule.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..backbone.tokenizer import Tokenizer
from ..data.dataset import FrameSource, VideoDataset
from ..data.records import RetrievalSplit
from ..methods.base import VideoFeatures, concat_video_features
from .metrics import retrieval_metrics
from .similarity import blockwise_similarity


@torch.no_grad()
def encode_captions(model: nn.Module, captions: list[str], tokenizer: Tokenizer, batch_size: int = 256,
                    device: torch.device | str = "cpu", progress: bool = True) -> Tensor:
    """Captions -> (N, D) text embeddings."""
    chunks = []
    for start in tqdm(range(0, len(captions), batch_size), desc="encode captions", disable=not progress, leave=False):
        token_ids, token_mask = tokenizer(captions[start:start + batch_size])
        chunks.append(model.encode_text(token_ids.to(device), token_mask.to(device)))
    return torch.cat(chunks)


@torch.no_grad()
def encode_videos(model: nn.Module, videos: VideoDataset, batch_size: int = 16, num_workers: int = 0,
                  device: torch.device | str = "cpu", progress: bool = True) -> tuple[VideoFeatures, Tensor]:
    """Videos -> per-frame embeddings (N, T, D) (or the method's dict of per-video tensors) and frame masks (N, T)."""
    loader = DataLoader(videos, batch_size=batch_size, num_workers=num_workers)
    embeddings, masks = [], []
    for batch in tqdm(loader, desc="encode videos", disable=not progress, leave=False):
        frame_mask = batch["frame_mask"].to(device)
        embeddings.append(model.encode_video(batch["frames"].to(device), frame_mask))
        masks.append(frame_mask)
    return concat_video_features(embeddings), torch.cat(masks)


@torch.no_grad()
def similarity_matrix(model: nn.Module, text_embeddings: Tensor, frame_embeddings: VideoFeatures, frame_mask: Tensor,
                      block_size: int = 64, progress: bool = True) -> Tensor:
    """(N_t, D), (N_v, T, D) (or the method's dict of per-video tensors), (N_v, T) -> (N_t, N_v) logits on the CPU."""
    if not model.method.pairwise:
        return model.similarity(text_embeddings, frame_embeddings, frame_mask).float().cpu()
    return blockwise_similarity(
        lambda texts, videos: model.similarity(texts, videos["frames"], videos["mask"]),
        text_embeddings, {"frames": frame_embeddings, "mask": frame_mask},
        text_block=block_size, video_block=block_size, progress=progress)


@torch.no_grad()
def evaluate_split(model: nn.Module, split: RetrievalSplit, frames: FrameSource, tokenizer: Tokenizer,
                   batch_size: int = 16, num_workers: int = 0, device: torch.device | str = "cpu",
                   progress: bool = True, ties: str = "stable") -> dict:
    """Retrieval metrics of ``model`` on ``split`` (both directions; multi-caption protocol when it applies).

    ``ties="official"`` gives CLIP4Clip's numbers for comparing with a paper (``retrieval_metrics``' tie rules)."""
    was_training = model.training
    model.eval()
    queries = split.queries()
    captions = [caption for caption, _ in queries]
    caption_to_video = torch.tensor([index for _, index in queries])
    text = encode_captions(model, captions, tokenizer, device=device, progress=progress)
    frame_embeddings, frame_mask = encode_videos(model, VideoDataset(split.videos, frames), batch_size, num_workers,
                                                 device, progress)
    similarity = similarity_matrix(model, text, frame_embeddings, frame_mask, progress=progress)
    metrics = retrieval_metrics(similarity, caption_to_video, ties=ties)  # one caption per video: the square case
    model.train(was_training)
    return metrics
