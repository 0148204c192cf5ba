"""Optimizers and schedules, the contrastive loss, and distributed helpers the trainer is built from."""
from .distributed import (
    DistributedInfo, all_gather_with_grad, barrier, broadcast_object, destroy_distributed, init_distributed_from_env,
    is_distributed, is_main_process, rank, seed_everything, world_size,
)
from .losses import symmetric_infonce
from .optim import (
    OPTIMIZERS, SCHEDULES, BertAdam, ScheduleMultiplier, build_optimizer, build_param_groups, cosine_with_warmup,
    schedule_lambda_lr, warmup_constant, warmup_cosine, warmup_linear,
)

__all__ = [
    "BertAdam", "DistributedInfo", "OPTIMIZERS", "SCHEDULES", "ScheduleMultiplier", "all_gather_with_grad", "barrier",
    "broadcast_object", "build_optimizer", "build_param_groups", "cosine_with_warmup", "destroy_distributed",
    "init_distributed_from_env", "is_distributed", "is_main_process", "rank", "schedule_lambda_lr", "seed_everything",
    "symmetric_infonce", "warmup_constant", "warmup_cosine", "warmup_linear", "world_size",
]
