"""Pretraining of the embedded default through the trainer: a few steps on a tiny batch change the weights, and the
written file loads and matches its record."""
import hashlib
import json
import math

import torch

from petvr.backbone import create_backbone
from petvr.backbone.checkpoints import load_backbone
from petvr.synthetic.pretrain import PretrainConfig, pretrain


def test_a_few_pretraining_steps_write_a_loadable_backbone_and_its_record(tmp_path):
    config = PretrainConfig(steps=4, batch_size=8, lr=1e-3, eval_pairs=16, threads=1, num_workers=0)
    threads = torch.get_num_threads()
    try:
        record = pretrain(config, tmp_path, command="petvr pretrain --steps 4 --batch-size 8")
    finally:
        torch.set_num_threads(threads)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["petvr-tiny.json", "petvr-tiny.safetensors"]
    weights = tmp_path / "petvr-tiny.safetensors"
    written = json.loads((tmp_path / "petvr-tiny.json").read_text())
    assert written["sha256"] == record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert written["config"]["steps"] == 4 and written["data"]["pairs_seen"] == 32
    assert written["train_config"]["optimizer"] == "adamw" and written["train_config"]["epochs"] == 1
    for direction in ("image_to_text", "text_to_image"):
        assert written["metrics"][direction]["queries"] == 16
    assert all(math.isfinite(value) for value in written["loss"].values())

    trained = load_backbone("petvr-tiny", weights)
    torch.manual_seed(config.seed)
    initial = create_backbone("petvr-tiny")  # what pretrain started from
    before, after = initial.state_dict(), trained.state_dict()
    changed = [name for name in before if not torch.equal(before[name].half().float(), after[name])]
    assert len(changed) > 0.9 * len(before), sorted(set(before) - set(changed))
