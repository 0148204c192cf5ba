"""The training loop on a tiny task: it learns, stops on NaN naming the videos, resumes exactly, runs under DDP."""
import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from petvr.backbone import create_backbone
from petvr.evaluation.metrics import retrieval_metrics
from petvr.methods import RetrievalModel
from petvr.training.trainer import TrainConfig, Trainer

NUM_CLASSES = 16


class PatternVideos(Dataset):
    """Video k: a fixed random pattern (+ noise) on 2 frames; its caption: SOT, a word id for k, EOT."""

    def __init__(self, samples_per_class=2, nan_video=None, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.patterns = torch.randn(NUM_CLASSES, 3, 64, 64, generator=generator)
        self.items = [k for k in range(NUM_CLASSES) for _ in range(samples_per_class)]
        self.noise = torch.randn(len(self.items), 2, 3, 64, 64, generator=generator) * 0.3
        self.nan_video = nan_video

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        k = self.items[index]
        frames = self.patterns[k].expand(2, -1, -1, -1) + self.noise[index]
        if k == self.nan_video:
            frames = frames * float("nan")
        token_ids = torch.tensor([49406, 1000 + k, 49407, 0])
        return {"video_id": f"video{k}", "token_ids": token_ids, "token_mask": token_ids != 0,
                "frames": frames, "frame_mask": torch.ones(2, dtype=torch.bool)}


def evaluate_classes(model):
    data = PatternVideos(samples_per_class=1, seed=0)
    batch = [data[i] for i in range(len(data))]
    token_ids = torch.stack([b["token_ids"] for b in batch])
    frames, mask = torch.stack([b["frames"] for b in batch]), torch.stack([b["frame_mask"] for b in batch])
    with torch.no_grad():
        logits = model.similarity(model.encode_text(token_ids, token_ids != 0), model.encode_video(frames, mask), mask)
    return retrieval_metrics(logits)


def make_trainer(tmp_path, dataset=None, epochs=3, **overrides):
    torch.manual_seed(0)
    backbone = create_backbone("petvr-tiny")
    model = RetrievalModel(backbone, "clip4clip", freeze_layer_num=3)
    settings = {"batch_size": 8, "lr": 1e-3, "coef_lr": 1.0, "warmup": 0.1, "seed": 1, **overrides}
    config = TrainConfig(epochs=epochs, **settings)
    return Trainer(model, dataset or PatternVideos(), config, tmp_path / "run", evaluate=evaluate_classes)


def test_training_lowers_the_loss_and_raises_recall(tmp_path):
    trainer = make_trainer(tmp_path, epochs=6)
    before = evaluate_classes(trainer.model)["t2v"]["R@1"]
    result = trainer.train()
    losses = [h["loss"] for h in result["history"] if "loss" in h]
    assert sum(losses[-4:]) / 4 < 0.6 * sum(losses[:4]) / 4
    after = result["best"]["metrics"]["t2v"]["R@1"]
    assert after >= before + 30, (before, after)
    last_eval = [h["eval"] for h in result["history"] if "eval" in h][-1]
    final = json.loads((tmp_path / "run" / "adapter" / "adapter.json").read_text())
    assert final["metrics"] == json.loads(json.dumps(last_eval))  # the final weights carry their own metrics


def test_nan_loss_stops_with_the_batch_video_ids(tmp_path):
    trainer = make_trainer(tmp_path, dataset=PatternVideos(nan_video=3))
    with pytest.raises(FloatingPointError, match=r"video3"):
        trainer.train()


def test_resume_continues_the_same_loss_curve(tmp_path):
    uninterrupted = make_trainer(tmp_path / "a", epochs=2).train()["history"]
    first = make_trainer(tmp_path / "b", epochs=2)
    first.train(stop_after_steps=5)  # stops mid-epoch 2 (4 steps per epoch)
    resumed = make_trainer(tmp_path / "b", epochs=2)
    assert resumed.resume() and resumed.step == 5
    continued = resumed.train()["history"]
    losses = lambda history: [h["loss"] for h in history if "loss" in h]  # noqa: E731
    assert len(losses(continued)) == len(losses(uninterrupted)) == 8
    torch.testing.assert_close(torch.tensor(losses(continued)), torch.tensor(losses(uninterrupted)), rtol=1e-5, atol=1e-6)


def test_a_checkpoint_write_killed_half_way_leaves_the_previous_one(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.train(stop_after_steps=2)
    pointer = tmp_path / "run" / "latest.json"
    previous = json.loads(pointer.read_text())

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr("petvr.training.trainer.save_state", killed)  # the training state: the last file written
    trainer.step += 1
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert json.loads(pointer.read_text()) == previous
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp"))
    restarted = make_trainer(tmp_path, epochs=1)
    assert restarted.resume() and restarted.step == 2


def test_fp16_weights_mode_reproduces_clip4clip_storage_and_rounding(tmp_path):
    trainer = make_trainer(tmp_path, epochs=1, precision="fp16-weights", lr=1e-7)
    backbone = trainer.model.backbone
    block = backbone.visual.transformer.resblocks[-1]
    assert block.attn.in_proj_weight.dtype == torch.float16 and block.mlp.c_fc.weight.dtype == torch.float16
    assert backbone.visual.proj.dtype == torch.float16 and backbone.text.text_projection.dtype == torch.float16
    assert block.ln_1.weight.dtype == torch.float32 and backbone.logit_scale.dtype == torch.float32
    assert backbone.text.token_embedding.weight.dtype == torch.float32
    before = block.mlp.c_fc.weight.detach().clone()
    result = trainer.train(stop_after_steps=2)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result["history"])
    # At lr 1e-7 an update is below half an fp16 ulp for all but the smallest weights: most do not move, while
    # the same two steps in fp32 move every weight.
    moved_fp16 = (block.mlp.c_fc.weight != before).float().mean().item()
    reference = make_trainer(tmp_path / "fp32", epochs=1, lr=1e-7)
    block32 = reference.model.backbone.visual.transformer.resblocks[-1]
    before32 = block32.mlp.c_fc.weight.detach().clone()
    reference.train(stop_after_steps=2)
    moved_fp32 = (block32.mlp.c_fc.weight != before32).float().mean().item()
    assert moved_fp16 < 0.2 and moved_fp32 > 0.9, (moved_fp16, moved_fp32)


def _trainer_ddp_worker(worker_rank, port, out_dir):
    import os

    from petvr.training.distributed import destroy_distributed, init_distributed_from_env

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(worker_rank),
                      LOCAL_RANK=str(worker_rank), WORLD_SIZE="2")
    init_distributed_from_env()
    try:
        trainer = make_trainer(Path(out_dir) / f"rank{worker_rank}", epochs=1, optimizer="adamw")
        result = trainer.train(stop_after_steps=2)
        torch.save({"weights": trainer.model.trainable_state_dict(), "losses": [h["loss"] for h in result["history"]]},
                   Path(out_dir) / f"rank{worker_rank}.pt")
        destroy_distributed()  # a barrier first: neither process leaves while the other still reads
    finally:
        destroy_distributed(wait_for_others=False)


