"""The residual block shared by both towers, and the context every block receives.

A block is ``x = x + attn(ln_1(x), context)`` then ``x = x + mlp(ln_2(x), context)``. ``attn`` and ``mlp`` are named
sub-modules with the signature ``(x, context) -> x`` so that a method can replace either one with a wrapper that calls
the frozen original and adds its own branch (the peft way). Parameter names follow OpenAI CLIP
(``attn.in_proj_weight``, ``mlp.c_fc``, ...), so checkpoints map one to one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class TowerContext:
    """What a block (and any wrapper or token hook inside it) may know about the batch it is processing.

    The vision tower processes ``batch_size * num_frames`` frame sequences at once; ``frame_mask`` (B, T) marks real
    frames, so a wrapper that needs the video structure reshapes ``(B*T, N, W) -> (B, T, N, W)`` from these fields.
    The text tower processes ``batch_size`` captions (``num_frames == 1``); ``token_mask`` (B, L) marks real tokens and
    ``pool_index`` (B,) is the EOT position that the tower pools. A token hook that inserts ``k`` tokens before the EOT
    adds ``k`` to ``pool_index``.

    Two masks reach every attention, both bool with True where attending is allowed, combined with each other and
    with ``causal``:

    - ``key_padding_mask`` (N, L): keys that may be attended to (heads that reuse blocks over padded frame sequences);
    - ``attention_mask``: any pattern broadcastable to (N, heads, L, L), as open_clip threads ``attn_mask``; e.g.
      DGL's global-local attention, where a few global tokens see every frame and the others only their own frame.

    The backbone's towers leave both unset (the plain, fastest path). ``state`` is a scratch dict a method may use to
    pass values between its own hooks and wrappers during one forward pass; the backbone never reads it.
    """

    modality: str
    batch_size: int
    num_frames: int = 1
    frame_mask: Tensor | None = None
    token_mask: Tensor | None = None
    pool_index: Tensor | None = None
    causal: bool = False
    key_padding_mask: Tensor | None = None
    attention_mask: Tensor | None = None
    state: dict[str, Any] = field(default_factory=dict)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back, so fp16 weights elsewhere (CLIP4Clip's training mode) work."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


class PatchEmbedding(nn.Conv2d):
    """The ViT patch projection (kernel = stride = patch, no bias), called as ``(images, context)`` so that a method
    may replace it with a video-aware version (CLIP4Clip's 3D linear patch); its weight keeps OpenAI's name ``conv1``."""

    def __init__(self, width: int, patch_size: int):
        super().__init__(3, width, kernel_size=patch_size, stride=patch_size, bias=False)

    def forward(self, images: Tensor, context: TowerContext | None = None) -> Tensor:
        """(N, 3, H, W) -> (N, W, H/P, W/P)."""
        return super().forward(images.to(self.weight.dtype))


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with a fused input projection, computed by ``F.scaled_dot_product_attention``.

    ``forward`` is two steps a method can enter without copying either: ``project`` (x -> q, k, v per head) and
    ``attend`` (q, k, v -> output, with the context's masks and optional extra keys/values). LoRA on q and v adds to
    ``project``'s output; prefix prompts pass their projected keys/values to ``attend``.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention; CLIP.init_weights overrides it

    def split_heads(self, x: Tensor) -> Tensor:
        """(N, L, W) -> (N, heads, L, W / heads)."""
        n, length, width = x.shape
        return x.view(n, length, self.heads, width // self.heads).transpose(1, 2)

    def project(self, x: Tensor, context: TowerContext) -> tuple[Tensor, Tensor, Tensor]:
        """(N, L, W) -> q, k, v, each (N, heads, L, W / heads), through the frozen fused projection."""
        n, length, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(n, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]

    def attend(self, q: Tensor, k: Tensor, v: Tensor, context: TowerContext,
               extra_keys: Tensor | None = None, extra_values: Tensor | None = None) -> Tensor:
        """q, k, v (N, heads, L, d) -> (N, L, W) through ``out_proj``.

        ``extra_keys`` / ``extra_values`` (N, heads, P, d) are prepended to the keys and values (prefix prompts):
        every query may attend to them, causal or not. The context's ``key_padding_mask`` (N, L) and
        ``attention_mask`` (broadcastable to (N, heads, L, L)) apply to the sequence's own keys.
        """
        n, _, length, _ = q.shape
        mask = _attention_mask(context, length, q.device)
        if extra_keys is not None:
            if extra_values is None or extra_values.shape != extra_keys.shape:
                raise ValueError("extra keys and extra values must be given together, with the same shape")
            k, v = torch.cat([extra_keys, k], dim=2), torch.cat([extra_values, v], dim=2)
            if mask is None and context.causal:
                mask = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
            if mask is not None:  # the prefix is always visible
                mask = torch.cat([mask.new_ones(*mask.shape[:-1], extra_keys.shape[2]), mask], dim=-1)
        if mask is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=context.causal)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(n, length, -1))

    def forward(self, x: Tensor, context: TowerContext) -> Tensor:
        """(N, L, W) -> (N, L, W); causal when ``context.causal``."""
        return self.attend(*self.project(x, context), context)


def _attention_mask(context: TowerContext, length: int, device: torch.device) -> Tensor | None:
    """The context's masks combined into one bool mask (True: may attend), broadcastable to (N, heads, L, L), or
    None when nothing but plain (possibly causal) attention is asked for, so SDPA's fastest path runs."""
    mask = None
    if context.key_padding_mask is not None:
        mask = context.key_padding_mask[:, None, None, :].bool()  # (N, 1, 1, L)
    if context.attention_mask is not None:
        pattern = context.attention_mask.bool()
        mask = pattern if mask is None else mask & pattern
    if mask is not None and context.causal:
        mask = mask & torch.ones(length, length, dtype=torch.bool, device=device).tril()
    return mask


class Mlp(nn.Module):
    """Linear -> (Quick)GELU -> Linear, named like OpenAI CLIP's ``c_fc`` / ``c_proj``."""

    def __init__(self, width: int, hidden: int, quick_gelu: bool):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU() if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor, context: TowerContext) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualBlock(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1 x)``, then ``+ mlp(ln_2 x)``. ``norm_eps`` is the LayerNorms'
    epsilon (CLIP's 1e-5 by default; blocks built outside the towers may need another, e.g. BERT's 1e-12)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, quick_gelu: bool, norm_eps: float = 1e-5):
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=norm_eps)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width, eps=norm_eps)
        self.mlp = Mlp(width, int(width * mlp_ratio), quick_gelu)

    def forward(self, x: Tensor, context: TowerContext) -> Tensor:
        x = x + self.attn(self.ln_1(x), context)
        x = x + self.mlp(self.ln_2(x), context)
        return x


