"""Frozen CLIP backbone, tokenizer and checkpoint readers."""
from .blocks import Attention, Mlp, PatchEmbedding, ResidualBlock, TowerContext, Transformer
from .checkpoints import (
    SUPPORTED_FORMATS, CheckpointError, backbone_weight_hash, checkpoint_dir, embedded_checkpoint_path, load_backbone,
    read_checkpoint, save_backbone,
)
from .clip import CLIP, TextTower, VisionTower, create_backbone
from .config import CLIPConfig, TextConfig, VisionConfig, get_model_config, list_model_configs

__all__ = [
    "Attention", "CLIP", "PatchEmbedding", "CLIPConfig", "CheckpointError", "Mlp", "ResidualBlock", "SUPPORTED_FORMATS",
    "TextConfig", "TextTower", "TowerContext", "Transformer", "VisionConfig", "VisionTower", "backbone_weight_hash",
    "checkpoint_dir", "create_backbone", "embedded_checkpoint_path", "get_model_config", "list_model_configs",
    "load_backbone", "read_checkpoint", "save_backbone",
]
