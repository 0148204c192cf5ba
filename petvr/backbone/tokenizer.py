"""OpenAI CLIP BPE tokenizer with the CLIP4Clip convention.

The BPE vocabulary (49,408 tokens: 256 bytes, 256 end-of-word bytes, 48,894 merges, SOT 49406, EOT 49407) and the text
cleaning (ftfy, html unescape, whitespace, lower case) come from open_clip's ``SimpleTokenizer``; we only add the
CLIP4Clip framing: ``[SOT] + tokens[: max_words - 2] + [EOT]``, zero padded to ``max_words``, with an attention mask.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from torch import Tensor

SOT_TOKEN = 49406
EOT_TOKEN = 49407
VOCAB_SIZE = 49408


@lru_cache(maxsize=1)
def _bpe():
    from open_clip.tokenizer import SimpleTokenizer  # imported lazily: open_clip pulls in torchvision

    bpe = SimpleTokenizer()
    if len(bpe.encoder) != VOCAB_SIZE or bpe.encoder["<start_of_text>"] != SOT_TOKEN:
        raise RuntimeError("open_clip's BPE vocabulary is not the OpenAI CLIP vocabulary petvr expects")
    return bpe


class Tokenizer:
    """Callable: captions -> ``(token_ids (N, max_words) int64, attention_mask (N, max_words) bool)``."""

    def __init__(self, max_words: int = 32):
        if max_words < 2:
            raise ValueError(f"max_words must be at least 2 (SOT and EOT), got {max_words}")
        self.max_words = max_words

    def encode(self, caption: str) -> list[int]:
        """One caption -> ``[SOT] + bpe[: max_words - 2] + [EOT]`` (not padded)."""
        if not isinstance(caption, str):
            raise TypeError(f"caption must be a string, got {type(caption).__name__}: {caption!r}")
        return [SOT_TOKEN, *_bpe().encode(caption)[: self.max_words - 2], EOT_TOKEN]

    def __call__(self, captions: str | Sequence[str]) -> tuple[Tensor, Tensor]:
        if isinstance(captions, str):
            captions = [captions]
        token_ids = torch.zeros(len(captions), self.max_words, dtype=torch.long)
        for row, caption in enumerate(captions):
            tokens = self.encode(caption)
            token_ids[row, : len(tokens)] = torch.tensor(tokens)
        return token_ids, token_ids != 0

    def decode(self, token_ids: Sequence[int]) -> str:
        """Token ids -> text, without SOT/EOT/padding."""
        ids = [int(t) for t in token_ids if int(t) not in (0, SOT_TOKEN, EOT_TOKEN)]
        return _bpe().decode(ids).strip()
