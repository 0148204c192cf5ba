"""MV-Adapter (Jin et al., CVPR 2024): multi-modal video adapters after the MLP of every block of both towers.

Each adapted block computes ``y = x + attn(ln_1 x)``, ``f = mlp(ln_2 y)``, ``out = y + f + A(f)`` (Eq. 1), with
``A`` a bottleneck ``Down -> transformer at width d' = 64 (TRM) -> Up`` scaled by ``s = 0.1``:

- **video branch** (``VideoAdapter``, §3.3, Alg. 1): every token is down-projected (QuickGELU); per video the
  sequence ``[CC] + frame CLS tokens + per-frame patch means`` (2T + 1 tokens, learned positions, LayerNorm) goes
  through one TRM block with padded frames masked as keys; each frame's CLS is up-projected with weights calibrated
  per frame (Eq. 2-3, ``TemporalCalibration``); patches take a plain bottleneck from their pre-TRM features;
- **text branch** (``TextAdapter``): down-projection (no activation), learned positions, LayerNorm, one causal TRM
  block, QuickGELU, up-projection;
- **cross-modality tying** (CMT, §3.4, Eq. 4): in the tied layers one factor ``f_C`` (d_m = 32) is shared by both
  towers; each tower's projection ``M_S`` turns it into ``beta``, which rescales Down's input channels (Down-In, the
  paper's default), Down's outputs (Down-Out), Up's inputs (Up-In) or Up's outputs (Up-Out). The factors live in the
  method (``method.tying_factors``), so an adapter file holds each once; the projections live in the adapters.

Up is zero-initialised, so the model starts as the frozen CLIP (``identity_at_init``). Frames are scored with
CLIP4Clip's meanP; the logit scale and the projections stay frozen. 3,401,728 trained weights by default (12 frames,
32 words, CMT Down-In on the last 2 layers); patch size does not enter, so ViT-B/16 and ViT-B/32 count the same.
``train_backbone_biases`` adds every CLIP bias (171,008), as the released configs train them; the paper's
"tunable %" counts them. They are backbone weights in the ``"backbone"`` learning-rate group (``lr * coef_lr``): the
code trains them at 1e-7 beside the adapters' 5e-6 (the recipes set ``coef_lr = 0.02``).

Paper vs code (reference §1.7); the default follows the first named, a flag gives the other:

- CMT position: the paper's Down-In (its MSR-VTT and DiDeMo percentages fit it); the released MSR-VTT and DiDeMo
  configs use Down-Out (``tying_position="down_out"``). CMT layers: the paper's last 2 (``tying_layers``); the
  LSMDC and ActivityNet recipes use the last 3 and the last 1, as the code and the paper's percentages do.
- Calibration ``alpha = 1 + FC2(ReLU(FC1([c^ + p^ ; G g] * m)))``: the code's form (the ``+ 1`` with FC2 zeroed, so
  alpha starts at 1; the frame mask ``m``; the Linear ``G`` on the [CC] output). Without ``G``
  (``calibration_cc_projection=False``) it is the paper's Eq. 2; ``calibration=False`` is the "+TRM" ablation.
- The code's input LayerNorm (``lnin``, its ActivityNet config only, not in the paper): ``input_norm=True``.
- Biases: the paper tunes only the new modules; the code also trains CLIP's biases: ``train_backbone_biases``.
- Follows the code, no flag: the initialisation (video Down Kaiming-uniform, text Down N(0, (2W)^-1/2), Up zero,
  TRM in-proj N(0, W^-1/2) and out-proj / MLP N(0, (2W)^-1/2) with W the *tower's* width, positions N(0, 0.01),
  [CC] N(0, 1/d'), CMT factors zero with PyTorch's default Linear projections, so beta starts near +-0.18, not 1);
  under Up-In / Up-Out the video branch rescales the CLS tokens' Up only (its patches use the plain Up); patch
  summaries are means (the released configs' ``pca=False``). The calibration's hidden width is d'/4 (the paper's
  shrinkage 4; the code fixes 16, the same at d' = 64).
- Not copied: the code stores the adapters in fp16 and updates them without master weights; here new weights stay
  float32 under every precision (``Method.store_weights``).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbone import CLIP, ResidualBlock, TowerContext
from ..backbone.blocks import LayerNorm, QuickGELU
from .base import Method, WrappingConfig, option, register_method
from .heads import build_head
from .wrapping import Borrowed, Wrapper, WrapSite, check_towers, resolve_layers, wrap_modules

TYING_POSITIONS = ("down_in", "down_out", "up_in", "up_out")


@dataclass
class MVAdapterConfig(WrappingConfig):
    """MV-Adapter's options; ``towers`` and ``layers`` (every block by default) choose the adapted blocks."""

    bottleneck_width: int = option(64, "d', the adapters' hidden width and that of their TRM block (the paper's "
                                       "ViT-L/14 ablation uses 128)", ">= 4, divisible by num_heads")
    num_heads: int = option(2, "attention heads of each adapter's TRM block", ">= 1, dividing bottleneck_width")
    scale: float = option(0.1, "s, the factor on each adapter's output A(f)")
    max_frames: int = option(12, "frames the video adapters' positional tables hold (2 max_frames + 1 rows); at "
                                 "least the recipe's frames (the trainable count depends on it)", ">= 1")
    max_words: int = option(32, "tokens the text adapters' positional tables hold; at least the recipe's words (the "
                                "trainable count depends on it)", ">= 2")
    calibration: bool = option(True, "per-frame calibration of the CLS tokens' Up (Eq. 2-3); False: the paper's "
                                     "\"+TRM\" ablation")
    calibration_cc_projection: bool = option(True, "the code's Linear G on the [CC] output in the calibration; False: "
                                                   "the paper's Eq. 2")
    tying_layers: tuple[int, ...] = option(
        (-2, -1), "the blocks of both towers joined by cross-modality tying (CMT), one shared factor per vision / text "
        "pair; () turns CMT off", "() or block indices (negative from the end) among the adapted layers, naming as "
        "many vision as text blocks (both towers adapted)")
    tying_position: str = option(
        "down_in", "what CMT's beta rescales: Down's inputs (the paper), Down's outputs (the released MSR-VTT / DiDeMo "
        "configs), Up's inputs or Up's outputs", TYING_POSITIONS)
    factor_dim: int = option(32, "d_m, the width of each shared CMT factor", ">= 1")
    input_norm: bool = option(False, "a LayerNorm on each adapter's input (the code's lnin, its ActivityNet config)")
    train_backbone_biases: bool = option(
        False, "also train every CLIP bias (171,008 on ViT-B), at the backbone rate lr * coef_lr, as the released "
        "configs")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.tying_layers = tuple(self.tying_layers)
        problems = []
        if self.tying_position not in TYING_POSITIONS:
            problems.append(f"tying_position must be one of {TYING_POSITIONS}, got {self.tying_position!r}")
        if self.bottleneck_width < 4 or self.bottleneck_width % self.num_heads:
            problems.append(f"bottleneck_width ({self.bottleneck_width}) must be at least 4 and divisible by "
                            f"num_heads ({self.num_heads})")
        if self.max_frames < 1 or self.max_words < 2:
            problems.append(f"max_frames must be >= 1 and max_words >= 2, got {self.max_frames} and {self.max_words}")
        if self.factor_dim < 1:
            problems.append(f"factor_dim must be positive, got {self.factor_dim}")
        if problems:
            raise ValueError("mv_adapter: " + "; ".join(problems))