class Transformer(nn.Module):
    """A stack of residual blocks (``resblocks``) with optional token hooks before and between them.

    ``token_hooks[str(i)]`` runs before block ``i``; ``token_hooks[str(len(resblocks))]`` runs after the last block.
    A hook is any module ``(x, context) -> x`` that may insert, replace or drop tokens (prompt methods).
    ``norm_eps`` goes to every block's LayerNorms.
    """

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, quick_gelu: bool, norm_eps: float = 1e-5):
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(
            ResidualBlock(width, heads, mlp_ratio, quick_gelu, norm_eps) for _ in range(layers)
        )
        self.token_hooks = nn.ModuleDict()

    def add_token_hook(self, position: int, hook: nn.Module) -> None:
        """Run ``hook(x, context)`` before block ``position`` (``len(resblocks)`` means after the last block)."""
        if not 0 <= position <= len(self.resblocks):
            raise ValueError(f"token hook position {position} outside 0..{len(self.resblocks)}")
        key = str(position)
        if key not in self.token_hooks:
            self.token_hooks[key] = nn.ModuleList()
        self.token_hooks[key].append(hook)

    def _run_hooks(self, position: int, x: Tensor, context: TowerContext) -> Tensor:
        key = str(position)
        if key in self.token_hooks:
            for hook in self.token_hooks[key]:
                x = hook(x, context)
        return x

    def forward(self, x: Tensor, context: TowerContext, hidden_states: list[Tensor] | None = None,
                include_input: bool = False) -> Tensor:
        """(N, L, W) -> (N, L', W). Appends each block's output to ``hidden_states`` when a list is given, preceded
        by the first block's input (after the hooks before it) when ``include_input``."""
        for index, block in enumerate(self.resblocks):
            x = self._run_hooks(index, x, context)
            if include_input and index == 0 and hidden_states is not None:
                hidden_states.append(x)
            x = block(x, context)
            if hidden_states is not None:
                hidden_states.append(x)
        return self._run_hooks(len(self.resblocks), x, context)

    def init_weights(self, layers: int) -> None:
        """open_clip's initialisation: attention std W^-1/2, output projections scaled by (2 layers)^-1/2."""
        attn_std = self.width**-0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        fc_std = (2 * self.width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.zeros_(block.attn.in_proj_bias)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.zeros_(block.attn.out_proj.bias)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.zeros_(block.mlp.c_fc.bias)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
            nn.init.zeros_(block.mlp.c_proj.bias)


def default_logit_scale() -> float:
    """CLIP's initial temperature, ln(1 / 0.07)."""
    return math.log(1 / 0.07)


def cast_matrix_weights(model: nn.Module, dtype: torch.dtype, only: set[int] | None = None) -> int:
    """Cast the weights of every Linear, Conv and Attention module, and any ``proj`` / ``text_projection`` matrix, to
    ``dtype`` (OpenAI CLIP's ``convert_weights``); LayerNorms, embeddings and the logit scale stay as they are.

    ``only`` restricts the cast to parameters whose ``id`` is in it. Returns the number of parameters cast.
    """
    cast = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d, Attention)):
            names = [name for name, _ in module.named_parameters(recurse=False)]
        else:
            names = [name for name in ("proj", "text_projection") if isinstance(getattr(module, name, None), nn.Parameter)]
        for name in names:
            parameter = getattr(module, name)
            if only is None or id(parameter) in only:
                parameter.data = parameter.data.to(dtype)
                cast += 1
    return cast
