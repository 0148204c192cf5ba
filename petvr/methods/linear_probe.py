"""Linear probe (projection-only tuning): train the two output projections, the final LayerNorms and the logit scale.

The trained set is exactly CLIP4Clip's with every block frozen (``clip4clip`` with ``freeze_layer_num`` = the number
of blocks; Cross-Modal Adapter's "CLIP4Clip*, freeze 12" row and v2's "projection only"): ``visual.ln_post``,
``visual.proj``, ``text.ln_final``, ``text.text_projection`` and ``logit_scale``. Unlike CLIP4Clip, which trains them
at its backbone rate ``lr * coef_lr`` (1e-7 in its recipe), they are this method's adapter and train at the full
``lr`` (group "new", see ``bitfit.BackboneSubset``); ``clip4clip`` with ``freeze_layer_num=12`` is the CLIP4Clip row
as it ran.

Trainable on ViT-B/32 and ViT-B/16 (same widths): ln_post 2 x 768 + proj 768 x 512 + ln_final 2 x 512 +
text_projection 512 x 512 + logit scale 1 = 657,921 (CMA's "0.66M").
"""
from __future__ import annotations

from dataclasses import dataclass

from .base import MethodConfig, register_method
from .bitfit import BackboneSubset
from .clip4clip import ALWAYS_TRAINED


@dataclass
class LinearProbeConfig(MethodConfig):
    pass


@register_method("linear_probe", LinearProbeConfig)
class LinearProbe(BackboneSubset):
    def trains(self, name: str) -> bool:
        return name.startswith(ALWAYS_TRAINED)
