"""Zero-shot CLIP: the frozen backbone, frames mean-pooled (CLIP4Clip's meanP), nothing trained.

The reference point every method is compared against (CLIP4Clip §1.1, meanP).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..backbone import CLIP
from .base import Method, MethodConfig, register_method
from .heads import build_head


@dataclass
class ZeroShotConfig(MethodConfig):
    """``sim_header`` must be a parameter-free head: "meanP" or "query_scoring"."""


@register_method("zero_shot", ZeroShotConfig)
class ZeroShot(Method):
    def __init__(self, backbone: CLIP, config: ZeroShotConfig):
        super().__init__(backbone, config)
        self.head = build_head(config.sim_header, backbone)
        if any(True for _ in self.head.parameters()):
            raise ValueError(f"zero_shot needs a parameter-free head, {config.sim_header!r} has weights to train")

    @property
    def identity_at_init(self) -> bool:
        return True
