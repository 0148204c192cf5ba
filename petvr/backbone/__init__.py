"""Frozen CLIP backbone, tokenizer and checkpoint readers."""
from .blocks import Attention, Mlp, PatchEmbedding, ResidualBlock, TowerContext, Transformer
from .clip import CLIP, TextTower, VisionTower, create_backbone
from .config import CLIPConfig, TextConfig, VisionConfig, get_model_config, list_model_configs

__all__ = [
    "Attention", "CLIP", "PatchEmbedding", "CLIPConfig", "Mlp", "ResidualBlock", "TextConfig", "TextTower", "TowerContext",
    "Transformer", "VisionConfig", "VisionTower", "create_backbone", "get_model_config", "list_model_configs",
]
