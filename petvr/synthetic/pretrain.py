"""Pretraining of the embedded default: the small ``petvr-tiny`` CLIP trained with CLIP's contrastive objective on
the synthetic image-caption stream. It is a stand-in for OpenAI's CLIP (no real weights can be downloaded here).

``petvr pretrain`` runs this and writes ``petvr/assets/petvr-tiny.safetensors`` (fp16, our own key names) and
``petvr-tiny.json`` beside it (command, seed, data settings, held-out metrics, sha256, wall time).
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..backbone import create_backbone
from ..backbone.checkpoints import save_backbone
from ..backbone.tokenizer import Tokenizer
from ..atomic import atomic_write_json
from ..data.video import normalize
from ..evaluation.metrics import retrieval_metrics
from ..training.losses import symmetric_infonce
from ..training.optim import build_optimizer
from .images import SyntheticImageCaptions

ASSETS = Path(__file__).resolve().parent.parent / "assets"


@dataclass
class PretrainConfig:
    model: str = "petvr-tiny"
    seed: int = 0
    steps: int = 2500
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: float = 0.05
    max_words: int = 32
    eval_pairs: int = 1000
    num_workers: int = 1
    threads: int = 2


class _TokenizedImages(Dataset):
    """Synthetic (image, caption) -> (normalised image (3, H, W), token ids (L,))."""

    def __init__(self, images: SyntheticImageCaptions, tokenizer: Tokenizer):
        self.images, self.tokenizer = images, tokenizer

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image, caption = self.images[index]
        token_ids, _ = self.tokenizer(caption)
        return normalize(image[None])[0], token_ids[0]


@torch.no_grad()
def evaluate_image_text(model, config: PretrainConfig) -> dict:
    """Image-to-text and text-to-image R@K on held-out synthetic pairs (a seed never used in training)."""
    model.eval()
    held_out = SyntheticImageCaptions(seed=config.seed + 1_000_003, image_size=model.config.vision.image_size,
                                      num_samples=config.eval_pairs)
    loader = DataLoader(_TokenizedImages(held_out, Tokenizer(config.max_words)), batch_size=250)
    image_embeddings, text_embeddings = [], []
    for images, token_ids in loader:
        image_embeddings.append(F.normalize(model.encode_images(images), dim=-1))
        text_embeddings.append(F.normalize(model.encode_text(token_ids), dim=-1))
    similarity = torch.cat(text_embeddings) @ torch.cat(image_embeddings).T  # (texts, images)
    metrics = retrieval_metrics(similarity)
    model.train()
    return {"image_to_text": metrics["v2t"], "text_to_image": metrics["t2v"]}


def pretrain(config: PretrainConfig, output_dir: str | Path = ASSETS, command: str = "") -> dict:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    model = create_backbone(config.model)
    train_images = SyntheticImageCaptions(seed=config.seed, image_size=model.config.vision.image_size,
                                          num_samples=config.steps * config.batch_size)
    loader = DataLoader(_TokenizedImages(train_images, Tokenizer(config.max_words)), batch_size=config.batch_size,
                        num_workers=config.num_workers, drop_last=True)
    optimizer, scheduler = build_optimizer("adamw", model.named_parameters(), lr=config.lr, total_steps=config.steps,
                                           weight_decay=config.weight_decay, warmup=config.warmup,
                                           backbone_names=(), no_decay_norms_and_embeddings=True)
    started = time.time()
    progress = tqdm(loader, total=config.steps, desc="pretrain petvr-tiny", unit="step")
    for step, (images, token_ids) in enumerate(progress):
        image_embeddings = F.normalize(model.encode_images(images), dim=-1)
        text_embeddings = F.normalize(model.encode_text(token_ids), dim=-1)
        loss = symmetric_infonce(model.logit_scale.exp() * text_embeddings @ image_embeddings.T)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"pretraining loss became {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        progress.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.time() - started
    metrics = evaluate_image_text(model, config)

    output_dir = Path(output_dir)
    weights_path = save_backbone(copy.deepcopy(model).half(), output_dir / f"{config.model}.safetensors")  # fp16: half the size
    record = {
        "model": config.model,
        "config": asdict(config),
        "command": command,
        "data": {"generator": "petvr.synthetic.SyntheticImageCaptions", "seed": config.seed,
                 "pairs_seen": config.steps * config.batch_size,
                 "held_out_seed": config.seed + 1_000_003, "held_out_pairs": config.eval_pairs},
        "metrics": metrics,
        "train_seconds": round(train_seconds, 1),
        "threads": config.threads,
        "sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
        "torch": torch.__version__,
    }
    atomic_write_json(output_dir / f"{config.model}.json", record)
    return record
