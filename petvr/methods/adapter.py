"""Bottleneck adapters on the frozen blocks: Houlsby-style and AdaptFormer.

An adapter is ``A(h) = s * up(dropout(act(down(h))))`` with ``down: W -> bottleneck`` and ``up: bottleneck -> W``,
wrapped around a block's ``attn`` or ``mlp`` in one of three variants (``variant``):

- ``"houlsby"`` (Houlsby et al. 2019): sequential adapters after the attention and after the MLP of every chosen
  block, ``y = f(x); y + A(y)``, before the block's residual add; GELU, no scale (s = 1).
- ``"adaptformer_sequential"`` (Chen et al. 2022, ``ffn_option="sequential"``): one sequential adapter on the MLP.
- ``"adaptformer_parallel"`` (AdaptFormer's default, ``ffn_option="parallel"``): ``f(x) + A(x)`` on the MLP; ReLU,
  s = 0.1 (AdaptFormer's video setting), bottleneck 64.

Choices and where they come from:

- Initialisation is AdaptFormer's ``init_option="lora"`` for every variant: ``down`` as ``nn.Linear`` (Kaiming-uniform,
  a = sqrt 5), ``up`` and both biases zero, so each adapter adds exactly 0 and the model starts as the frozen backbone.
  Houlsby's own code draws both projections near zero (std 1e-3) instead; we keep the exact identity.
- The parallel adapter reads the MLP's input, ``ln_2(x)``: a wrapper of ``block.mlp`` sees nothing else. AdaptFormer's
  code feeds it the residual stream before ``ln_2`` (its ``adapter_layernorm_option="none"``); ours is MV-Adapter's
  ``ln_par`` form (its ``modules/adapter/base.py``), or AdaptFormer's ``"in"`` option with the frozen ``ln_2`` as the
  input LayerNorm.
- ``scale`` and ``activation`` left unset take the variant's own (1.0 and GELU for Houlsby, 0.1 and ReLU for
  AdaptFormer); ``dropout`` (after the activation, as AdaptFormer) is 0 as in AdaptFormer's video models.
- Houlsby et al. also train the LayerNorms; we train the adapters only, as the adapter baselines of Cross-Modal
  Adapter v2 (AdaptFormer 2.0M) and MV-Adapter do.
- Both towers get adapters by default: MV-Adapter gives every visual adapter baseline a text adapter too.

Trainable on ViT-B/32 and ViT-B/16 (the widths are the same): a width-W adapter with bottleneck b has 2Wb + b + W
weights: 99,136 in the vision tower, 66,112 in the text tower (b = 64); AdaptFormer 12 x (99,136 + 66,112) =
1,982,976 (Cross-Modal Adapter v2's "AdaptFormer 2.0M"), Houlsby twice that, 3,965,952.

``Bottleneck`` also serves LoRA (``lora.py``): without activation and biases it is LoRA's ``B A x * alpha / r``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..backbone import CLIP, TowerContext
from ..backbone.blocks import QuickGELU
from .base import Method, WrappingConfig, option, register_method
from .heads import build_head
from .wrapping import Wrapper, wrap_modules

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "quick_gelu": QuickGELU}


@dataclass(frozen=True)
class Variant:
    targets: tuple[str, ...]  # wrapped sub-modules of each block
    parallel: bool  # A reads the wrapped module's input (True) or its output (False)
    scale: float
    activation: str


VARIANTS = {
    "houlsby": Variant(("attn", "mlp"), parallel=False, scale=1.0, activation="gelu"),
    "adaptformer_parallel": Variant(("mlp",), parallel=True, scale=0.1, activation="relu"),
    "adaptformer_sequential": Variant(("mlp",), parallel=False, scale=0.1, activation="relu"),
}


@dataclass
class AdapterConfig(WrappingConfig):
    """``scale`` and ``activation`` left None take the variant's own."""

    variant: str = option(
        "houlsby", "where the adapters go: houlsby after the attention and after the MLP (y + A(y)); "
        "adaptformer_parallel beside the MLP (f(x) + A(x)); adaptformer_sequential after the MLP", tuple(VARIANTS))
    bottleneck: int = option(64, "the adapter's hidden width", ">= 1")
    scale: float | None = option(None, "s, the factor on the adapter's output; None: the variant's own (houlsby 1.0, "
                                       "adaptformer 0.1)", "a number or None")
    activation: str | None = option(None, "the adapter's activation; None: the variant's own (houlsby gelu, "
                                          "adaptformer relu)", (*ACTIVATIONS, None))
    dropout: float = option(0.0, "dropout after the activation", "[0, 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in VARIANTS:
            raise ValueError(f"adapter variant must be one of {sorted(VARIANTS)}, got {self.variant!r}")
        if self.bottleneck < 1:
            raise ValueError(f"adapter bottleneck must be at least 1, got {self.bottleneck}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"adapter dropout must be in [0, 1), got {self.dropout}")
        variant = VARIANTS[self.variant]
        self.scale = variant.scale if self.scale is None else self.scale
        self.activation = variant.activation if self.activation is None else self.activation
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"adapter activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")


class Bottleneck(nn.Module):
    """``scale * up(dropout(activation(down(x))))``: (..., in_features) -> (..., out_features).

    ``down`` keeps ``nn.Linear``'s Kaiming-uniform initialisation (AdaptFormer's "lora" init, peft's LoRA A); ``up``
    and the biases start at zero, so the output is exactly 0 at initialisation.
    """

    def __init__(self, in_features: int, hidden: int, out_features: int | None = None, *,
                 activation: nn.Module | None = None, bias: bool = True, dropout: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.down = nn.Linear(in_features, hidden, bias=bias)
        self.activation = activation if activation is not None else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(hidden, out_features or in_features, bias=bias)
        self.scale = scale
        nn.init.zeros_(self.up.weight)
        if bias:
            nn.init.zeros_(self.down.bias)
            nn.init.zeros_(self.up.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.dropout(self.activation(self.down(x)))) * self.scale


class AdapterWrapper(Wrapper):
    """A block's ``attn`` or ``mlp`` with an adapter: sequential ``y + A(y)`` with ``y = f(x)``, or parallel
    ``f(x) + A(x)``. (N, L, W) -> (N, L, W); the adapter runs in its own dtype (fp32 beside fp16 backbone weights)."""

    def __init__(self, base_layer: nn.Module, adapter: Bottleneck, parallel: bool):
        super().__init__(base_layer)
        self.adapter = adapter
        self.parallel = parallel

    def forward(self, x: Tensor, context: TowerContext) -> Tensor:
        y = self.base_layer(x, context)
        return y + self.in_own_dtype(self.adapter, x if self.parallel else y)


@register_method("adapter", AdapterConfig)
class BottleneckAdapter(Method):
    def __init__(self, backbone: CLIP, config: AdapterConfig):
        super().__init__(backbone, config)
        self.head = build_head(config.sim_header, backbone)  # before wrapping: heads copy the plain text blocks
        variant = VARIANTS[config.variant]

        def make_adapter(original: nn.Module, site) -> AdapterWrapper:
            adapter = Bottleneck(site.width, config.bottleneck, activation=ACTIVATIONS[config.activation](),
                                 dropout=config.dropout, scale=config.scale)
            return AdapterWrapper(original, adapter, variant.parallel)

        wrap_modules(backbone, make_adapter, towers=config.towers, layers=config.layers, targets=variant.targets)

    @property
    def identity_at_init(self) -> bool:
        return True  # every up-projection starts at zero

