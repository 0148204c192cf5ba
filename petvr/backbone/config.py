"""Model configs: small JSON files in ``model_configs/`` (open_clip style), read into typed dataclasses.

The names mean what they mean in open_clip: ``ViT-B-32`` uses GELU (LAION and other open_clip training runs), and
``ViT-B-32-quickgelu`` uses QuickGELU, the activation OpenAI trained its CLIP with; likewise ViT-B-16 and ViT-L-14.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from ..typed_config import dataclass_from_dict

QUICK_GELU_SUFFIX = "-quickgelu"


@dataclass
class VisionConfig:
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class TextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    mlp_ratio: float = 4.0


@dataclass
class CLIPConfig:
    embed_dim: int = 512
    quick_gelu: bool = False  # as in open_clip: GELU unless a config says QuickGELU
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)

    @classmethod
    def from_dict(cls, data: dict, where: str = "model config") -> "CLIPConfig":
        """Unknown keys are refused, naming ``where`` (the file); missing ones keep the defaults above."""
        return dataclass_from_dict(cls, data, where)

    def to_dict(self) -> dict:
        return asdict(self)


def list_model_configs() -> list[str]:
    """Names of the bundled model configs, e.g. ``["ViT-B-16", "ViT-B-32", ...]``."""
    folder = resources.files("petvr.backbone") / "model_configs"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def get_model_config(name_or_path: str | Path) -> CLIPConfig:
    """Read a bundled config by name (``"ViT-B-32"``) or any JSON file by path."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        text = path.read_text()
    else:
        path = resources.files("petvr.backbone") / "model_configs" / f"{name_or_path}.json"
        if not path.is_file():
            raise ValueError(f"unknown model config {name_or_path!r}; bundled configs: {', '.join(list_model_configs())}")
        text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    return CLIPConfig.from_dict(data, str(path))
