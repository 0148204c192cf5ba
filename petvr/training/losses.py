"""The contrastive loss every method trains with: symmetric InfoNCE on a text x video logit matrix."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def symmetric_infonce(logits: Tensor) -> Tensor:
    """``0.5 (CE(S, diag) + CE(S^T, diag))`` for logits S (N, N), texts x videos, text i paired with video i.

    This is CLIP4Clip's CrossEn applied in both directions (text->video rows, video->text columns). The logits
    already carry the temperature (the logit scale). Computed in float32, so fp16 logits do not lose the
    log-softmax. Returns a scalar.
    """
    if logits.dim() != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError("expected a square (N, N) logit matrix with positives on the diagonal, "
                         f"got {tuple(logits.shape)}")
    logits = logits.float()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
