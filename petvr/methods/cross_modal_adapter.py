"""Cross-Modal Adapter (Jiang et al. 2022, arXiv 2211.09623; reference §2): bottleneck adapters in both towers whose
up-projections share a slice across the two modalities, and frames pooled by query scoring.

Every block of both towers gets two adapters, on the output of MHSA and on the output of the MLP, before the block's
residual add (Houlsby-style sequential):

    y = x + A_attn(MHSA(ln_1 x)),   out = y + A_mlp(MLP(ln_2 y)),   A(h) = h + u(h)
    z = dropout(QuickGELU(h W_down + b_down))                            (N, L, W) -> (N, L, r)
    u = [z W_unique + b_unique ; z W_shared + b_shared]                  (N, L, r) -> (N, L, W - d_s) ; (N, L, d_s)

``W_shared`` (r x d_s) and ``b_shared`` (d_s) are one ``nn.Linear`` per (block index, sub-layer), used by the vision
adapter and the text adapter at that place: it gets gradient from both towers and writes the last ``d_s`` channels
of both residual streams (the paper's early cross-modal interaction; there is no feature exchange, so each video and
each caption is still encoded alone). The shared dimensions (r in, d_s out) do not depend on the tower's width, so
towers of different widths share it (ViT-B/32: vision 768, text 512). Down-projections and unique up-projections are
per tower; with ``shared_dim`` equal to a tower's width (ActivityNet: d_s = 512 = text width) that tower's
up-projection is entirely shared, and ``shared_dim=0`` is the plain adapter without sharing (the paper's Table 2
ablation). Where only one tower has a block of that index (``towers=("vision",)``, or a vision tower deeper than the
text tower, as ViT-L/14's 24 vs 12 blocks, which the released code cannot run), the slice is that adapter's alone.

The shared layers live in this method (``shared_up.<sub-layer>.<block>``, as the code keeps its shared bank outside
both towers); the wrappers hold an unregistered reference to them, so ``named_parameters``, ``state_dict`` and the
adapter file hold each shared tensor once, under one name.

Paper vs code (reference §2.10). The defaults follow the released code where the two differ:

- initialisation: truncated normal with std 0.01 (``init_std``; the paper's N(0, 0.01) is the same in effect) for
  down- and up-projections, zero biases. The up-projection is not zero, so the method is only approximately the
  identity at initialisation; ``zero_init_up=True`` (neither paper nor code) makes it exact.
- dropout after the activation: 0 (the code's default; the paper says dropout helps but gives no rate): ``dropout``.
- frame pooling: query scoring, softmax(<t, f_j> / 5) over raw features (``sim_header="query_scoring"``; the code's
  command line says meanP but its default ``q_score=1`` replaces it); ``sim_header="meanP"`` is the literal flag.
- precision: the code stores the adapters in fp16 (no master weights). We keep them in float32 by default (an fp16
  step of 1e-5 on a weight of 0.01 is about one ulp, reference §2.5); ``fp16_adapters=True`` stores them in fp16 when
  the trainer stores weights (the code's mode together with ``train.precision = "fp16-weights"``).
- optimizer (Adam in the paper, BertAdam in the code), lr and schedule are the recipes' business
  (``recipes/<dataset>/cross_modal_adapter.toml``).

Everything of the backbone stays frozen, the logit scale included (s = 100 for OpenAI's weights). Trainable counts
on ViT-B/32 and ViT-B/16 (same widths): MSR-VTT (r=8, d_s=16) 519,168; DiDeMo (8, 8) 520,896; MSVD (16, 16)
1,008,000; VATEX (16, 64) 988,416; ActivityNet (16, 512) 805,632 (reference §2.4).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..backbone import CLIP, TowerContext
from ..backbone.blocks import QuickGELU
from .base import Method, WrappingConfig, option, register_method
from .heads import build_head, list_heads
from .wrapping import TOWERS, Borrowed, Wrapper, WrapSite, check_towers, wrap_modules

TARGETS = ("attn", "mlp")  # after MHSA and after the MLP of each wrapped block


@dataclass
class CrossModalAdapterConfig(WrappingConfig):
    """Defaults: the MSR-VTT setting of the paper and the released code (r = 8, d_s = 16). Per dataset (paper §4):
    DiDeMo (8, 8), MSVD (16, 16), VATEX (16, 64), ActivityNet (16, 512)."""

    sim_header: str = option(
        "query_scoring", "the similarity head; query_scoring is what the released code runs (its default "
        "q_score=1), meanP its command line's literal flag", list_heads)
    bottleneck_dim: int = option(8, "r, each adapter's hidden width (the code's --adapter_reduction_dims)", ">= 1")
    shared_dim: int = option(
        16, "d_s, the output channels of each up-projection shared by the two towers (--adapter_share_dim); 0: no "
        "sharing", "0 .. the narrowest adapted tower's width (512 on ViT-B with the text tower)")
    dropout: float = option(0.0, "dropout after the activation (--adapter_dropout)", "[0, 1)")
    init_std: float = option(0.01, "the std of the truncated normal that initialises the down- and up-projection "
                                   "weights (--adapter_init_std)", "> 0")
    zero_init_up: bool = option(False, "zero up-projections, so the model starts exactly as the frozen backbone "
                                       "(neither paper nor code)")
    fp16_adapters: bool = option(False, "store the adapters in fp16 when the trainer stores weights, as the released "
                                        "code (with train.precision = \"fp16-weights\"); False: float32")


class Bottleneck(nn.Module):
    """u(h) = [z W_unique + b_unique ; shared(z)], z = dropout(QuickGELU(h W_down + b_down)): (N, L, W) -> (N, L, W).

    ``shared`` (r -> d_s) is owned elsewhere (the method) and used by the other tower's adapter too, so it is held
    without being registered here; its output fills the last d_s channels.
    """

    def __init__(self, width: int, bottleneck_dim: int, shared: nn.Linear | None, dropout: float):
        super().__init__()
        shared_dim = shared.out_features if shared is not None else 0
        self.down = nn.Linear(width, bottleneck_dim)
        self.activation = QuickGELU()
        self.dropout = nn.Dropout(dropout)
        self.up_unique = nn.Linear(bottleneck_dim, width - shared_dim) if width > shared_dim else None
        self.borrowed_shared = Borrowed(shared) if shared is not None else None  # registered once, by the method

    @property
    def shared(self) -> nn.Linear | None:
        return self.borrowed_shared.module if self.borrowed_shared is not None else None

    def forward(self, hidden: Tensor) -> Tensor:
        z = self.dropout(self.activation(self.down(hidden)))  # (N, L, r)
        parts = [layer(z) for layer in (self.up_unique, self.shared) if layer is not None]
        return torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]

    def extra_repr(self) -> str:
        return f"shared={self.shared}"


class CrossModalAdapterWrapper(Wrapper):
    """Wraps a block's ``attn`` or ``mlp``: h = base_layer(x), returns h + u(h) (the block adds its residual)."""

    def __init__(self, base_layer: nn.Module, adapter: Bottleneck):
        super().__init__(base_layer)
        self.adapter = adapter

    def forward(self, x: Tensor, context: TowerContext) -> Tensor:
        hidden = self.base_layer(x, context)
        return hidden + self.in_own_dtype(self.adapter, hidden)


