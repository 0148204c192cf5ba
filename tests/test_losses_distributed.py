"""The symmetric InfoNCE loss, and DDP with ``all_gather_with_grad`` against single-process training (gloo, CPU)."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from petvr.training.distributed import (
    all_gather_with_grad, barrier, broadcast_object, destroy_distributed, init_distributed_from_env, is_distributed, rank, seed_everything,
    world_size,
)
from petvr.training.losses import symmetric_infonce

WORLD = 2
GLOBAL_BATCH = 8


def test_symmetric_infonce_matches_hand_formula():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.3], [1.5, -0.2, 0.7]])
    rows = -torch.stack([logits[i].log_softmax(0)[i] for i in range(3)]).mean()
    columns = -torch.stack([logits[:, i].log_softmax(0)[i] for i in range(3)]).mean()
    assert symmetric_infonce(logits).item() == pytest.approx(0.5 * (rows + columns).item(), abs=1e-6)
    assert symmetric_infonce(logits).item() != pytest.approx(rows.item())  # both directions count


def test_symmetric_infonce_fp16_logits_and_shape_check():
    logits = torch.randn(4, 4)
    loss = symmetric_infonce(logits.half())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(symmetric_infonce(logits.half().float()).item())
    with pytest.raises(ValueError, match="square"):
        symmetric_infonce(torch.randn(3, 4))


def test_single_process_helpers_are_identity():
    assert not is_distributed() and rank() == 0 and world_size() == 1
    x = torch.randn(3, 2, requires_grad=True)
    assert all_gather_with_grad(x) is x
    assert broadcast_object({"a": 1}) == {"a": 1}
    barrier()


def test_init_distributed_from_env_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed_from_env()
    assert (info.rank, info.world_size, info.backend) == (0, 1, None) and not is_distributed()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(RuntimeError, match="RANK is not set"):
        init_distributed_from_env()


def test_seed_everything_offsets_by_rank():
    assert seed_everything(42, rank_offset=3) == 45
    first = torch.rand(3)
    seed_everything(42, rank_offset=3)
    assert torch.equal(first, torch.rand(3))
    seed_everything(42)
    assert not torch.equal(first, torch.rand(3))


class TwoTowers(nn.Module):
    """A text tower and a video tower (mean over frames) with a learnable logit scale."""

    def __init__(self):
        super().__init__()
        self.text = nn.Linear(6, 4)
        self.video = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 4))
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, text_features, frames):
        return self.text(text_features), self.video(frames).mean(dim=1), self.logit_scale.exp()


def _global_loss(text_embeddings, video_embeddings, scale):
    logits = scale * F.normalize(text_embeddings, dim=-1) @ F.normalize(video_embeddings, dim=-1).t()
    return symmetric_infonce(logits)


def _batch():
    generator = torch.Generator().manual_seed(7)
    return torch.randn(GLOBAL_BATCH, 6, generator=generator), torch.randn(GLOBAL_BATCH, 3, 5, generator=generator)


def _mask():
    return torch.arange(GLOBAL_BATCH * 3).view(GLOBAL_BATCH, 3) % 4 != 0


def _model():
    torch.manual_seed(0)
    return TwoTowers()


def _ddp_worker(worker_rank, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(worker_rank),
                      LOCAL_RANK=str(worker_rank), WORLD_SIZE=str(WORLD))
    info = init_distributed_from_env()
    try:
        model = DistributedDataParallel(_model())
        text_features, frames = _batch()
        local = slice(info.rank * GLOBAL_BATCH // WORLD, (info.rank + 1) * GLOBAL_BATCH // WORLD)
        text_embeddings, video_embeddings, scale = model(text_features[local], frames[local])
        loss = _global_loss(all_gather_with_grad(text_embeddings), all_gather_with_grad(video_embeddings), scale)
        loss.backward()
        grads = {name: p.grad.clone() for name, p in model.module.named_parameters()}
        mask = all_gather_with_grad(_mask()[local])
        torch.save({"loss": loss.detach(), "grads": grads, "seen": broadcast_object(info.rank, src=1), "mask": mask},
                   os.path.join(out_dir, f"rank{info.rank}.pt"))
        destroy_distributed()  # a barrier first: neither process leaves while the other still reads
    finally:
        destroy_distributed(wait_for_others=False)


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_with_all_gather_equals_single_process_on_the_global_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    model = _model()
    loss = _global_loss(*model(*_batch()))
    loss.backward()
    for worker_rank in range(WORLD):
        result = torch.load(tmp_path / f"rank{worker_rank}.pt")
        assert result["seen"] == 1  # broadcast_object sent rank 1's value to every rank
        assert torch.equal(result["mask"], _mask())  # bool masks gather too, in rank order
        assert result["loss"].item() == pytest.approx(loss.item(), abs=1e-6)
        for name, param in model.named_parameters():
            assert param.grad.abs().sum() > 0
            torch.testing.assert_close(result["grads"][name], param.grad, atol=1e-6, rtol=0, msg=name)
