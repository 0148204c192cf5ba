"""UniPT (Diao et al., CVPR 2024; reference §2): a parallel side network per tower reads every hidden state of the
frozen CLIP, which runs under ``no_grad``; nothing is trained or back-propagated through the backbone.

Each tower (vision per frame, text per caption) runs once without a graph (``CLIP.forward_intermediates`` with
``include_input``), giving its frozen embedding ``e`` (N, D) and the L + 1 = 13 hidden states ``H_l`` (N, S, W) on
ViT-B: the first block's input and every block's output. Its side network (``SideNetwork``, width d = D = 512) then
computes, for each sample:

    g   = D_g(e)                                  anchor projection, ReLU -> Linear(D -> d)          (d,)
    F_l = D_l(H_l)                                per-layer down-projection, ReLU -> Linear(W -> d)  (S, d)
    a_l = ReLU(m * F_l g) / max(|ReLU(m * F_l g)|_1, 1e-6)     single-query parallel interaction    (S,)
    z_l = a_l^T F_l + F_l[p]                      plus the token at the identity position p         (d,)
    c_l = w_c^T (g * mean_m(F_l)) + b_c           confidence of layer l                             scalar
    e'  = e + U(sum_l softmax_l(c)_l z_l)         residual up-projection, ReLU -> Linear(d -> D)     (D,)

with ``m`` the token mask (text: real tokens; vision: every token) and ``p`` the EOT for text, the CLS for vision.
Frames are then scored with CLIP4Clip's meanP; the logit scale stays frozen (only the side networks train).
Trainable: 9,584,642 on ViT-B/32 (vision 5,644,289, text 3,940,353) and the same on ViT-B/16 (the side networks see
only widths and depth), 13 down-projections making up 88% of it.

Paper vs code. The paper's general UniPT (its figure, the VSE-infinity code) uses every token of the last layer as
queries, an identity-matrix term and LayerNorms in the down-projections; the CLIP4Clip code, which petvr follows, is
the single-query case above (the anchor is the frozen embedding, the identity term becomes the same-position token).
Choices:

- follows the code: all 13 states (the input included); ReLU before every projection, the anchor's included; the
  L1-normalised ReLU attention with the mask applied before the ReLU; masked-mean layer summaries; the gate on
  ``g * mean(F_l)``; PyTorch's default Linear initialisation (the code creates the side networks after CLIP4Clip's
  ``init_weights`` has run, so it never touches them); d = D / ``downsample_factor`` with factor 1.
- the frozen pass's precision is ``backbone_precision``: the code stores CLIP in fp16 and runs it so; the side
  networks stay float32 and read each hidden state cast to float32. The default here is float32 (fp16 matrices are
  slow or missing on many CPUs); the MSR-VTT and MSVD recipes set ``"fp16"`` as the code does. A lower precision casts
  the backbone's matrices when the method is built (as ``convert_weights``), so their memory halves too.
- ours: ``zero_init_up`` (zero up-projection, so the model starts as the frozen CLIP; neither paper nor code).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbone import CLIP
from ..backbone.blocks import cast_matrix_weights
from .base import Method, MethodConfig, option, register_method
from .heads import build_head, list_heads

BACKBONE_PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
L1_EPS = 1e-6  # the code's clamp of the attention's L1 norm


@dataclass
class UniPTConfig(MethodConfig):
    """Defaults: the released CLIP4Clip code (MSR-VTT and MSVD): d = D, meanP, the frozen pass in float32 here (the
    dataset recipes use the code's fp16)."""

    sim_header: str = option("meanP", "the similarity head; the released code trains meanP only", list_heads)
    downsample_factor: int = option(1, "the side networks' width d = embed_dim / downsample_factor (the code's "
                                       "downsample_D_factor)", "a divisor of embed_dim")
    backbone_precision: str = option(
        "fp32", "the storage and compute dtype of the frozen towers' matrices, which run without gradient (the code: "
        "fp16); the side networks stay float32", tuple(BACKBONE_PRECISIONS))
    zero_init_up: bool = option(False, "zero up-projections, so the model starts exactly as the frozen backbone "
                                       "(neither paper nor code)")


class SideNetwork(nn.Module):
    """One tower's parallel network: (hidden states [(N, S, W_l)] * L+1, frozen embedding (N, D), token mask (N, S)
    or None, identity positions (N,)) -> refined embedding (N, D).

    The hidden states are consumed: each is taken out of the list and put through its ReLU in place (after the cast to
    the side network's dtype, a copy only when the frozen pass ran in another dtype), so the frozen pass's states and
    the ReLU outputs that the projections keep for backward are one set of tensors, not two.
    """

    def __init__(self, hidden_widths: list[int], embed_dim: int, width: int):
        super().__init__()
        self.layer_projections = nn.ModuleList(nn.Linear(hidden, width) for hidden in hidden_widths)  # D_l
        self.anchor_projection = nn.Linear(embed_dim, width)  # D_g
        self.up_projection = nn.Linear(width, embed_dim)  # U
        self.gate = nn.Linear(width, 1)  # w_c, b_c

    def forward(self, hidden_states: list[Tensor], embedding: Tensor, token_mask: Tensor | None,
                identity_position: Tensor) -> Tensor:
        dtype = self.gate.weight.dtype
        embedding = embedding.to(dtype)
        anchor = self.anchor_projection(F.relu(embedding))  # g (N, d)
        rows = torch.arange(embedding.shape[0], device=embedding.device)
        mask = token_mask.to(dtype) if token_mask is not None else None  # (N, S)
        merged, confidences = [], []
        for index, projection in enumerate(self.layer_projections):
            hidden, hidden_states[index] = hidden_states[index].to(dtype), None
            features = projection(F.relu(hidden) if hidden.requires_grad else F.relu_(hidden))  # F_l (N, S, d)
            scores = torch.einsum("nsd,nd->ns", features, anchor)  # F_l g
            if mask is None:
                summary = features.mean(dim=1)
            else:
                scores = scores * mask
                summary = (features * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
            weights = F.relu(scores)
            weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=L1_EPS)  # a_l (N, S)
            merged.append(torch.einsum("ns,nsd->nd", weights, features) + features[rows, identity_position])  # z_l
            confidences.append(self.gate(anchor * summary))  # c_l (N, 1)
        layer_weights = torch.softmax(torch.cat(confidences, dim=1), dim=1)  # (N, L+1)
        aggregated = torch.einsum("nl,nld->nd", layer_weights, torch.stack(merged, dim=1))
        return embedding + self.up_projection(F.relu(aggregated))  # e' (N, D)


@register_method("unipt", UniPTConfig)
class UniPT(Method):
    def __init__(self, backbone: CLIP, config: UniPTConfig):
        super().__init__(backbone, config)
        if config.backbone_precision not in BACKBONE_PRECISIONS:
            raise ValueError(f"backbone_precision must be one of {tuple(BACKBONE_PRECISIONS)}, got "
                             f"{config.backbone_precision!r}")
        embed_dim = backbone.config.embed_dim
        if config.downsample_factor < 1 or embed_dim % config.downsample_factor:
            raise ValueError(f"downsample_factor must be a positive divisor of embed_dim {embed_dim}, got "
                             f"{config.downsample_factor}")
        width = embed_dim // config.downsample_factor
        self.head = build_head(config.sim_header, backbone)
        vision, text = backbone.config.vision, backbone.config.text
        self.vision = SideNetwork([vision.width] * (vision.layers + 1), embed_dim, width)
        self.text = SideNetwork([text.width] * (text.layers + 1), embed_dim, width)
        if config.zero_init_up:
            for network in (self.vision, self.text):
                nn.init.zeros_(network.up_projection.weight)
                nn.init.zeros_(network.up_projection.bias)
        dtype = BACKBONE_PRECISIONS[config.backbone_precision]
        if dtype != torch.float32:  # only the frozen backbone's matrices (as the code's convert_weights)
            cast_matrix_weights(backbone, dtype, only={id(p) for p in backbone.parameters()})

    @property
    def identity_at_init(self) -> bool:
        return self.config.zero_init_up and self.config.backbone_precision == "fp32"

    def encode_text(self, backbone: CLIP, token_ids: Tensor, token_mask: Tensor) -> Tensor:
        """(B, L) -> (B, D): the frozen text tower without gradient, then the text side network."""
        with torch.no_grad():
            out = backbone.forward_intermediates(token_ids=token_ids, token_mask=token_mask, include_input=True)
        return self.text(out["text_hidden_states"], out["text_embeddings"], token_mask,
                         token_ids.argmax(dim=-1))  # the EOT (the largest id), as the tower pools

    def encode_video(self, backbone: CLIP, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> (B, T, D): every frame through the frozen vision tower without gradient, then the vision
        side network per frame (identity position: the CLS token)."""
        with torch.no_grad():
            out = backbone.forward_intermediates(frames=frames, frame_mask=frame_mask, include_input=True)
        hidden = [state.flatten(0, 1) for state in out.pop("vision_hidden_states")]  # (B*T, 1+N, W) each
        embeddings = out["frame_embeddings"]  # (B, T, D)
        cls = torch.zeros(hidden[0].shape[0], dtype=torch.long, device=frames.device)
        return self.vision(hidden, embeddings.flatten(0, 1), None, cls).view(*embeddings.shape[:2], -1)
