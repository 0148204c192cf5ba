"""CLIP4Clip (Luo et al. 2021): the base recipe and the full fine-tuning baseline.

The backbone is fine-tuned from block ``freeze_layer_num`` on (0: every block, 12 on ViT-B/32: only the projections,
final LayerNorms and logit scale; -1: everything, embeddings included), and frames are scored with one of the four
heads (``meanP``, ``seqLSTM``, ``seqTransf``, ``tightTransf``; see ``heads.py``).

Code vs paper: we follow the public code (reference §1.1-1.3). ``linear_patch="3d"`` replaces the patch embedding
with a Conv3d over neighbouring frames initialised by central inflation (identical to 2d at initialisation). In the
public code a bug makes ``freeze_layer_num`` ignored with 3d (everything trains); we train what the code intended
(the blocks from ``freeze_layer_num`` plus the new Conv3d), and ``reproduce_3d_freeze_bug=True`` restores the bug.
The Conv3d is a new weight, so it trains at the full ``lr``; in the public code it sits under ``clip.`` and gets
``lr * coef_lr``. Under ``precision="fp16-weights"`` the Conv3d is stored in fp16 like the rest of the backbone, as in
CLIP4Clip's code (other methods keep their new weights in float32).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..backbone import CLIP, TowerContext
from ..backbone.blocks import cast_matrix_weights
from .base import Method, MethodConfig, option, register_method
from .heads import build_head

ALWAYS_TRAINED = ("logit_scale", "text.ln_final.", "text.text_projection", "visual.ln_post.", "visual.proj")
LINEAR_PATCHES = ("2d", "3d")


@dataclass
class CLIP4ClipConfig(MethodConfig):
    freeze_layer_num: int = option(
        0, "the first fine-tuned block of each tower; the projections, final LayerNorms and logit scale always train "
        "(0: every block; the number of blocks: no block; -1: everything, the embeddings too)",
        "-1 .. the number of blocks (12 on ViT-B)")
    linear_patch: str = option(
        "2d", "the patch embedding: \"2d\" per frame (CLIP's), \"3d\" a Conv3d over each frame and its two "
        "neighbours, equal to 2d at initialisation", LINEAR_PATCHES)
    cross_num_hidden_layers: int = option(
        4, "the depth of the seqTransf / tightTransf heads, initialised from the text tower's first blocks (other "
        "heads ignore it)", "1 .. the text tower's number of blocks")
    reproduce_3d_freeze_bug: bool = option(
        False, "with linear_patch=\"3d\", train everything as the public code does (its bug ignores "
        "freeze_layer_num); False trains what the code intended")


class TemporalPatchEmbedding(nn.Module):
    """CLIP4Clip's 3D linear patch: Conv3d with kernel (3, P, P), stride (1, P, P), temporal padding 1, no bias.

    Each frame's patch embedding sees its two neighbours. Initialised by central inflation from the 2D patch weight,
    so at initialisation it equals the 2D embedding. Input (B*T, 3, H, W) with the video context -> (B*T, W, h, w).
    """

    def __init__(self, patch_embedding: nn.Conv2d):
        super().__init__()
        width, _, patch, _ = patch_embedding.weight.shape
        self.conv2 = nn.Conv3d(3, width, kernel_size=(3, patch, patch), stride=(1, patch, patch), padding=(1, 0, 0), bias=False)
        if not patch_embedding.weight.is_meta:  # on the meta device (parameter counts) there is nothing to copy
            with torch.no_grad():
                self.conv2.weight.zero_()
                self.conv2.weight[:, :, 1].copy_(patch_embedding.weight)

    def forward(self, images: Tensor, context: TowerContext) -> Tensor:
        batch_frames, channels, height, width = images.shape
        video = images.view(context.batch_size, context.num_frames, channels, height, width).transpose(1, 2)
        patches = self.conv2(video.to(self.conv2.weight.dtype))  # (B, W, T, h, w)
        return patches.transpose(1, 2).flatten(0, 1)


@register_method("clip4clip", CLIP4ClipConfig)
class CLIP4Clip(Method):
    def __init__(self, backbone: CLIP, config: CLIP4ClipConfig):
        super().__init__(backbone, config)
        if config.linear_patch not in LINEAR_PATCHES:
            raise ValueError(f"linear_patch must be '2d' or '3d', got {config.linear_patch!r}")
        layers = max(backbone.config.vision.layers, backbone.config.text.layers)
        if not -1 <= config.freeze_layer_num <= layers:
            raise ValueError(f"freeze_layer_num must be in -1..{layers}, got {config.freeze_layer_num}")
        if config.linear_patch == "3d":
            backbone.visual.conv1 = TemporalPatchEmbedding(backbone.visual.conv1)
        self.head = build_head(config.sim_header, backbone, num_layers=config.cross_num_hidden_layers)

    def backbone_parameters_to_train(self, names: Sequence[str]) -> Iterable[str]:
        freeze = self.config.freeze_layer_num
        train_everything = freeze == -1 or (self.config.linear_patch == "3d" and self.config.reproduce_3d_freeze_bug)
        for name in names:
            if self.config.linear_patch == "3d" and name.startswith("visual.conv1."):
                continue  # replaced by the Conv3d, which trains as a new weight
            if train_everything or name.startswith(ALWAYS_TRAINED) or _block_index(name) >= freeze:
                yield name

    @property
    def identity_at_init(self) -> bool:
        return True  # the 3D patch starts as the 2D one (central inflation); heads act after the embeddings

    def store_weights(self, backbone: CLIP, precision: str, backbone_weight_ids: set[int]) -> None:
        """CLIP4Clip's fp16 mode casts everything under ``clip.``, its 3D patch included."""
        if precision == "fp16-weights":
            cast_matrix_weights(backbone, torch.float16)


def _block_index(name: str) -> int:
    """``visual.transformer.resblocks.7.attn...`` -> 7; -1 for parameters outside the blocks."""
    parts = name.split(".")
    if "resblocks" in parts:
        return int(parts[parts.index("resblocks") + 1])
    return -1
