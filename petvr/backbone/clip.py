"""A clean CLIP: a ViT image tower applied per frame and a causal text tower pooled at EOT.

The backbone knows nothing of any method. Methods plug in through four extension points:
wrapping ``block.attn`` / ``block.mlp`` (see ``blocks.py``), the ``TowerContext`` every block receives, token hooks on
each tower's ``transformer``, and ``forward_intermediates`` (every block's hidden state).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from .blocks import LayerNorm, PatchEmbedding, TowerContext, Transformer, default_logit_scale
from .config import CLIPConfig, TextConfig, VisionConfig, get_model_config


class VisionTower(nn.Module):
    """ViT: conv patch embedding, CLS token, pre-LN blocks, ``ln_post`` on every token, CLS projected to ``embed_dim``."""

    def __init__(self, config: VisionConfig, embed_dim: int, quick_gelu: bool):
        super().__init__()
        self.config = config
        width = config.width
        self.conv1 = PatchEmbedding(width, config.patch_size)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(config.grid_size**2 + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, config.layers, config.heads, config.mlp_ratio, quick_gelu)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.empty(width, embed_dim))

    def init_weights(self) -> None:
        scale = self.config.width**-0.5
        nn.init.normal_(self.conv1.weight, std=0.02)
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding, std=scale)
        nn.init.normal_(self.proj, std=scale)
        self.transformer.init_weights(self.config.layers)

    def embed(self, images: Tensor, context: TowerContext) -> Tensor:
        """(N, 3, H, W) -> (N, 1 + grid², W): patches, CLS first, positions added, ``ln_pre`` applied."""
        x = self.conv1(images, context).flatten(2).transpose(1, 2)  # (N, grid², W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        return self.ln_pre(x)

    def pool(self, tokens: Tensor) -> Tensor:
        """(N, L, W) -> (N, D): ``ln_post`` then the CLS token through ``proj``."""
        return self.ln_post(tokens)[:, 0] @ self.proj

    def make_context(self, batch_size: int, num_frames: int, frame_mask: Tensor | None) -> TowerContext:
        return TowerContext("vision", batch_size, num_frames, frame_mask=frame_mask)

    def forward(self, frames: Tensor, frame_mask: Tensor | None = None, hidden_states: list[Tensor] | None = None,
                include_input: bool = False) -> Tensor:
        """Frames (B, T, 3, H, W) and mask (B, T) -> per-frame embeddings (B, T, D); ``hidden_states`` and
        ``include_input`` as ``Transformer.forward``."""
        if frames.dim() != 5:
            raise ValueError(f"expected frames of shape (B, T, 3, H, W), got {tuple(frames.shape)}")
        batch_size, num_frames = frames.shape[:2]
        if frame_mask is None:
            frame_mask = torch.ones(batch_size, num_frames, dtype=torch.bool, device=frames.device)
        context = self.make_context(batch_size, num_frames, frame_mask.bool())
        x = self.embed(frames.flatten(0, 1), context)  # (B*T, 1+N, W)
        x = self.transformer(x, context, hidden_states, include_input)
        return self.pool(x).view(batch_size, num_frames, -1)


class TextTower(nn.Module):
    """Causal transformer over BPE tokens; the caption feature is ``ln_final`` at the EOT (the largest token id)."""

    def __init__(self, config: TextConfig, embed_dim: int, quick_gelu: bool):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.transformer = Transformer(config.width, config.layers, config.heads, config.mlp_ratio, quick_gelu)
        self.ln_final = LayerNorm(config.width)
        self.text_projection = nn.Parameter(torch.empty(config.width, embed_dim))

    def init_weights(self) -> None:
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=self.config.width**-0.5)
        self.transformer.init_weights(self.config.layers)

    def embed(self, token_ids: Tensor) -> Tensor:
        """(B, L) -> (B, L, W): token plus positional embeddings (the table sliced to L)."""
        length = token_ids.shape[1]
        if length > self.config.context_length:
            raise ValueError(f"{length} tokens exceed the text context length {self.config.context_length}")
        x = self.token_embedding(token_ids) + self.positional_embedding[:length]
        return x.to(self.text_projection.dtype)  # the blocks' dtype (fp16 under CLIP4Clip's fp16 weights)

    def pool(self, tokens: Tensor, pool_index: Tensor) -> Tensor:
        """(B, L, W) -> (B, D): ``ln_final`` at ``pool_index`` through ``text_projection``."""
        pooled = tokens[torch.arange(tokens.shape[0], device=tokens.device), pool_index]
        return self.ln_final(pooled) @ self.text_projection

    def make_context(self, token_ids: Tensor, token_mask: Tensor | None) -> TowerContext:
        if token_mask is None:
            token_mask = token_ids != 0
        return TowerContext(
            "text", token_ids.shape[0], token_mask=token_mask.bool(), pool_index=token_ids.argmax(dim=-1), causal=True
        )

    def forward(self, token_ids: Tensor, token_mask: Tensor | None = None, hidden_states: list[Tensor] | None = None,
                include_input: bool = False) -> Tensor:
        """Token ids (B, L) (SOT ... EOT, zero padded) -> caption embeddings (B, D); ``hidden_states`` and
        ``include_input`` as ``Transformer.forward``."""
        context = self.make_context(token_ids, token_mask)
        x = self.transformer(self.embed(token_ids), context, hidden_states, include_input)
        return self.pool(x, context.pool_index)


class CLIP(nn.Module):
    """Both towers and the learnable logit scale (``exp(logit_scale)`` multiplies cosine similarities)."""

    def __init__(self, config: CLIPConfig, name: str | None = None):
        super().__init__()
        self.config = config
        self.name = name  # the model config name ("ViT-B-32"); recorded in adapter files
        self.visual = VisionTower(config.vision, config.embed_dim, config.quick_gelu)
        self.text = TextTower(config.text, config.embed_dim, config.quick_gelu)
        self.logit_scale = nn.Parameter(torch.tensor(default_logit_scale()))

    def init_weights(self) -> None:
        self.visual.init_weights()
        self.text.init_weights()
        with torch.no_grad():
            self.logit_scale.fill_(default_logit_scale())

    def encode_frames(self, frames: Tensor, frame_mask: Tensor | None = None) -> Tensor:
        """(B, T, 3, H, W) -> (B, T, D), not normalised."""
        return self.visual(frames, frame_mask)

    def encode_images(self, images: Tensor) -> Tensor:
        """(N, 3, H, W) -> (N, D), not normalised."""
        return self.visual(images.unsqueeze(1)).squeeze(1)

    def encode_text(self, token_ids: Tensor, token_mask: Tensor | None = None) -> Tensor:
        """(B, L) -> (B, D), not normalised."""
        return self.text(token_ids, token_mask)

    def forward_intermediates(
        self,
        frames: Tensor | None = None,
        frame_mask: Tensor | None = None,
        token_ids: Tensor | None = None,
        token_mask: Tensor | None = None,
        include_input: bool = False,
    ) -> dict[str, Tensor | list[Tensor]]:
        """Embeddings plus every block's output, for side networks (as open_clip's ``forward_intermediates``).

        Returns ``frame_embeddings`` (B, T, D) and ``vision_hidden_states``: one (B, T, 1+N, W) per block, and/or
        ``text_embeddings`` (B, D) and ``text_hidden_states``: one (B, L, W) per block. With ``include_input`` each
        list starts with the first block's input (after ``ln_pre``; token plus positional embeddings), so it holds
        layers + 1 states (UniPT's 13 on ViT-B). Call it under ``no_grad`` to read the frozen backbone without
        building a graph through it.
        """
        out: dict[str, Tensor | list[Tensor]] = {}
        if frames is not None:
            hidden: list[Tensor] = []
            out["frame_embeddings"] = self.visual(frames, frame_mask, hidden, include_input)
            batch_size, num_frames = frames.shape[:2]
            out["vision_hidden_states"] = [h.view(batch_size, num_frames, *h.shape[1:]) for h in hidden]
        if token_ids is not None:
            hidden = []
            out["text_embeddings"] = self.text(token_ids, token_mask, hidden, include_input)
            out["text_hidden_states"] = hidden
        return out


def create_backbone(config: str | CLIPConfig, device: torch.device | str | None = None) -> CLIP:
    """Build a randomly initialised CLIP from a bundled config name, a JSON path or a ``CLIPConfig``.

    On ``device="meta"`` nothing is allocated (for parameter counts).
    """
    name = None
    if not isinstance(config, CLIPConfig):
        name = Path(config).stem
        config = get_model_config(config)
    with torch.device(device or "cpu"):
        model = CLIP(config, name)
        if str(device) != "meta":
            model.init_weights()
    return model