@register_method("cross_modal_adapter", CrossModalAdapterConfig)
class CrossModalAdapter(Method):
    def __init__(self, backbone: CLIP, config: CrossModalAdapterConfig):
        super().__init__(backbone, config)
        _check_config(config, backbone)
        self.head = build_head(config.sim_header, backbone)
        # shared_up[target][str(block)]: the r -> d_s layer shared by the towers' adapters at that place.
        self.shared_up = nn.ModuleDict({target: nn.ModuleDict() for target in TARGETS})
        self.adapters: list[Bottleneck] = []  # every per-tower adapter, in wrapping order (not registered twice)
        wrap_modules(backbone, self._wrap, towers=config.towers, layers=config.layers, targets=TARGETS)

    def _wrap(self, original: nn.Module, site: WrapSite) -> CrossModalAdapterWrapper:
        adapter = Bottleneck(site.width, self.config.bottleneck_dim, self._shared_layer(site), self.config.dropout)
        self._initialise(adapter.down, zero=False)
        if adapter.up_unique is not None:
            self._initialise(adapter.up_unique, zero=self.config.zero_init_up)
        self.adapters.append(adapter)
        return CrossModalAdapterWrapper(original, adapter)

    def _shared_layer(self, site: WrapSite) -> nn.Linear | None:
        """The shared layer of (block, sub-layer), created by the first tower that asks for it."""
        if not self.config.shared_dim:
            return None
        bank, key = self.shared_up[site.target], str(site.layer)
        if key not in bank:
            bank[key] = nn.Linear(self.config.bottleneck_dim, self.config.shared_dim)
            self._initialise(bank[key], zero=self.config.zero_init_up)
        return bank[key]

    def _initialise(self, layer: nn.Linear, zero: bool) -> None:
        """The code's init: weights trunc_normal(std=init_std) (cut at +-2, inactive at this std), biases zero."""
        if zero:
            nn.init.zeros_(layer.weight)
        else:
            nn.init.trunc_normal_(layer.weight, std=self.config.init_std)
        nn.init.zeros_(layer.bias)

    @property
    def identity_at_init(self) -> bool:
        return self.config.zero_init_up

    def store_weights(self, backbone: CLIP, precision: str, backbone_weight_ids: set[int]) -> None:
        """The backbone as ``Method.store_weights`` does; the adapters in fp16 when ``fp16_adapters`` (each adapter
        then computes in fp16, ``Wrapper.in_own_dtype``), else float32."""
        super().store_weights(backbone, precision, backbone_weight_ids)
        if self.config.fp16_adapters:
            for module in [*self.adapters, self.shared_up]:
                module.to(torch.float16)


def _check_config(config: CrossModalAdapterConfig, backbone: CLIP) -> None:
    if config.bottleneck_dim < 1:
        raise ValueError(f"bottleneck_dim (r) must be at least 1, got {config.bottleneck_dim}")
    if not 0 <= config.dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {config.dropout}")
    if not config.init_std > 0:
        raise ValueError(f"init_std must be positive, got {config.init_std}")
    for tower in check_towers(config.towers):
        width = getattr(backbone, TOWERS[tower]).transformer.width
        if not 0 <= config.shared_dim <= width:
            raise ValueError(f"shared_dim (d_s) must be in 0..{width}, the {tower} tower's width (the shared "
                             f"channels are part of each adapter's output), got {config.shared_dim}")
