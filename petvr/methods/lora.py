"""LoRA (Hu et al. 2021): low-rank updates of chosen attention and MLP projections of the frozen blocks.

A frozen projection ``W x`` becomes ``W x + (alpha / r) B A x`` with ``A: r x in`` and ``B: out x r``; ``B`` starts
at zero, so the model starts as the frozen backbone, and after training ``W + (alpha / r) B A`` can replace ``W`` (no
extra cost at inference).

Targets (``targets``): the attention's ``q``, ``k``, ``v`` and ``out`` projections and the MLP's ``c_fc`` and
``c_proj``, in the chosen ``towers`` and ``layers``. Defaults follow the LoRA paper's RoBERTa-base setting (its
Table 9): ``q`` and ``v``, r = 8, alpha = 8, in every block; dropout on the branch's input (peft's ``lora_dropout``)
is 0, peft's default. ``A`` keeps ``nn.Linear``'s Kaiming-uniform initialisation, as peft's default.

Why not peft (it is not a dependency): our attention keeps CLIP's fused ``in_proj_weight`` and applies it with
``F.linear`` inside ``Attention.project``, so there is no ``q`` or ``v`` module for peft to target; peft would adapt
``q``, ``k`` and ``v`` together or not at all. ``out_proj``, ``c_fc`` and ``c_proj`` are ``nn.Linear`` and would fit,
but one small wrapper covers them too and keeps one naming and checkpoint scheme. So ``q``/``k``/``v`` add their
low-rank terms between ``project`` and ``attend`` (``LoRAAttention``), the others wrap the linear layer
(``LoRALinear``); both use the adapter file's ``Bottleneck`` without activation and biases as ``B A``.

Trainable on ViT-B/32 and ViT-B/16 (same widths): a width-W target has 2rW weights (r = 8: 12,288 in the vision
tower, 8,192 in the text tower), so q and v in all 24 blocks: 12 x 2 x (12,288 + 8,192) = 491,520.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ..backbone import CLIP, TowerContext
from ..backbone.blocks import Attention
from .adapter import Bottleneck
from .base import Method, WrappingConfig, option, register_method
from .heads import build_head
from .wrapping import Wrapper, WrapSite, wrap_modules

WRAP_TARGET = {"q": "attn", "k": "attn", "v": "attn", "out": "attn.out_proj", "c_fc": "mlp.c_fc",
               "c_proj": "mlp.c_proj"}  # LoRA target -> the sub-module wrap_modules wraps
PROJECTED = ("q", "k", "v")  # the three slices of the fused input projection


@dataclass
class LoRAConfig(WrappingConfig):
    """Defaults: the LoRA paper's RoBERTa-base setting (q and v, r = 8, alpha = 8)."""

    rank: int = option(8, "r, the inner width of each low-rank update B A", ">= 1")
    alpha: float = option(8.0, "the update is scaled by alpha / r")
    dropout: float = option(0.0, "dropout on the input of each low-rank branch (peft's lora_dropout)", "[0, 1)")
    targets: tuple[str, ...] = option(
        ("q", "v"), "the projections that get a low-rank update: the attention's q, k, v and out, the MLP's c_fc and "
        "c_proj", f"a non-empty subset of {tuple(WRAP_TARGET)}")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.targets = tuple(self.targets)
        unknown = [target for target in self.targets if target not in WRAP_TARGET]
        if unknown or not self.targets:
            raise ValueError(f"LoRA targets must be a non-empty subset of {list(WRAP_TARGET)}, "
                             f"got {list(self.targets)}")
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


def low_rank_update(in_features: int, out_features: int, config: LoRAConfig) -> Bottleneck:
    """x -> (alpha / r) B A x: (..., in_features) -> (..., out_features), exactly 0 at initialisation."""
    return Bottleneck(in_features, config.rank, out_features, bias=False, scale=config.alpha / config.rank)


class LoRAAttention(Wrapper):
    """Low-rank terms added to the frozen attention's projected q / k / v (``updates`` keyed "q", "k", "v"), each
    reading its own dropout draw of the input."""

    def __init__(self, base_layer: Attention, updates: dict[str, nn.Module], dropout: float):
        super().__init__(base_layer)
        self.updates = nn.ModuleDict(updates)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: TowerContext) -> Tensor:
        """(N, L, W) -> (N, L, W): q, k, v from ``project``, each target plus its update split into heads, then
        ``attend``."""
        projected = dict(zip(PROJECTED, self.base_layer.project(x, context)))
        for name, update in self.updates.items():
            projected[name] = projected[name] + self.base_layer.split_heads(self.in_own_dtype(update, self.dropout(x)))
        return self.base_layer.attend(*(projected[name] for name in PROJECTED), context)


class LoRALinear(Wrapper):
    """A frozen ``nn.Linear`` plus its low-rank update: ``W x + b + (alpha / r) B A dropout(x)``."""

    def __init__(self, base_layer: nn.Linear, update: nn.Module, dropout: float):
        super().__init__(base_layer)
        self.update = update
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.base_layer(x) + self.in_own_dtype(self.update, self.dropout(x))


@register_method("lora", LoRAConfig)
class LoRA(Method):
    def __init__(self, backbone: CLIP, config: LoRAConfig):
        super().__init__(backbone, config)
        self.head = build_head(config.sim_header, backbone)  # before wrapping: heads copy the plain text blocks
        projected = [name for name in PROJECTED if name in config.targets]

        def make_wrapper(original: nn.Module, site: WrapSite) -> Wrapper:
            if site.target == "attn":
                return LoRAAttention(original, {name: low_rank_update(site.width, site.width, config)
                                                for name in projected}, config.dropout)
            return LoRALinear(original, low_rank_update(original.in_features, original.out_features, config),
                              config.dropout)

        wrap_targets = sorted({WRAP_TARGET[target] for target in config.targets})
        wrap_modules(backbone, make_wrapper, towers=config.towers, layers=config.layers, targets=wrap_targets)

    @property
    def identity_at_init(self) -> bool:
        return True  # every B starts at zero