class CrossModalTying(nn.Module):
    """One tower's projection ``M_S`` of one tied layer: ``beta = M_S(f_C)``, (d_m,) -> (width,).

    The shared factor ``f_C`` belongs to the method (``factors[index]``); it is held here outside the module tree, so
    it is saved once and both towers train the same tensor.
    """

    def __init__(self, factors: nn.ParameterList, index: int, width: int):
        super().__init__()
        self.projection = nn.Linear(factors[index].shape[0], width)  # PyTorch's default init, as the code
        self.factors = Borrowed(factors)  # registered once, by the method
        self.index = index

    def forward(self) -> Tensor:
        return self.projection(self.factors.module[self.index])


class TemporalCalibration(nn.Module):
    """Per-frame scales of Up's input channels (Eq. 2, the code's form):
    ``alpha = 1 + FC2(ReLU(FC1([local ; G global] * m)))``, (B, d), (B, T, d), (B, T) -> (B, T, d); FC2 is zero at
    initialisation, so alpha starts at 1."""

    def __init__(self, width: int, cc_projection: bool):
        super().__init__()
        self.cc_projection = nn.Linear(width, width) if cc_projection else nn.Identity()  # the code's G
        self.fc1 = nn.Linear(2 * width, width // 4)
        self.fc2 = nn.Linear(width // 4, width, bias=False)
        nn.init.zeros_(self.fc2.weight)

    def forward(self, global_token: Tensor, local_tokens: Tensor, frame_mask: Tensor) -> Tensor:
        global_tokens = self.cc_projection(global_token)[:, None].expand_as(local_tokens)
        features = torch.cat([local_tokens, global_tokens], dim=-1)
        features = torch.where(frame_mask[..., None], features, features.new_zeros(()))
        return 1 + self.fc2(F.relu(self.fc1(features)))


class BottleneckAdapter(nn.Module):
    """What both branches share: Down, Up, a learned positional table, LayerNorm, one TRM block at width d', the
    optional input LayerNorm and CMT; ``forward(f, context)`` gives ``A(f)``, already scaled."""

    def __init__(self, width: int, positions: int, config: MVAdapterConfig, tying: CrossModalTying | None):
        super().__init__()
        d = config.bottleneck_width
        self.scale = config.scale
        self.input_norm = LayerNorm(width) if config.input_norm else None
        self.down = nn.Linear(width, d)
        self.up = nn.Linear(d, width)
        self.positional_embedding = nn.Parameter(torch.empty(positions, d))
        self.ln_pre = LayerNorm(d)
        self.temporal = ResidualBlock(d, config.num_heads, 4.0, quick_gelu=True)
        self.activation = QuickGELU()
        self.tying = tying
        self.tying_position = config.tying_position
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        nn.init.normal_(self.positional_embedding, std=0.01)
        # the TRM at the *tower's* width W, as the code (attention std W^-1/2, out-proj and MLP (2W)^-1/2)
        nn.init.normal_(self.temporal.attn.in_proj_weight, std=width**-0.5)
        nn.init.zeros_(self.temporal.attn.out_proj.bias)  # nn.MultiheadAttention's
        temporal = self.temporal
        for weight in (temporal.attn.out_proj.weight, temporal.mlp.c_fc.weight, temporal.mlp.c_proj.weight):
            nn.init.normal_(weight, std=(2 * width) ** -0.5)

    def _tied(self, weight: Tensor, stage: str) -> Tensor:
        """``weight`` rescaled by CMT's beta when this layer is tied at ``stage`` ("down" / "up"); weights are
        (out, in): "_in" scales columns, "_out" rows; biases are never rescaled."""
        if self.tying is None or not self.tying_position.startswith(stage):
            return weight
        beta = self.tying()
        return weight * beta if self.tying_position.endswith("_in") else weight * beta[:, None]

    def down_projection(self, f: Tensor) -> Tensor:
        if self.input_norm is not None:
            f = self.input_norm(f)
        return F.linear(f, self._tied(self.down.weight, "down"), self.down.bias)

    def check_length(self, length: int, what: str, limit: int, option: str) -> None:
        if length > limit:
            raise ValueError(f"mv_adapter: {length} {what} exceed its positional table of {limit} "
                             f"(set method.{option} to at least {length})")


class VideoAdapter(BottleneckAdapter):
    """The video branch of one vision block: FFN output (B*T, 1+N, W) -> A(f) (B*T, 1+N, W)."""

    def __init__(self, width: int, config: MVAdapterConfig, tying: CrossModalTying | None):
        super().__init__(width, 2 * config.max_frames + 1, config, tying)
        self.max_frames = config.max_frames
        d = config.bottleneck_width
        self.cc_token = nn.Parameter(torch.randn(d) * d**-0.5)  # [CC], the class token of class tokens
        self.calibration = TemporalCalibration(d, config.calibration_cc_projection) if config.calibration else None
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)

    def forward(self, f: Tensor, context: TowerContext) -> Tensor:
        batch_size, num_frames = context.batch_size, context.num_frames
        self.check_length(num_frames, "frames", self.max_frames, "max_frames")
        frame_mask = context.frame_mask
        if frame_mask is None:
            frame_mask = torch.ones(batch_size, num_frames, dtype=torch.bool, device=f.device)
        frame_mask = frame_mask.bool()
        tokens = self.activation(self.down_projection(f))  # (B*T, 1+N, d)
        tokens = tokens.view(batch_size, num_frames, *tokens.shape[1:])
        cls, patches = tokens[:, :, 0], tokens[:, :, 1:]  # (B, T, d), (B, T, N, d)

        cc = self.cc_token.to(tokens.dtype).expand(batch_size, 1, -1)
        sequence = torch.cat([cc, cls, patches.mean(dim=2)], dim=1)  # (B, 2T+1, d)
        sequence = self.ln_pre(sequence + self.positional_embedding[: 2 * num_frames + 1])
        valid = torch.cat([frame_mask.new_ones(batch_size, 1), frame_mask, frame_mask], dim=1)  # (B, 2T+1)
        sequence = torch.where(valid[..., None], sequence, sequence.new_zeros(()))  # padding can hold anything
        temporal_context = TowerContext("video", batch_size, num_frames, frame_mask=frame_mask, key_padding_mask=valid)
        sequence = self.activation(self.temporal(sequence, temporal_context))
        global_token, cls_temporal = sequence[:, 0], sequence[:, 1: num_frames + 1]
        patch_temporal = sequence[:, num_frames + 1:]

        if self.calibration is not None:  # alpha * c^ through Up == c^ through Up with per-frame scaled weights
            cls_temporal = self.calibration(global_token, cls_temporal + patch_temporal, frame_mask) * cls_temporal
        cls_up = F.linear(cls_temporal, self._tied(self.up.weight, "up"), self.up.bias)  # (B, T, W)
        patch_up = self.up(patches)  # (B, T, N, W): pre-TRM patch features, plain bottleneck
        return self.scale * torch.cat([cls_up[:, :, None], patch_up], dim=2).flatten(0, 1)


class TextAdapter(BottleneckAdapter):
    """The text branch of one text block: FFN output (B, L, W) -> A(f) (B, L, W), causal over the tokens."""

    def __init__(self, width: int, config: MVAdapterConfig, tying: CrossModalTying | None):
        super().__init__(width, config.max_words, config, tying)
        self.max_words = config.max_words
        nn.init.normal_(self.down.weight, std=(2 * width) ** -0.5)

    def forward(self, f: Tensor, context: TowerContext) -> Tensor:
        batch_size, length = f.shape[:2]
        self.check_length(length, "tokens", self.max_words, "max_words")
        tokens = self.ln_pre(self.down_projection(f) + self.positional_embedding[:length])  # (B, L, d)
        tokens = self.activation(self.temporal(tokens, TowerContext("text", batch_size, causal=True)))
        return self.scale * F.linear(tokens, self._tied(self.up.weight, "up"), self.up.bias)


class AdaptedMlp(Wrapper):
    """``f = mlp(x)``, then ``f + A(f)``: the adapter sits after the frozen MLP (sequential, Eq. 1), in its own
    weights' dtype."""

    def __init__(self, base_layer: nn.Module, adapter: BottleneckAdapter):
        super().__init__(base_layer)
        self.adapter = adapter

    def forward(self, x: Tensor, context: TowerContext) -> Tensor:
        f = self.base_layer(x, context)
        return f + self.in_own_dtype(self.adapter, f, context)


@register_method("mv_adapter", MVAdapterConfig)
class MVAdapter(Method):
    def __init__(self, backbone: CLIP, config: MVAdapterConfig):
        super().__init__(backbone, config)
        self.head = build_head(config.sim_header, backbone)  # before wrapping: heads may copy plain text blocks
        towers = check_towers(config.towers)
        tied = self._tied_layers(backbone, towers)
        self.tying_factors = nn.ParameterList(
            nn.Parameter(torch.zeros(config.factor_dim)) for _ in tied.get("vision", ()))

        def adapt(original: nn.Module, site: WrapSite) -> AdaptedMlp:
            tying = None
            if site.layer in tied.get(site.tower, ()):
                scales_tower_width = config.tying_position in ("down_in", "up_out")
                width = site.width if scales_tower_width else config.bottleneck_width
                tying = CrossModalTying(self.tying_factors, tied[site.tower].index(site.layer), width)
            branch = VideoAdapter if site.tower == "vision" else TextAdapter
            return AdaptedMlp(original, branch(site.width, config, tying))

        wrap_modules(backbone, adapt, towers=towers, layers=config.layers, targets=("mlp",))

    def _tied_layers(self, backbone: CLIP, towers: tuple[str, ...]) -> dict[str, list[int]]:
        """Each tower's tied block indices (the k-th of each tower shares factor k); checked to be adapted blocks."""
        if not self.config.tying_layers:
            return {}
        if set(towers) != {"vision", "text"}:
            raise ValueError(f"mv_adapter: cross-modality tying needs both towers, got towers={list(towers)}; set "
                             "tying_layers=[] to adapt one tower")
        tied = {}
        for tower, module in (("vision", backbone.visual), ("text", backbone.text)):
            depth = len(module.transformer.resblocks)
            tied[tower] = resolve_layers(self.config.tying_layers, depth, tower)
            untouched = sorted(set(tied[tower]) - set(resolve_layers(self.config.layers, depth, tower)))
            if untouched:
                raise ValueError(f"mv_adapter: tying_layers name {tower} block(s) {untouched}, which are not adapted "
                                 f"(layers={self.config.layers})")
        if len(tied["vision"]) != len(tied["text"]):
            raise ValueError(f"mv_adapter: tying_layers {list(self.config.tying_layers)} name {len(tied['vision'])} "
                             f"vision and {len(tied['text'])} text blocks; each factor ties one block of each tower")
        return tied

    def backbone_parameters_to_train(self, names: Sequence[str]) -> Iterable[str]:
        """Every CLIP bias (``*.bias``, ``in_proj_bias``) with ``train_backbone_biases``, as the released code."""
        if not self.config.train_backbone_biases:
            return ()
        return [name for name in names if name.endswith("bias")]

    @property
    def identity_at_init(self) -> bool:
        return True  # Up is zero, so every A(f) is exactly 0
