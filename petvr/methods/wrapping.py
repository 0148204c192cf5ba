"""One way to wrap backbone sub-modules (the peft way): ``wrap_modules`` replaces chosen sub-modules of chosen blocks
of chosen towers with what a factory builds, and the frozen original stays reachable as the wrapper's ``base_layer``.

    sites = wrap_modules(backbone, lambda original, site: LoRAAttention(original, rank=4),
                         towers=("vision", "text"), layers=None, targets=("attn",))

Targets are a block's ``attn`` and ``mlp`` (called ``(x, context)``) and their projections ``attn.out_proj``,
``mlp.c_fc``, ``mlp.c_proj`` (``nn.Linear``, called ``(x)``). After wrapping, the original's weights are named
``...resblocks.3.attn.base_layer.in_proj_weight``; ``RetrievalModel`` resolves the backbone weights a method trains
against the names from before wrapping, so a method names weights as ``backbone.named_parameters()`` did at load.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..backbone import CLIP

TOWERS = {"vision": "visual", "text": "text"}  # tower name -> attribute of the backbone
TARGETS = ("attn", "mlp", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")


@dataclass(frozen=True)
class WrapSite:
    """Where a wrapper goes: ``tower`` ("vision" / "text"), block index ``layer``, ``target`` ("attn", "mlp.c_fc",
    ...), the tower's ``width``, and ``name``, the wrapped module's name in the backbone before wrapping."""

    tower: str
    layer: int
    target: str
    width: int
    name: str


class Wrapper(nn.Module):
    """Base of a module that wraps a frozen backbone sub-module, kept as ``self.base_layer``.

    The wrapper's own weights are new (trainable, float32 by default even when the backbone is stored in fp16, see
    ``Method.store_weights``); ``in_own_dtype`` runs a branch in its weights' dtype and returns the input's dtype.
    """

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer

    @staticmethod
    def in_own_dtype(branch: nn.Module, x: Tensor, *args: Any) -> Tensor:
        """``branch(x, *args)`` computed in ``branch``'s parameter dtype, cast back to ``x.dtype``."""
        dtype = next(branch.parameters()).dtype
        return branch(x.to(dtype), *args).to(x.dtype)


class Borrowed:
    """A module owned elsewhere (by the method), used here without registering it again.

    For weights shared across wrappers (one tensor for both towers): the method registers the shared module once, so
    it is saved, loaded and optimised once under one name, and each wrapper holds ``Borrowed(shared)``, which
    ``named_parameters``, ``state_dict`` and ``.to()`` do not enter. Call it like the module; ``.module`` is the module.
    """

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Borrowed({self.module.__class__.__name__})"


def resolve_layers(layers: Sequence[int] | None, depth: int, tower: str) -> list[int]:
    """``None`` -> every block; otherwise the listed indices (negative counts from the end), checked and sorted."""
    if layers is None:
        return list(range(depth))
    resolved = set()
    for layer in layers:
        if not -depth <= layer < depth:
            raise ValueError(f"layer {layer} is outside the {tower} tower's {depth} blocks (0..{depth - 1} or "
                             f"-{depth}..-1)")
        resolved.add(layer % depth)
    return sorted(resolved)


def check_towers(towers: Iterable[str]) -> tuple[str, ...]:
    towers = tuple(towers)
    unknown = [tower for tower in towers if tower not in TOWERS]
    if unknown or not towers:
        raise ValueError(f"towers must be a non-empty subset of {sorted(TOWERS)}, got {list(towers)}")
    return towers


def wrap_modules(
    backbone: CLIP,
    factory: Callable[[nn.Module, WrapSite], nn.Module],
    *,
    towers: Iterable[str] = ("vision", "text"),
    layers: Sequence[int] | None = None,
    targets: Iterable[str] = ("attn", "mlp"),
) -> list[WrapSite]:
    """Replace each target sub-module of each chosen block with ``factory(original, site)``; returns the sites.

    The factory must return a module whose ``base_layer`` is the original it was given (so the frozen weights stay
    reachable under one name); anything else is an error. Projections are wrapped before the module holding them, and
    a path through an earlier wrapper reaches the projection in its ``base_layer``.
    """
    targets = tuple(targets)
    unknown = [target for target in targets if target not in TARGETS]
    if unknown:
        raise ValueError(f"unknown wrap target(s) {unknown}; choose from {list(TARGETS)}")
    targets = sorted(set(targets), key=lambda target: (-target.count("."), TARGETS.index(target)))
    sites = []
    for tower in check_towers(towers):
        tower_module = getattr(backbone, TOWERS[tower])
        blocks = tower_module.transformer.resblocks
        for layer in resolve_layers(layers, len(blocks), tower):
            for target in targets:
                *path, attribute = target.split(".")
                parent = blocks[layer]
                for step in path:
                    parent = getattr(parent, step)
                    while isinstance(parent, Wrapper) and not hasattr(parent, attribute):
                        parent = parent.base_layer
                original = getattr(parent, attribute)
                name = f"{TOWERS[tower]}.transformer.resblocks.{layer}.{target}"
                site = WrapSite(tower, layer, target, tower_module.transformer.width, name)
                wrapper = factory(original, site)
                if getattr(wrapper, "base_layer", None) is not original:
                    raise TypeError(f"the wrapper built for {name} must keep the original module as .base_layer")
                setattr(parent, attribute, wrapper)
                sites.append(site)
    return sites
