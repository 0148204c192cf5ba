"""Optimizers, learning-rate schedules and parameter groups, as CLIP4Clip and Cross-Modal Adapter train.

``BertAdam`` is CLIP4Clip's optimizer (its ``modules/optimization.py``): Adam **without bias correction**, an optional
per-parameter gradient-norm clip, decoupled weight decay added to the update before the learning rate scales it, and
the schedule applied inside the optimizer from a per-parameter step count. ``build_optimizer`` builds it, or AdamW with
a ``LambdaLR`` scheduler (Cross-Modal Adapter's ``--optimizer adamw``, after X-Pool), from the same parameter groups.

Every schedule is a multiplier ``f(progress, warmup)`` of the base lr, where ``progress = step / total_steps`` in
[0, 1] and ``warmup`` is the warmup fraction of the run.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(progress: float, warmup: float) -> float:
    """CLIP4Clip's schedule: ``progress / warmup`` during warmup, then ``0.5 (1 + cos(pi progress))``.

    The cosine runs over the whole run, not re-based at the warmup end, so the multiplier jumps from 1 to
    ``0.5 (1 + cos(pi warmup))`` (0.976 for warmup 0.1) at ``progress == warmup``.
    """
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_constant(progress: float, warmup: float) -> float:
    """Linear warmup, then 1."""
    if progress < warmup:
        return progress / warmup
    return 1.0


def warmup_linear(progress: float, warmup: float) -> float:
    """Linear warmup, then a linear decay from 1 at the warmup end to 0 at the end of the run (BERT's schedule)."""
    if progress < warmup:
        return progress / warmup
    return max((progress - 1.0) / (warmup - 1.0), 0.0)


def cosine_with_warmup(progress: float, warmup: float) -> float:
    """Linear warmup, then a half cosine re-based on the rest of the run: 1 at the warmup end, 0 at the end.

    This is the schedule X-Pool uses with AdamW (Hugging Face's ``get_cosine_schedule_with_warmup``), written in
    fractions of the run: with ``warmup = warmup_steps / total_steps`` it gives the same multiplier at every step.
    """
    if progress < warmup:
        return progress / warmup
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * (progress - warmup) / (1.0 - warmup))))


SCHEDULES: dict[str, Callable[[float, float], float]] = {
    "warmup_cosine": warmup_cosine,
    "warmup_constant": warmup_constant,
    "warmup_linear": warmup_linear,
    "cosine_with_warmup": cosine_with_warmup,
}


def _check_schedule(schedule: str, warmup: float) -> None:
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(SCHEDULES)}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup is a fraction of the run in [0, 1), got {warmup}")


def _clip_coefficient(grad: Tensor, max_norm: float) -> Tensor:
    """The factor ``torch.nn.utils.clip_grad_norm_`` scales one tensor by: ``min(1, max_norm / (||g|| + 1e-6))``."""
    return (max_norm / (grad.norm() + 1e-6)).clamp(max=1.0)


