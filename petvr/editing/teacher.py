"""The teacher's score of a candidate clip: its caption-clip similarity under the teacher's weights.

Any registered method works: candidates are encoded with the method's own ``encode_video`` and scored by its
similarity head, divided by the logit scale (a cosine similarity for the loose heads). Frames come from the
whole-video frame cache: each video's grid is read and normalised once per editing pass, and a candidate takes the
frames the evaluation sampling would take from its span.

Scoring dozens of candidates per caption is the cost of editing, so when the teacher embeds frames independently of
each other (CLIP4Clip, adapters, LoRA, prompts: no temporal module inside ``encode_video``) each video's grid is
embedded once and a candidate's per-frame embeddings are gathered from it, giving the same scores (the similarity
head, temporal or not, still sees each candidate's own frames). Whether that holds is checked on the teacher's
current weights at the start of every pass: one clip embedded whole and frame by frame must agree; otherwise every
candidate is embedded as its own clip.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ..backbone.tokenizer import Tokenizer
from ..data.cache import span_positions
from ..data.dataset import FrameSource
from ..data.video import normalize, select_positions
from ..evaluation.evaluate import encode_captions
from ..methods.base import concat_video_features, map_video_features
from .clips import Clip


class TeacherScorer:
    """``scorer(clips, candidates)`` for ``edit_clips``: the model's similarity of each caption with each of its
    candidate spans. The model is used as it is when called (the caller loads the teacher's weights first)."""

    def __init__(self, model: nn.Module, frames: FrameSource, tokenizer: Tokenizer, batch_size: int = 32,
                 device: torch.device | str = "cpu", progress: bool = True):
        if not frames.whole_video:
            raise ValueError("TeacherScorer reads candidate spans from whole-video grids: FrameSource(whole_video=True)")
        self.model, self.frames, self.tokenizer = model, frames, tokenizer
        self.batch_size, self.device, self.progress = batch_size, torch.device(device), progress
        self.frames_independent: bool | None = None  # what the last pass found

    def _grid(self, path) -> tuple[Tensor, object]:
        """A video's whole grid, normalised ``(N, 3, H, W)``, and its timestamps."""
        sampling = self.frames.sampling
        grid = self.frames.cache.grid(path, sampling)
        return normalize(np.array(grid.frames), sampling.mean, sampling.std), grid.timestamps  # a copy of the mmap

    def _positions(self, timestamps, span: tuple[float, float]) -> Tensor:
        inside = span_positions(timestamps, *span)
        return torch.from_numpy(inside[select_positions(len(inside), self.frames.sampling, None)])

    def _encode(self, frames: Tensor, frame_mask: Tensor):
        """Clips ``(B, T, 3, H, W)`` in batches -> the method's video features and masks, on the device."""
        outputs = []
        for first in range(0, len(frames), self.batch_size):
            outputs.append(self.model.encode_video(frames[first:first + self.batch_size].to(self.device),
                                                   frame_mask[first:first + self.batch_size].to(self.device)))
        return concat_video_features(outputs)

    def _check_frames_independent(self, grid: Tensor) -> bool:
        """Does the teacher embed a frame the same alone as inside a clip? (one clip of up to ``max_frames``)"""
        frames = grid[:self.frames.sampling.max_frames]
        together = self.model.encode_video(frames[None].to(self.device),
                                           torch.ones(1, len(frames), dtype=torch.bool, device=self.device))
        alone = self.model.encode_video(frames[:, None].to(self.device),
                                        torch.ones(len(frames), 1, dtype=torch.bool, device=self.device))
        if isinstance(together, dict) or isinstance(alone, dict):
            return False
        return torch.allclose(together[0], alone[:, 0], rtol=1e-4, atol=1e-5)

    @torch.no_grad()
    def __call__(self, clips: Sequence[Clip], candidates: Sequence[Sequence[tuple[float, float]]]) -> list[list[float]]:
        was_training = self.model.training
        self.model.eval()
        text = encode_captions(self.model, [clip.caption for clip in clips], self.tokenizer, device=self.device,
                               progress=False)
        by_video: dict[str, list[int]] = {}
        for number, clip in enumerate(clips):
            by_video.setdefault(str(clip.path), []).append(number)
        max_frames = self.frames.sampling.max_frames
        scores: list[list[float]] = [[] for _ in clips]
        self.frames_independent = None
        for path, numbers in tqdm(by_video.items(), desc="teacher scores candidates", unit="video",
                                  disable=not self.progress):
            grid, timestamps = self._grid(path)
            if self.frames_independent is None:
                self.frames_independent = self._check_frames_independent(grid)
            spans = [(number, span) for number in numbers for span in candidates[number]]
            positions = [self._positions(timestamps, span) for _, span in spans]
            frame_mask = torch.zeros(len(spans), max_frames, dtype=torch.bool)
            index = torch.zeros(len(spans), max_frames, dtype=torch.long)
            for row, chosen in enumerate(positions):
                frame_mask[row, :len(chosen)] = True
                index[row, :len(chosen)] = chosen
            if self.frames_independent:
                # every grid frame embedded once, as clips of max_frames frames; candidates gather their frames
                padded = torch.zeros(-(-len(grid) // max_frames) * max_frames, *grid.shape[1:])
                padded[:len(grid)] = grid
                mask = torch.arange(len(padded)) < len(grid)
                embedded = self._encode(padded.view(-1, max_frames, *grid.shape[1:]), mask.view(-1, max_frames))
                per_frame = embedded.reshape(-1, embedded.shape[-1])
                features = per_frame[index.to(per_frame.device)] * frame_mask.to(per_frame.device)[..., None]
            else:
                features = self._encode(grid[index] * frame_mask[..., None, None, None], frame_mask)
            frame_mask = frame_mask.to(self.device)
            scale = self.model.logit_scale
            first = 0
            for number in numbers:
                own = slice(first, first + len(candidates[number]))
                own_features = map_video_features(lambda value: value[own], features)
                logits = self.model.similarity(text[number:number + 1], own_features, frame_mask[own])
                scores[number] = (logits[0] / scale).float().cpu().tolist()
                first += len(candidates[number])
        self.model.train(was_training)
        return scores
