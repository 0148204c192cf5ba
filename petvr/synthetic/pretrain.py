"""Pretraining of the embedded default: the small ``petvr-tiny`` CLIP trained with CLIP's contrastive objective on
the synthetic image-caption stream. It is a stand-in for OpenAI's CLIP (no real weights can be downloaded here).

The training is the one trainer loop every method uses: the backbone wrapped as CLIP4Clip with every weight trained
(``freeze_layer_num=-1``) and the meanP head, on items of one frame each, for which meanP is the normalised image
embedding, so the objective is CLIP's. The held-out image-text evaluation is the trainer's end-of-epoch evaluation;
the trainer's run folder (checkpoints, adapter copies) is temporary.

``petvr pretrain`` runs this and writes ``petvr/assets/petvr-tiny.safetensors`` (fp16, our own key names) and
``petvr-tiny.json`` beside it (command, seed, data and optimiser settings, held-out metrics, sha256, wall time).
"""
from __future__ import annotations

import copy
import hashlib
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..atomic import atomic_write_json
from ..backbone import create_backbone
from ..backbone.checkpoints import save_backbone
from ..backbone.tokenizer import Tokenizer
from ..data.video import normalize
from ..evaluation.metrics import retrieval_metrics
from ..methods import RetrievalModel
from ..training.trainer import TrainConfig, Trainer, collate_samples
from .images import SyntheticImageCaptions

ASSETS = Path(__file__).resolve().parent.parent / "assets"
HELD_OUT_SEED_OFFSET = 1_000_003
"""The held-out pairs use ``seed + HELD_OUT_SEED_OFFSET``, a seed training never draws from."""


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

    def train_config(self) -> TrainConfig:
        """One epoch of ``steps`` batches with AdamW; every weight at ``lr`` (the whole backbone is new here)."""
        return TrainConfig(epochs=1, batch_size=self.batch_size, optimizer="adamw", lr=self.lr, coef_lr=1.0,
                           weight_decay=self.weight_decay, warmup=self.warmup, schedule="cosine_with_warmup",
                           clip_grad_norm=1.0, no_decay_norms_and_embeddings=True, max_logit_scale=100.0,
                           precision="fp32", seed=self.seed)


class ImageCaptionItems(Dataset):
    """Synthetic (image, caption) pairs as trainer items of one frame: ``{"video_id", "token_ids" (L,),
    "token_mask" (L,), "frames" (1, 3, H, W) normalised, "frame_mask" (1,) bool}``."""

    def __init__(self, images: SyntheticImageCaptions, tokenizer: Tokenizer):
        self.images, self.tokenizer = images, tokenizer

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        image, caption = self.images[index]
        token_ids, token_mask = self.tokenizer(caption)
        return {"video_id": f"pair{index}", "token_ids": token_ids[0], "token_mask": token_mask[0],
                "frames": normalize(image[None]), "frame_mask": torch.ones(1, dtype=torch.bool)}


@torch.no_grad()
def evaluate_image_text(model: RetrievalModel, config: PretrainConfig) -> dict:
    """Image-to-text and text-to-image R@K on held-out synthetic pairs (a seed never used in training)."""
    held_out = SyntheticImageCaptions(seed=config.seed + HELD_OUT_SEED_OFFSET, num_samples=config.eval_pairs,
                                      image_size=model.backbone.config.vision.image_size)
    loader = DataLoader(ImageCaptionItems(held_out, Tokenizer(config.max_words)), batch_size=250,
                        collate_fn=collate_samples)
    image_embeddings, text_embeddings = [], []
    for batch in loader:
        image_embeddings.append(F.normalize(model.encode_video(batch["frames"], batch["frame_mask"])[:, 0], dim=-1))
        text_embeddings.append(F.normalize(model.encode_text(batch["token_ids"], batch["token_mask"]), dim=-1))
    similarity = torch.cat(text_embeddings) @ torch.cat(image_embeddings).T  # (texts, images)
    metrics = retrieval_metrics(similarity)
    return {"image_to_text": metrics["v2t"], "text_to_image": metrics["t2v"]}


def pretrain(config: PretrainConfig, output_dir: str | Path = ASSETS, command: str = "") -> dict:
    """Train ``config.model`` from scratch, write its fp16 weights and the JSON record to ``output_dir``; returns the
    record."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    backbone = create_backbone(config.model)
    model = RetrievalModel(backbone, "clip4clip", freeze_layer_num=-1)  # meanP, every backbone weight trained
    train_images = SyntheticImageCaptions(seed=config.seed, image_size=backbone.config.vision.image_size,
                                          num_samples=config.steps * config.batch_size)
    items = ImageCaptionItems(train_images, Tokenizer(config.max_words))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="petvr-pretrain-") as run_dir:
        trainer = Trainer(model, items, config.train_config(), run_dir,
                          evaluate=lambda trained: evaluate_image_text(trained, config),
                          selection_metric="text_to_image/R@1", num_workers=config.num_workers)
        result = trainer.train()
    train_seconds = time.time() - started  # training, the held-out evaluation and the run's checkpoints

    output_dir = Path(output_dir)
    weights_path = save_backbone(copy.deepcopy(backbone).half(), output_dir / f"{config.model}.safetensors")  # fp16: half the size
    losses = [entry["loss"] for entry in result["history"] if "loss" in entry]
    record = {
        "model": config.model,
        "config": asdict(config),
        "train_config": asdict(config.train_config()),
        "command": command,
        "data": {"generator": "petvr.synthetic.SyntheticImageCaptions", "seed": config.seed,
                 "pairs_seen": config.steps * config.batch_size,
                 "held_out_seed": config.seed + HELD_OUT_SEED_OFFSET, "held_out_pairs": config.eval_pairs},
        "metrics": result["best"]["metrics"],  # one epoch: the best is the last
        "loss": {"first_step": losses[0], "last_step": losses[-1]},
        "train_seconds": round(train_seconds, 1),
        "threads": config.threads,
        "sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
        "torch": torch.__version__,
    }
    atomic_write_json(output_dir / f"{config.model}.json", record)
    return record
