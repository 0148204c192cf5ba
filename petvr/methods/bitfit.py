"""BitFit (Ben Zaken et al. 2022): train every bias of the frozen backbone, nothing else.

Every backbone weight named ``...bias`` trains: the attention's fused ``in_proj_bias`` and ``out_proj.bias``, the
MLP's ``c_fc.bias`` and ``c_proj.bias``, and the LayerNorm biases (``ln_1``, ``ln_2``, ``ln_pre``, ``ln_post``,
``ln_final``), as BitFit trains the LayerNorm biases of BERT too; CLIP's patch embedding has no bias. The projections
and the logit scale stay frozen.

The biases are this method's adapter, not a backbone being fine-tuned, so they train at the recipe's full ``lr``
(group "new"), not at CLIP4Clip's ``lr * coef_lr`` for backbone weights (``BackboneSubset``, shared with
``linear_probe``).

Trainable on ViT-B/32 and ViT-B/16 (same widths): per vision block 3W + W + 4W + W + 2W = 11W = 8,448 (W = 768), per
text block 11 x 512 = 5,632; 12 x (8,448 + 5,632) + 2 x 768 (ln_pre, ln_post) + 512 (ln_final) = 171,008, the "CLIP
biases" count MV-Adapter's released configs also train (reference mvadapter_rap.md §1.3).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..backbone import CLIP
from .base import Method, MethodConfig, register_method
from .heads import build_head


class BackboneSubset(Method):
    """A method whose adapter is a subset of the backbone's own weights (``trains(name)``), trained at the full
    ``lr``; it adds nothing to the backbone, so it starts as the frozen backbone."""

    def __init__(self, backbone: CLIP, config: MethodConfig):
        super().__init__(backbone, config)
        self.head = build_head(config.sim_header, backbone)

    def trains(self, name: str) -> bool:
        raise NotImplementedError

    def backbone_parameters_to_train(self, names: Sequence[str]) -> Iterable[str]:
        return [name for name in names if self.trains(name)]

    def parameter_group(self, name: str, is_backbone_weight: bool) -> str:
        return "new"  # the chosen backbone weights are the adapter: full lr

    @property
    def identity_at_init(self) -> bool:
        return True


@dataclass
class BitFitConfig(MethodConfig):
    pass


@register_method("bitfit", BitFitConfig)
class BitFit(BackboneSubset):
    def trains(self, name: str) -> bool:
        return name.endswith("bias")
