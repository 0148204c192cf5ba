"""Model configs: small JSON files in ``model_configs/`` (open_clip style), read into typed dataclasses."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path


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
    quick_gelu: bool = True
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)

    @classmethod
    def from_dict(cls, data: dict) -> "CLIPConfig":
        return cls(
            embed_dim=int(data["embed_dim"]),
            quick_gelu=bool(data.get("quick_gelu", True)),
            vision=VisionConfig(**data["vision"]),
            text=TextConfig(**data["text"]),
        )

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
        bundled = resources.files("petvr.backbone") / "model_configs" / f"{name_or_path}.json"
        if not bundled.is_file():
            raise ValueError(f"unknown model config {name_or_path!r}; bundled configs: {', '.join(list_model_configs())}")
        text = bundled.read_text()
    return CLIPConfig.from_dict(json.loads(text))
