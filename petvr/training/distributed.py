"""Distributed helpers: process-group setup for torchrun, an all-gather that carries gradients, seeding.

Everything here also works in a single process (no process group): the gather is the identity, the barrier does
nothing, the rank is 0 and the world size 1. So the trainer has one code path.
"""
from __future__ import annotations

import os
from datetime import timedelta
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True inside an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait for every process; nothing to wait for in a single process."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s (picklable) ``obj`` on every rank; ``obj`` itself in a single process."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: concatenate every rank's (N, ...) tensor into (world * N, ...), rank order.

    Backward: the gradient of the *sum of every rank's loss* with respect to this rank's input. Each rank holds the
    gradient of its own loss with respect to the whole gathered tensor; summing those across ranks (all-reduce) and
    keeping this rank's slice is exactly that. When every rank computes the same global loss L on the gathered
    matrix (CLIP4Clip's way), the sum is ``world * dL/dx_local``, and DDP's gradient averaging divides by ``world``
    again, so every parameter ends with ``dL/dtheta``: the single-process gradient on the global batch. CLIP4Clip's
    own AllGather returns the local slice without the sum, which leaves the towers' gradients ``world`` times
    smaller than single-process training while parameters used after the gather (the logit scale) keep the full
    gradient. When each rank computes only its own rows of the loss, the sum is also what is needed.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.rank = dist.get_rank()
        ctx.local_size = tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> Tensor:
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.local_size
        return grad[start:start + ctx.local_size]


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """(N, ...) on each rank -> (world * N, ...) on every rank, differentiable (see ``_AllGatherWithGrad``).

    Every rank must pass the same shape (the trainer drops the last incomplete batch). Works for masks and other
    non-float tensors too (they carry no gradient). The identity in a single process.
    """
    if not is_distributed() or dist.get_world_size() == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor)


@dataclass(frozen=True)
class DistributedInfo:
    """Where this process sits: its global and local rank, the world size, its device and the backend used."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None


def init_distributed_from_env() -> DistributedInfo:
    """Join the process group torchrun describes (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR/PORT``).

    NCCL on CUDA (each process takes the GPU of its local rank), gloo on CPU. Without ``WORLD_SIZE`` > 1 in the
    environment nothing is initialised and a single-process description is returned.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world <= 1:
        return DistributedInfo(0, local_rank, 1, device, None)
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world} but {name} is not set: launch with torchrun")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(device)
    if not is_distributed():
        # Rank 0 evaluates alone while the others wait at a barrier: allow long evaluations (default 2 hours).
        timeout = timedelta(minutes=float(os.environ.get("PETVR_DIST_TIMEOUT_MIN", "120")))
        dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    return DistributedInfo(dist.get_rank(), local_rank, dist.get_world_size(), device, backend)


def destroy_distributed(wait_for_others: bool = True) -> None:
    """Leave the process group, if any (at the end of training, so the launcher exits cleanly).

    ``wait_for_others``: first a barrier, so that no process closes its gloo connections while another still reads
    from them (that one would abort with "Connection closed by peer", a SIGABRT). Pass False on an error path, where
    the other processes may never arrive."""
    if not is_distributed():
        return
    if wait_for_others:
        dist.barrier()
    dist.destroy_process_group()


def seed_everything(seed: int, rank_offset: int = 0) -> int:
    """Seed Python, NumPy and torch (all devices) with ``seed + rank_offset``; returns the seed used.

    Pass ``rank()`` as the offset where ranks must draw different random numbers (data augmentation), 0 where they
    must agree (weight initialisation before DDP broadcasts it anyway).
    """
    effective = seed + rank_offset
    random.seed(effective)
    np.random.seed(effective % 2**32)
    torch.manual_seed(effective)
    return effective