class BertAdam(Optimizer):
    """CLIP4Clip's Adam: no bias correction, per-parameter clipping, decoupled weight decay, schedule inside.

    For each parameter ``w`` with gradient ``g`` and its own step count ``k`` (0 on its first update)::

        g   = g * min(1, max_grad_norm / (||g|| + 1e-6))      # skipped when max_grad_norm <= 0
        m   = b1 m + (1 - b1) g
        v   = b2 v + (1 - b2) g^2
        u   = m / (sqrt(v) + e) + weight_decay * w
        w  -= lr * schedule(k / t_total, warmup) * u          # lr alone when t_total == -1

    The first update therefore has a zero learning rate under any warmup schedule, exactly as in CLIP4Clip. The
    moments live in the parameter's dtype (fp16 parameters get fp16 moments, as the original trains them).
    ``weight_decay``, ``lr``, ``warmup``, ``t_total``, ``schedule`` and ``max_grad_norm`` may differ per group.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        warmup: float = 0.1,
        t_total: int = -1,
        schedule: str = "warmup_cosine",
        b1: float = 0.9,
        b2: float = 0.98,
        e: float = 1e-6,
        weight_decay: float = 0.2,
        max_grad_norm: float = 1.0,
    ):
        if lr < 0.0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        _check_schedule(schedule, warmup)
        if t_total != -1 and t_total <= 0:
            raise ValueError(f"t_total is the number of optimizer steps (or -1 for no schedule), got {t_total}")
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"b1 and b2 must be in [0, 1), got {b1}, {b2}")
        if e < 0.0:
            raise ValueError(f"e must be >= 0, got {e}")
        defaults = dict(lr=lr, warmup=warmup, t_total=t_total, schedule=schedule, b1=b1, b2=b2, e=e,
                        weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        super().__init__(params, defaults)

    @staticmethod
    def _lr_at(group: dict[str, Any], step: int) -> float:
        if group["t_total"] == -1:
            return group["lr"]
        return group["lr"] * SCHEDULES[group["schedule"]](step / group["t_total"], group["warmup"])

    def scheduled_lr(self) -> list[float]:
        """The learning rate each group's next update will use (read from its first parameter's step count)."""
        return [self._lr_at(group, next((self.state[p]["step"] for p in group["params"] if "step" in self.state[p]), 0))
                for group in self.param_groups]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if grad.is_sparse:
                    raise RuntimeError("BertAdam does not support sparse gradients")
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["next_m"] = torch.zeros_like(param)
                    state["next_v"] = torch.zeros_like(param)
                next_m, next_v = state["next_m"], state["next_v"]
                if group["max_grad_norm"] > 0:
                    grad = grad * _clip_coefficient(grad, group["max_grad_norm"])
                next_m.mul_(group["b1"]).add_(grad, alpha=1.0 - group["b1"])
                next_v.mul_(group["b2"]).addcmul_(grad, grad, value=1.0 - group["b2"])
                update = next_m / (next_v.sqrt() + group["e"])
                if group["weight_decay"] > 0.0:
                    update += group["weight_decay"] * param
                param.add_(update, alpha=-self._lr_at(group, state["step"]))
                state["step"] += 1
        return loss


def _decays(name: str, param: Tensor, no_decay_norms_and_embeddings: bool) -> bool:
    """CLIP4Clip's literal rule: no decay when the name contains "bias", "LayerNorm.bias" or "LayerNorm.weight".

    CLIP's norms are named ``ln_*``, so under this rule their gains, the positional/class embeddings and the logit
    scale ARE decayed. The modern rule (open_clip's) also exempts every tensor with fewer than 2 dimensions (norm
    gains, the class embedding, the logit scale) and every embedding table.
    """
    if "bias" in name or "LayerNorm.weight" in name:
        return False
    if no_decay_norms_and_embeddings and (param.ndim < 2 or "embedding" in name or "logit_scale" in name):
        return False
    return True


def build_param_groups(
    named_parameters: Iterable[tuple[str, Tensor]] | nn.Module,
    lr: float,
    weight_decay: float,
    group_of: Callable[[str], str] | None = None,
    lr_multipliers: Mapping[str, float] | None = None,
    no_decay_norms_and_embeddings: bool = False,
) -> list[dict[str, Any]]:
    """Split the trainable parameters into (learning-rate group) x (decay, no decay) optimizer groups.

    ``group_of(name)`` labels each trainable parameter (default: every one is ``"new"``) and ``lr_multipliers`` maps
    each label to its multiple of ``lr`` (default ``{"new": 1.0}``); a label without a multiplier is an error, never a
    silent full rate. The trainer passes the method's labels (``RetrievalModel.parameter_group``), so CLIP4Clip's
    backbone weights get ``lr * coef_lr`` and a method's new weights ``lr``. Decay groups get ``weight_decay``, the
    others 0 (see ``_decays`` for the rule). Parameters with ``requires_grad=False`` are left out, and so are empty
    groups. Each group carries a ``name`` ("backbone/decay", "new/no_decay", ...) and its ``param_names`` for logging.
    """
    if isinstance(named_parameters, nn.Module):
        named_parameters = named_parameters.named_parameters()
    group_of = group_of or (lambda name: "new")
    lr_multipliers = {"new": 1.0} if lr_multipliers is None else dict(lr_multipliers)
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, param in named_parameters:
        if not param.requires_grad:
            continue
        label = group_of(name)
        if label not in lr_multipliers:
            raise ValueError(f"{name} is in learning-rate group {label!r}, which has no multiplier; groups with one: "
                             f"{sorted(lr_multipliers)}")
        decays = _decays(name, param, no_decay_norms_and_embeddings)
        key = (label, decays)
        if key not in groups:
            groups[key] = {
                "name": f"{label}/{'decay' if decays else 'no_decay'}",
                "params": [],
                "param_names": [],
                "lr": lr * lr_multipliers[label],
                "weight_decay": weight_decay if decays else 0.0,
            }
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


class ScheduleMultiplier:
    """``step -> schedule(step / total_steps, warmup)`` for ``LambdaLR``; an object, so the scheduler's state_dict
    saves it."""

    def __init__(self, schedule: str, warmup: float, total_steps: int):
        _check_schedule(schedule, warmup)
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        self.schedule = schedule
        self.warmup = warmup
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        return SCHEDULES[self.schedule](step / self.total_steps, self.warmup)


def schedule_lambda_lr(optimizer: Optimizer, schedule: str, warmup: float, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` applying one of ``SCHEDULES`` to every group's lr; call ``scheduler.step()`` after each
    ``optimizer.step()``."""
    return LambdaLR(optimizer, ScheduleMultiplier(schedule, warmup, total_steps))


