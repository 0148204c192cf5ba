"""Parameter counts of the bundled configs, on the meta device (nothing allocated): they must equal CLIP's."""
from __future__ import annotations

import open_clip
import pytest

from petvr.backbone import create_backbone


def count(module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_vit_b_32_counts():
    model = create_backbone("ViT-B-32", device="meta")
    assert all(parameter.is_meta for parameter in model.parameters())
    assert count(model) == 151_277_313
    assert count(model.visual) == 87_849_216
    assert count(model.text) == 63_428_096
    assert model.logit_scale.numel() == 1
    assert count(model.visual.transformer.resblocks[0]) == 7_087_872
    assert count(model.text.transformer.resblocks[0]) == 3_152_384


def test_vit_b_16_counts():
    model = create_backbone("ViT-B-16", device="meta")
    assert count(model) == 149_620_737
    assert count(model.text) == 63_428_096


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14"])
def test_counts_equal_open_clip(name):
    reference = open_clip.create_model(f"{name}-quickgelu", pretrained=None, device="meta")
    assert count(create_backbone(name, device="meta")) == count(reference)
