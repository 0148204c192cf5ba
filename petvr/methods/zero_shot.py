"""Zero-shot CLIP: the frozen backbone, frames mean-pooled (CLIP4Clip's meanP), nothing trained.

The reference point every method is compared against (CLIP4Clip §1.1, meanP).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..backbone import CLIP
from .base import Method, MethodConfig, option, register_method
from .heads import build_head


@dataclass
class ZeroShotConfig(MethodConfig):
    """Nothing trains, so only a parameter-free head can score."""

    sim_header: str = option("meanP", "the parameter-free similarity head that scores a text against a video's frames",
                             ("meanP", "query_scoring"))


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