OPTIMIZERS = ("bertadam", "adamw")


def build_optimizer(
    name: str,
    named_parameters: Iterable[tuple[str, Tensor]] | nn.Module,
    *,
    lr: float,
    total_steps: int,
    weight_decay: float = 0.2,
    warmup: float = 0.1,
    schedule: str | None = None,
    betas: tuple[float, float] = (0.9, 0.98),
    eps: float = 1e-6,
    max_grad_norm: float = 1.0,
    group_of: Callable[[str], str] | None = None,
    lr_multipliers: Mapping[str, float] | None = None,
    no_decay_norms_and_embeddings: bool = False,
) -> tuple[Optimizer, LambdaLR | None]:
    """The optimizer (and, for AdamW, its scheduler) of a recipe.

    ``"bertadam"`` (CLIP4Clip, CMA): the schedule runs inside the optimizer, so the scheduler returned is None;
    ``max_grad_norm`` is its per-parameter clip (CMA passes -1 to disable it) and is read by BertAdam only.
    ``"adamw"``: ``torch.optim.AdamW`` with a ``LambdaLR`` to step after every optimizer step. The global gradient
    clip of the training loop is the trainer's job, for both. ``group_of`` and ``lr_multipliers`` set each weight's
    learning rate (see ``build_param_groups``). The schedule defaults to ``warmup_cosine`` for
    BertAdam and ``cosine_with_warmup`` for AdamW. Returns ``(optimizer, scheduler_or_None)``.
    """
    groups = build_param_groups(named_parameters, lr, weight_decay, group_of, lr_multipliers,
                                no_decay_norms_and_embeddings)
    if not groups:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    if name == "bertadam":
        optimizer = BertAdam(groups, lr=lr, warmup=warmup, t_total=total_steps, schedule=schedule or "warmup_cosine",
                             b1=betas[0], b2=betas[1], e=eps, weight_decay=weight_decay, max_grad_norm=max_grad_norm)
        return optimizer, None
    if name == "adamw":
        optimizer = AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        return optimizer, schedule_lambda_lr(optimizer, schedule or "cosine_with_warmup", warmup, total_steps)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
