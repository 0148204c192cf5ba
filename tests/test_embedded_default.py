"""The shipped embedded default really learned its synthetic world, and its record says how it was made."""
import hashlib
import json

import numpy as np
import torch
import torch.nn.functional as F

from petvr.backbone.checkpoints import embedded_checkpoint_path, load_backbone
from petvr.backbone.tokenizer import Tokenizer
from petvr.synthetic import SyntheticImageCaptions
from petvr.data.video import normalize
from petvr.evaluation.metrics import retrieval_metrics


def test_record_matches_the_shipped_file():
    weights = embedded_checkpoint_path()
    record = json.loads(weights.with_suffix(".json").read_text())
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["command"].startswith("petvr pretrain")
    assert {"seed", "pairs_seen"} <= set(record["data"])
    assert weights.stat().st_size < 20 * 2**20


def test_it_retrieves_held_out_synthetic_captions_far_above_chance():
    model = load_backbone("petvr-tiny").eval()
    held_out = SyntheticImageCaptions(seed=424242, num_samples=200)  # a seed neither training nor the record used
    images, captions = zip(*(held_out[i] for i in range(len(held_out))))
    token_ids, token_mask = Tokenizer(32)(list(captions))
    with torch.no_grad():
        image_embeddings = F.normalize(model.encode_images(normalize(np.stack(images))), dim=-1)
        text_embeddings = F.normalize(model.encode_text(token_ids, token_mask), dim=-1)
    metrics = retrieval_metrics(text_embeddings @ image_embeddings.T)
    # chance R@1 is 0.5% over 200 pairs; many captions fit several images, so perfect is out of reach too
    assert metrics["v2t"]["R@1"] > 50 and metrics["t2v"]["R@1"] > 50, metrics
