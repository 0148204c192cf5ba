"""Prompt tuning: VPT (Jia et al. 2022) learnable tokens in the vision tower, optionally text prompts too.

``num_tokens`` learnable tokens sit right after the first token (CLS in the vision tower, SOT in the text tower), as
VPT's "prepend" location: ``[CLS, P_1..P_n, patches]``. They are inserted by a token hook before block 0 (VPT-shallow,
``depth=1``) and, for VPT-deep, each of the first ``depth`` blocks gets its own tokens in their place (the previous
block's outputs at those positions are dropped); ``depth=None`` means every block. The sequence grows by
``num_tokens`` once. The vision tower pools the CLS token, still at 0, so the prompts need no removal; in the text
tower the insertion hook moves the pooled EOT position (``context.pool_index``) by ``num_tokens``, and the causal
mask lets every word and the EOT see the prompts.

Choices and where they come from:

- Vision prompts start uniform in (-v, v) with v = sqrt(6 / (3 P^2 + W)) (VPT's code: Xavier-uniform over the patch
  embedding's fan-in 3 P^2 and the width W); text prompts N(0, 0.02) (CoOp and MaPLe's context vectors).
- Defaults follow Cross-Modal Adapter's prompt baselines (reference §2.8): 20 tokens, deep, vision only, 0.18M on
  ViT-B/32 ("VPT-deep"); ``towers=("vision", "text")`` is its "VL-Prompt" (0.31M).
- ``dropout`` on the prompt tokens is VPT's ``PROMPT.DROPOUT`` (0 by default).
- The hook runs after CLIP's ``ln_pre`` (the vision tower's token hooks see the embedded, normalised tokens); VPT's
  ViTs have no ``ln_pre``.

Trainable on ViT-B/32 and ViT-B/16 (same widths): tokens x width x depth: 20 x 768 x 12 = 184,320 (vision, deep);
with text prompts + 20 x 512 x 12 = 122,880, 307,200 in all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..backbone import CLIP, TowerContext
from .base import TOWERS_ALLOWED, Method, MethodConfig, option, register_method
from .heads import build_head
from .wrapping import TOWERS, check_towers

TEXT_PROMPT_STD = 0.02  # CoOp / MaPLe


@dataclass
class PromptConfig(MethodConfig):
    """Defaults: Cross-Modal Adapter's "VPT-deep" baseline (20 tokens, every block, vision only)."""

    num_tokens: int = option(20, "learnable tokens per tower and prompted block, placed after the first token "
                                 "(CLS / SOT)", ">= 1")
    depth: int | None = option(None, "the first depth blocks of each tower get their own prompts (1: VPT-shallow; "
                                     "None: every block, VPT-deep)", "None or 1 .. the tower's number of blocks")
    towers: tuple[str, ...] = option(("vision",), "the towers that get prompts (both: \"VL-Prompt\")",
                                     TOWERS_ALLOWED)
    dropout: float = option(0.0, "dropout on the prompt tokens (VPT's PROMPT.DROPOUT)", "[0, 1)")

    def __post_init__(self) -> None:
        self.towers = check_towers(self.towers)
        if self.num_tokens < 1:
            raise ValueError(f"prompt num_tokens must be at least 1, got {self.num_tokens}")
        if self.depth is not None and self.depth < 1:
            raise ValueError(f"prompt depth must be at least 1 (1: shallow) or None (every block), got {self.depth}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"prompt dropout must be in [0, 1), got {self.dropout}")


class PromptTokens(nn.Module):
    """A token hook with learnable ``prompts`` (P, W) at positions 1..P of every sequence (N, L, W).

    ``insert=True`` (before the first prompted block): the prompts are inserted after the first token, (N, L, W) ->
    (N, L + P, W), and the text context's ``pool_index`` and ``token_mask`` follow. ``insert=False`` (deep prompts):
    they replace positions 1..P, the shape is unchanged.
    """

    def __init__(self, prompts: Tensor, insert: bool, dropout: float):
        super().__init__()
        self.prompts = nn.Parameter(prompts)
        self.insert = insert
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: TowerContext) -> Tensor:
        count = self.prompts.shape[0]
        prompts = self.dropout(self.prompts.to(x.dtype).expand(x.shape[0], -1, -1))
        if self.insert:
            if context.pool_index is not None:
                context.pool_index = context.pool_index + count
            if context.token_mask is not None:
                mask = context.token_mask
                context.token_mask = torch.cat([mask[:, :1], mask.new_ones(mask.shape[0], count), mask[:, 1:]], dim=1)
            rest = x[:, 1:]
        else:
            rest = x[:, 1 + count:]
        return torch.cat([x[:, :1], prompts, rest], dim=1)


def initial_prompts(backbone: CLIP, tower: str, count: int) -> Tensor:
    """(count, width): VPT's uniform bound for vision prompts, CoOp's N(0, 0.02) for text prompts."""
    if tower == "vision":
        config = backbone.config.vision
        bound = math.sqrt(6.0 / (3 * config.patch_size**2 + config.width))
        return nn.init.uniform_(torch.empty(count, config.width), -bound, bound)
    return nn.init.normal_(torch.empty(count, backbone.config.text.width), std=TEXT_PROMPT_STD)


@register_method("prompt", PromptConfig)
class Prompt(Method):
    def __init__(self, backbone: CLIP, config: PromptConfig):
        super().__init__(backbone, config)
        self.head = build_head(config.sim_header, backbone)
        for tower in config.towers:
            transformer = getattr(backbone, TOWERS[tower]).transformer
            blocks = len(transformer.resblocks)
            depth = blocks if config.depth is None else config.depth
            if depth > blocks:
                raise ValueError(f"prompt depth {depth} exceeds the {tower} tower's {blocks} blocks")
            for layer in range(depth):
                hook = PromptTokens(initial_prompts(backbone, tower, config.num_tokens), insert=layer == 0,
                                    dropout=config.dropout)
                transformer.add_token_hook(layer, hook)