def test_two_process_ddp_training_equals_single_process_on_the_global_batch(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_trainer_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    single = make_trainer(tmp_path / "single", epochs=1, optimizer="adamw")
    losses = [h["loss"] for h in single.train(stop_after_steps=2)["history"]]
    for worker_rank in range(2):
        result = torch.load(tmp_path / f"rank{worker_rank}.pt")
        torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(losses), rtol=1e-5, atol=1e-5)
        for name, weight in single.model.trainable_state_dict().items():
            torch.testing.assert_close(result["weights"][name], weight, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("stop_at", [3, 4])  # mid-epoch, and exactly at the end of epoch 1 (4 steps per epoch)
def test_resume_with_dropout_and_workers_continues_the_same_curve(tmp_path, stop_at):
    def trainer(folder):
        torch.manual_seed(0)
        model = RetrievalModel(create_backbone("petvr-tiny"), "clip4clip", freeze_layer_num=3, sim_header="tightTransf")
        config = TrainConfig(epochs=2, batch_size=8, lr=1e-3, coef_lr=1.0, warmup=0.1, seed=1)
        return Trainer(model, PatternVideos(), config, folder, evaluate=evaluate_classes, num_workers=2)

    uninterrupted = trainer(tmp_path / "a").train()
    first = trainer(tmp_path / "b")
    first.train(stop_after_steps=stop_at)
    resumed = trainer(tmp_path / "b")
    assert resumed.resume() and resumed.step == stop_at
    continued = resumed.train()
    losses = lambda history: [h["loss"] for h in history if "loss" in h]  # noqa: E731
    torch.testing.assert_close(torch.tensor(losses(continued["history"])),
                               torch.tensor(losses(uninterrupted["history"])), rtol=1e-5, atol=1e-6)
    evaluations = lambda history: [h["eval"]["t2v"]["R@1"] for h in history if "eval" in h]  # noqa: E731
    assert evaluations(continued["history"]) == evaluations(uninterrupted["history"])
    assert len(evaluations(continued["history"])) == 2  # the evaluation at the stop's epoch end was not skipped


def test_resume_refuses_a_changed_training_setup(tmp_path):
    make_trainer(tmp_path, epochs=1).train(stop_after_steps=2)
    changed = make_trainer(tmp_path, epochs=1, lr=5e-4)
    with pytest.raises(ValueError, match=r"lr: 0.001 -> 0.0005"):
        changed.resume()


def test_adapter_round_trip_reproduces_the_trained_model(tmp_path):
    trainer = make_trainer(tmp_path, epochs=1)
    trainer.train(stop_after_steps=3)
    trainer.model.save_adapter(tmp_path / "adapter")
    torch.manual_seed(0)  # the same backbone weights as make_trainer's
    reloaded = RetrievalModel.from_adapter(tmp_path / "adapter", backbone=create_backbone("petvr-tiny"))
    trained = trainer.model.eval()
    for name, weight in trained.trainable_state_dict().items():
        assert torch.equal(reloaded.trainable_state_dict()[name], weight), name
    torch.testing.assert_close(evaluate_classes(reloaded)["t2v"], evaluate_classes(trained)["t2v"])
    data = PatternVideos(samples_per_class=1)
    item = data[0]
    with torch.no_grad():
        args = (item["token_ids"][None], item["token_mask"][None], item["frames"][None], item["frame_mask"][None])
        torch.testing.assert_close(reloaded.eval()(*args), trained(*args))


def test_gradient_accumulation_steps_on_the_mean_of_its_micro_batch_losses(tmp_path):
    from petvr.training.optim import build_optimizer
    from petvr.training.trainer import ContrastiveObjective, collate_samples

    trainer = make_trainer(tmp_path, epochs=1, optimizer="adamw", warmup=0.0, gradient_accumulation_steps=2,
                           clip_grad_norm=0.0)  # no clipping, so the gradients' scale is compared too
    torch.manual_seed(0)  # the same initial weights as make_trainer's
    reference = RetrievalModel(create_backbone("petvr-tiny"), "clip4clip", freeze_layer_num=3)
    optimizer, _ = build_optimizer("adamw", reference.named_parameters(), lr=1e-3, total_steps=trainer.total_steps,
                                   weight_decay=0.2, warmup=0.0, group_of=reference.parameter_group,
                                   lr_multipliers=reference.method.lr_multipliers(1.0))
    objective = ContrastiveObjective(reference)
    losses = []
    for indices in trainer._epoch_batches(0, 0)[:2]:  # the two micro-batches of the first step (4 samples each)
        batch = collate_samples([trainer.dataset[i] for i in indices])
        losses.append(objective(batch["token_ids"], batch["token_mask"], batch["frames"], batch["frame_mask"])["loss"])
    ((losses[0] + losses[1]) / 2).backward()
    expected_grads = {name: p.grad.clone() for name, p in reference.named_parameters() if p.requires_grad}
    optimizer.step()

    seen_grads = {}
    trainer.optimizer.register_step_pre_hook(lambda *_: seen_grads.update(
        {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.requires_grad}))
    result = trainer.train(stop_after_steps=1)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(seen_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert result["history"][0]["loss"] == pytest.approx((losses[0].item() + losses[1].item()) / 2, rel=1e-5)
    for name, weight in reference.trainable_state_dict().items():
        torch.testing.assert_close(trainer.model.trainable_state_dict()[name], weight, rtol=1e-5, atol=1e-6, msg=name)
