"""DGL (Yang et al., AAAI 2024): prompts from a shared latent space and global-local video attention on a frozen CLIP.

A shared latent space generates, for every layer, deep text prompts (half before the words, half after) and local
prompts for every frame; a few static global prompts enter the vision tower once, at the input. Each vision block
runs global-local attention with its frozen weights: every frame's tokens (CLS, local prompts, patches) attend to the
global prompts and their own frame only; the global prompts attend to every token of every frame. The video
embedding is the first global prompt after ``ln_post`` and ``proj``, one vector per video (reference §1.1).

Two variants (``shared_latent_space``):

- ``"transformer"`` (DGL-Transformer): a table of ``n_text + local * num_frames`` tokens per layer passes through one
  new pre-LN transformer block (the layers are its batch); the first ``n_text`` outputs go through an MLP (W_v -> 2 W_v
  -> W_t, QuickGELU) to the text width, the rest are the frame prompts, ``local`` per frame *slot* (so they also mark
  the frame's index). 9,575,168 trained weights on ViT-B/32 and ViT-B/16 (12 frames).
- ``"linear"`` (DGL-Linear): ``local`` frame prompts per layer shared by all frames; the text prompts are two linear
  maps of them (one for the prefix, one for the postfix). 827,392 trained weights on ViT-B/32 and ViT-B/16.

Choices and where they come from:

- Follows the released code (reference §1.1): 4 global prompts (input only, carried through the blocks), 4 local
  prompts per frame replaced before every block, 8 text prompts (4 + 4) replaced before every block with no
  positional embedding, every layer of both towers prompted, the first global prompt as the video embedding, the
  similarity head meanP (identity on one vector per video), the logit scale frozen. Initialisation as the code:
  the latent table N(0, 1) (an ``nn.Embedding``), the linear variant's prompts and the global prompts uniform in
  (-v, v), v = sqrt(6 / (3 P^2 + W_v)), the prompt block like ``nn.MultiheadAttention`` (Xavier in-projection,
  zero biases).
- **Global prompts' start: ours by default.** The video embedding is the first global prompt's output; from the
  released uniform init it starts as a random token, and on the embedded default one epoch left both variants at
  chance (test t2v R@1 1.0 / 0.4, docs/results.md before this option). ``global_prompt_init = "cls"`` (the default)
  adds the frozen CLS input token, ``ln_pre(class_embedding + positional_embedding[0])``, to that noise, so the video
  embedding starts as a CLS token that attends over every frame, as the adapters start at the identity (one seed,
  one epoch: DGL-Linear 41.3, DGL 40.7). ``"uniform"`` is the released init; converted checkpoints carry their own
  prompts either way.
- **Postfix text prompts: ours by default.** The released code appends the postfix prompts after the padding, behind
  every EOT; under the causal mask the pooled EOT never sees them, so they get no gradient (the linear variant's
  postfix projection, 393,728 weights, never trains). ``postfix_position = "before_eot"`` (the default) puts them
  right before each caption's EOT, where it sees them; ``"after_padding"`` is the released behaviour (converted
  official checkpoints use it, so they score as they did).
- **Padded frames: ours.** The released code feeds padded frames as black images that the global prompts attend to;
  here padded frames are zeroed and hidden from the global prompts (they never change a video's embedding). With
  every frame real, both agree.
- Ours: the prompt layers are ``max(vision blocks, text blocks)`` (12 on ViT-B), each tower uses the first of them;
  the Transformer variant refuses videos with more frames than its ``num_frames`` slots, a video with fewer uses the
  first slots. The prompts depend on no input: at inference (eval mode, no grad) they are computed once and reused
  until a weight changes.
- The frozen blocks are not copied: each block's ``ln_1``, ``attn.project`` / ``attn.attend``, ``ln_2`` and ``mlp``
  run on two views, frames (B*T, 1+k+N, W) and global prompts (B, G, W). The global prompts' keys are the frames'
  keys of that block, so the sequence of 4 + T (1 + k + N) tokens (652 on ViT-B/32 with 12 frames) costs about as
  much as encoding the frames alone.

Trainable on ViT-B/32 (reference §1.2): Transformer 516,096 (table) + 7,087,872 (block) + 1,968,128 (MLP) + 3,072
(global) = 9,575,168; Linear 36,864 + 787,456 + 3,072 = 827,392.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..backbone import CLIP, TowerContext
from ..backbone.blocks import QuickGELU, ResidualBlock
from .base import Method, MethodConfig, option, register_method
from .heads import build_head

LATENT_SPACES = ("transformer", "linear")
POSTFIX_POSITIONS = ("before_eot", "after_padding")
GLOBAL_PROMPT_INITS = ("uniform", "cls")


@dataclass
class DGLConfig(MethodConfig):
    """Defaults: DGL-Transformer on MSR-VTT as released (12 frames), postfix prompts before the EOT."""

    sim_header: str = option("meanP", "the similarity head; DGL embeds each video as one vector, scored by meanP",
                             ("meanP",))
    shared_latent_space: str = option("transformer", "the prompt generator: one transformer block over a table of "
                                                     "per-layer tokens (DGL-Transformer), or linear maps of shared "
                                                     "frame prompts (DGL-Linear)", LATENT_SPACES)
    num_frames: int = option(12, "frame slots of the Transformer variant's per-frame prompts (the recipe's "
                                 "max_frames); a video may have fewer frames, not more", ">= 1")
    text_prompts: int = option(8, "deep text prompts per layer: the first half before the words, the rest after "
                                  "them (the linear variant needs twice local_prompts)", "even, >= 2")
    local_prompts: int = option(4, "local prompts per frame and layer, after each frame's CLS token", ">= 1")
    global_prompts: int = option(4, "static global video prompts, inserted once before the frames", ">= 1")
    postfix_position: str = option(
        "before_eot", "where the postfix text prompts sit: right before each caption's EOT (ours, they reach the "
                      "pooled EOT) or after the padding (the released code: behind the EOT, so the causal mask "
                      "gives them no gradient)", POSTFIX_POSITIONS)
    global_prompt_init: str = option(
        "cls", "the global prompts' start: DGL's uniform init, or the frozen CLS input token (ln_pre(class "
                   "embedding + position 0)) plus that noise, so that the video embedding starts as a CLS token "
                   "attending over every frame rather than a random one", GLOBAL_PROMPT_INITS)

    def __post_init__(self) -> None:
        if self.sim_header != "meanP":
            raise ValueError(f"dgl embeds each video as one vector; sim_header must be 'meanP', got {self.sim_header!r}")
        if self.shared_latent_space not in LATENT_SPACES:
            raise ValueError(f"dgl shared_latent_space must be one of {LATENT_SPACES}, got {self.shared_latent_space!r}")
        if self.global_prompt_init not in GLOBAL_PROMPT_INITS:
            raise ValueError(f"dgl global_prompt_init must be one of {GLOBAL_PROMPT_INITS}, got "
                             f"{self.global_prompt_init!r}")
        if self.postfix_position not in POSTFIX_POSITIONS:
            raise ValueError(f"dgl postfix_position must be one of {POSTFIX_POSITIONS}, got {self.postfix_position!r}")
        for name in ("num_frames", "local_prompts", "global_prompts"):
            if getattr(self, name) < 1:
                raise ValueError(f"dgl {name} must be at least 1, got {getattr(self, name)}")
        if self.text_prompts < 2 or self.text_prompts % 2:
            raise ValueError(f"dgl text_prompts must be even and at least 2, got {self.text_prompts}")
        if self.shared_latent_space == "linear" and self.text_prompts != 2 * self.local_prompts:
            raise ValueError(f"dgl's linear latent space maps the {self.local_prompts} frame prompts to the prefix and "
                             f"to the postfix: text_prompts must be {2 * self.local_prompts}, got {self.text_prompts}")


def _uniform_prompts(shape: tuple[int, ...], patch_size: int, width: int) -> Tensor:
    """VPT's (and DGL's) initialisation: uniform in (-v, v), v = sqrt(6 / (3 P^2 + W))."""
    bound = math.sqrt(6.0 / (3 * patch_size**2 + width))
    return nn.init.uniform_(torch.empty(shape), -bound, bound)


class TransformerLatentSpace(nn.Module):
    """DGL-Transformer's generator: ``table`` (layers, n_text + local * slots, W_v) -> one new pre-LN block (layers
    as the batch) -> text prompts through ``text_mlp`` (layers, n_text, W_t) and frame prompts (layers, slots, local,
    W_v)."""

    def __init__(self, layers: int, text_prompts: int, local_prompts: int, slots: int, vision_width: int,
                 text_width: int):
        super().__init__()
        self.text_prompts, self.local_prompts, self.slots = text_prompts, local_prompts, slots
        self.table = nn.Parameter(torch.randn(layers, text_prompts + local_prompts * slots, vision_width))
        self.block = ResidualBlock(vision_width, max(1, vision_width // 64), 4.0, quick_gelu=True)
        nn.init.zeros_(self.block.attn.out_proj.bias)  # as nn.MultiheadAttention
        self.text_mlp = nn.Sequential()
        self.text_mlp.add_module("c_fc", nn.Linear(vision_width, 2 * vision_width))
        self.text_mlp.add_module("gelu", QuickGELU())
        self.text_mlp.add_module("c_proj", nn.Linear(2 * vision_width, text_width))

    def forward(self) -> tuple[Tensor, Tensor]:
        layers, _, width = self.table.shape
        tokens = self.block(self.table, TowerContext("prompts", layers))  # (layers, P, W_v)
        text = self.text_mlp(tokens[:, :self.text_prompts])
        frames = tokens[:, self.text_prompts:].reshape(layers, self.slots, self.local_prompts, width)
        return text, frames


class LinearLatentSpace(nn.Module):
    """DGL-Linear's generator: ``frame_prompts`` (layers, local, W_v), shared by every frame, and the text prompts
    ``[prefix(frame_prompts); postfix(frame_prompts)]`` (layers, 2 local, W_t)."""

    def __init__(self, layers: int, local_prompts: int, vision_width: int, text_width: int, patch_size: int):
        super().__init__()
        self.frame_prompts = nn.Parameter(_uniform_prompts((layers, local_prompts, vision_width), patch_size,
                                                           vision_width))
        self.prefix = nn.Linear(vision_width, text_width)
        self.postfix = nn.Linear(vision_width, text_width)

    def forward(self) -> tuple[Tensor, Tensor]:
        text = torch.cat([self.prefix(self.frame_prompts), self.postfix(self.frame_prompts)], dim=1)
        return text, self.frame_prompts.unsqueeze(1)  # one slot, shared by every frame


def global_local_block(block: nn.Module, global_tokens: Tensor, frame_tokens: Tensor, num_frames: int,
                       frame_context: TowerContext, global_context: TowerContext) -> tuple[Tensor, Tensor]:
    """One frozen ViT block under DGL's global-local attention, with the block's own modules.

    ``global_tokens`` (B, G, W), ``frame_tokens`` (B*T, n, W), T = ``num_frames``. Each frame's tokens attend to the
    global prompts (as ``attend``'s extra keys) and to their own frame; the global prompts attend to themselves and
    to every frame token of their video (``global_context.key_padding_mask``, (B, G + T n), hides padded frames).
    Equal to the block's attention over the sequence [G; frame 1; ...; frame T] under that mask pattern.
    """
    attn = block.attn
    batch_size = global_tokens.shape[0]
    q_frames, k_frames, v_frames = attn.project(block.ln_1(frame_tokens), frame_context)  # (B*T, h, n, d)
    q_global, k_global, v_global = attn.project(block.ln_1(global_tokens), global_context)  # (B, h, G, d)
    frame_update = attn.attend(q_frames, k_frames, v_frames, frame_context,
                               extra_keys=k_global.repeat_interleave(num_frames, dim=0),
                               extra_values=v_global.repeat_interleave(num_frames, dim=0))

    def per_video(tensor: Tensor) -> Tensor:  # (B*T, h, n, d) -> (B, h, T*n, d)
        _, heads, length, dim = tensor.shape
        return tensor.view(batch_size, num_frames, heads, length, dim).transpose(1, 2).reshape(
            batch_size, heads, num_frames * length, dim)

    global_update = attn.attend(q_global, torch.cat([k_global, per_video(k_frames)], dim=2),
                                torch.cat([v_global, per_video(v_frames)], dim=2), global_context)
    frame_tokens = frame_tokens + frame_update
    global_tokens = global_tokens + global_update
    frame_tokens = frame_tokens + block.mlp(block.ln_2(frame_tokens), frame_context)
    global_tokens = global_tokens + block.mlp(block.ln_2(global_tokens), global_context)
    return global_tokens, frame_tokens


@register_method("dgl", DGLConfig)
class DGL(Method):
    def __init__(self, backbone: CLIP, config: DGLConfig):
        super().__init__(backbone, config)
        self.head = build_head(config.sim_header, backbone)
        vision, text = backbone.config.vision, backbone.config.text
        layers = max(vision.layers, text.layers)
        if config.shared_latent_space == "transformer":
            self.latent = TransformerLatentSpace(layers, config.text_prompts, config.local_prompts, config.num_frames,
                                                 vision.width, text.width)
        else:
            self.latent = LinearLatentSpace(layers, config.local_prompts, vision.width, text.width, vision.patch_size)
        global_prompts = _uniform_prompts((config.global_prompts, vision.width), vision.patch_size, vision.width)
        if config.global_prompt_init == "cls":
            tower = backbone.visual
            with torch.no_grad():
                cls = tower.ln_pre(tower.class_embedding.float() + tower.positional_embedding[0].float())
            global_prompts = global_prompts.to(cls.device) + cls
        self.global_prompts = nn.Parameter(global_prompts)
        self._cache: tuple[tuple, tuple[Tensor, Tensor]] | None = None

    def prompts(self) -> tuple[Tensor, Tensor]:
        """Text prompts (layers, n_text, W_t) and frame prompts (layers, slots, local, W_v). They depend on no input,
        so outside training (eval mode, no grad) they are computed once and reused until a weight changes."""
        if self.training or torch.is_grad_enabled():
            return self.latent()
        key = tuple((id(p), p._version, p.device, p.dtype) for p in self.latent.parameters())
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.latent())
        return self._cache[1]

    # -- text --
    def text_layout(self, token_ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Where the prompts go in the (B, L + n_text) sequence: ``slot`` (B, L + n_text), the prompt index at prompt
        positions and -1 elsewhere; ``source`` (B, L + n_text), the word position each other position takes; and the
        EOT's new position (B,)."""
        batch_size, length = token_ids.shape
        count, prefix = self.config.text_prompts, self.config.text_prompts // 2
        eot = token_ids.argmax(dim=-1)  # (B,)
        if self.config.postfix_position == "before_eot":
            postfix_start = eot + prefix
        else:
            postfix_start = torch.full_like(eot, length + prefix)
        position = torch.arange(length + count, device=token_ids.device).expand(batch_size, -1)
        start = postfix_start[:, None]
        is_prefix = (position >= 1) & (position <= prefix)
        is_postfix = (position >= start) & (position < start + count - prefix)
        slot = torch.where(is_prefix, position - 1, torch.where(is_postfix, position - start + prefix, -1))
        source = torch.where(position == 0, 0, torch.where(position < start, position - prefix, position - count))
        source = torch.where(slot >= 0, 0, source)
        new_eot = torch.where(eot + prefix < postfix_start, eot + prefix, eot + count)
        return slot, source, new_eot

    def encode_text(self, backbone: CLIP, token_ids: Tensor, token_mask: Tensor) -> Tensor:
        """(B, L) -> (B, D): deep prefix/postfix prompts, replaced before every block, no positional embedding."""
        tower = backbone.text
        text_prompts = self.prompts()[0]
        context = tower.make_context(token_ids, token_mask)
        slot, source, context.pool_index = self.text_layout(token_ids)
        is_prompt = (slot >= 0)[..., None]
        slot = slot.clamp(min=0)
        words = tower.embed(token_ids)  # (B, L, W_t), positions added
        x = words.gather(1, source[..., None].expand(-1, -1, words.shape[-1]))
        context.token_mask = context.token_mask.gather(1, source) | is_prompt[..., 0]
        for layer, block in enumerate(tower.transformer.resblocks):
            x = torch.where(is_prompt, text_prompts[layer].to(x.dtype)[slot], x)
            x = block(x, context)
        return tower.pool(x, context.pool_index)

    # -- video --
    def encode_video_tokens(self, backbone: CLIP, frames: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T, 3, H, W), (B, T) -> the last block's global tokens (B, G, W) and frame tokens (B, T, 1+k+N, W)."""
        visual = backbone.visual
        batch_size, num_frames = frames.shape[:2]
        frame_prompts = self.prompts()[1]  # (layers, slots, k, W)
        slots = frame_prompts.shape[1]
        if slots > 1:
            if num_frames > slots:
                raise ValueError(f"dgl (transformer) has frame prompts for {slots} frames (num_frames), got videos "
                                 f"of {num_frames} frames")
            frame_prompts = frame_prompts[:, :num_frames]
        frame_mask = frame_mask.bool()
        frames = frames.masked_fill(~frame_mask[:, :, None, None, None], 0)  # padded frames stay finite and unseen
        context = visual.make_context(batch_size, num_frames, frame_mask)
        x = visual.embed(frames.flatten(0, 1), context)  # (B*T, 1+N, W)
        local = self.config.local_prompts

        def with_prompts(tokens: Tensor, layer: int, keep_from: int) -> Tensor:
            prompts = frame_prompts[layer].to(tokens.dtype).expand(batch_size, num_frames, -1, -1).flatten(0, 1)
            return torch.cat([tokens[:, :1], prompts, tokens[:, keep_from:]], dim=1)

        x = with_prompts(x, 0, 1)  # (B*T, 1+k+N, W)
        g = self.global_prompts.to(x.dtype).expand(batch_size, -1, -1)
        valid_keys = None
        if not frame_mask.all():
            valid_keys = torch.cat([frame_mask.new_ones(batch_size, g.shape[1]),
                                    frame_mask.repeat_interleave(x.shape[1], dim=1)], dim=1)
        global_context = TowerContext("vision", batch_size, num_frames, frame_mask=frame_mask,
                                      key_padding_mask=valid_keys)
        for layer, block in enumerate(visual.transformer.resblocks):
            if layer > 0:
                x = with_prompts(x, layer, 1 + local)
            g, x = global_local_block(block, g, x, num_frames, context, global_context)
        return g, x.view(batch_size, num_frames, *x.shape[1:])

    def encode_video(self, backbone: CLIP, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """(B, T, 3, H, W), (B, T) -> (B, T, D): the video embedding (the first global prompt through ``ln_post`` and
        ``proj``) in every frame slot, so meanP returns it as it is."""
        global_tokens, _ = self.encode_video_tokens(backbone, frames, frame_mask)
        video = backbone.visual.pool(global_tokens)  # ln_post, token 0, proj: (B, D)
        return video[:, None].expand(-1, frames.shape[1], -1)
