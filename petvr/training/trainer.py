"""The training loop shared by every method: symmetric InfoNCE over (caption, video) batches.

One code path for one process and for ``torchrun`` (DDP): each rank encodes its share of the global batch, the
embeddings are all-gathered with gradient, and every rank computes the loss on the global batch, so the gradients
equal single-process training on that batch. Pairwise heads (tightTransf) score only the local batch, as
CLIP4Clip does. Checkpoints hold the trained weights (an adapter folder) plus the optimizer, scheduler, RNG and
progress (``training_state.safetensors`` + ``training_state.json``, no pickle: resuming someone else's run folder runs
no code from it); resuming replays the same batches in the same order, so the loss curve continues as if
uninterrupted.

Resuming survives a process killed at any instant: every file is written atomically, a new checkpoint is complete
(and ``latest.json`` points at it) before an old one is deleted, the leftovers of a killed write are cleaned up on the
next start, and a damaged latest checkpoint (a truncated file, a ``latest.json`` that is unreadable or points nowhere)
is passed over for the newest complete one, saying which and why. What the run learned goes to ``metrics.jsonl``,
``curves.png``, TensorBoard and the console (``petvr.training.run_log``).

A finished run can be extended on purpose: resuming with a larger ``epochs`` (and nothing else changed) continues
it. The learning-rate schedule is then recomputed over the new total number of steps (warmup and decay are
fractions of the whole run), so the learning rate jumps at the resume point (after a cosine decay to zero, back up to
the new schedule's value at that step) and the loss curve differs from that of a run planned that long from the
start; ``resume`` says so. A run cannot be shortened.
"""
from __future__ import annotations

import json
import math
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..adapters import ADAPTER_CONFIG, load_adapter_weights, write_adapter_files
from ..atomic import atomic_write_folder, atomic_write_json, remove_unfinished_writes
from ..methods.base import map_video_features
from .distributed import all_gather_with_grad, barrier, is_main_process, rank, world_size
from .losses import symmetric_infonce
from .optim import build_optimizer
from .run_log import RunLog, epoch_line
from .state import load_state, save_state

TRAINING_STATE = "training_state"  # .safetensors (tensors) + .json (the rest)
PICKLED_TRAINING_STATE = "training_state.pt"  # written before the format above; never unpickled
RESUMABLE_CHANGES = ("checkpoint_every_steps", "keep_checkpoints")  # may change between stop and resume
CHECKPOINT_PREFIX = "step-"
PRECISIONS = ("fp32", "bf16", "fp16-weights")


@dataclass
class TrainConfig:
    """The optimisation part of a recipe; defaults are CLIP4Clip's README settings."""

    epochs: int = 5
    batch_size: int = 128  # global, over all processes and accumulation steps
    gradient_accumulation_steps: int = 1
    optimizer: str = "bertadam"
    lr: float = 1e-4
    coef_lr: float = 1e-3  # backbone weights train at lr * coef_lr
    weight_decay: float = 0.2
    warmup: float = 0.1
    schedule: str | None = None  # default: warmup_cosine (BertAdam) / cosine_with_warmup (AdamW)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    max_grad_norm: float = 1.0  # BertAdam's per-parameter clip; -1 disables
    clip_grad_norm: float = 1.0  # global clip in the loop; 0 disables
    no_decay_norms_and_embeddings: bool = False
    # "fp32"; "bf16": autocast (GPU); "fp16-weights": CLIP4Clip's own mode, the backbone's matrices stored and updated
    # in fp16 without master weights (LayerNorms, embeddings, logit scale and new modules stay fp32). At lr 1e-7 most
    # fp16 updates round to nothing; that is how CLIP4Clip trained, and what reproduces its numbers (reference §1.3).
    precision: str = "fp32"
    max_logit_scale: float = 100.0
    seed: int = 42
    checkpoint_every_steps: int = 0  # 0: at the end of every epoch
    keep_checkpoints: int = 2

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be at least 1, got {self.keep_checkpoints}")
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by gradient_accumulation_steps "
                             f"{self.gradient_accumulation_steps}")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


class ContrastiveObjective(nn.Module):
    """Wraps a ``RetrievalModel`` so DDP sees one forward: encode, gather (loose heads), score, loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, token_ids: Tensor, token_mask: Tensor, frames: Tensor, frame_mask: Tensor) -> dict[str, Tensor]:
        """The batch's ``loss`` (symmetric InfoNCE plus the method's extra terms) and each term by name."""
        text = self.model.encode_text(token_ids, token_mask)
        video = self.model.encode_video(frames, frame_mask)
        if not self.model.method.pairwise:
            text, frame_mask = all_gather_with_grad(text), all_gather_with_grad(frame_mask)
            video = map_video_features(all_gather_with_grad, video)
        logits = self.model.similarity(text, video, frame_mask)
        terms = {"infonce": symmetric_infonce(logits), **self.model.method.loss_terms(text, video, frame_mask, logits)}
        return {"loss": sum(terms.values()), **terms}


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of dataset items (tensors stacked, everything else listed)."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        batch[key] = torch.stack(values) if isinstance(values[0], Tensor) else values
    return batch


class Trainer:
    """Trains ``model`` (a ``RetrievalModel``) on ``dataset`` items ``{"video_id", "token_ids", "token_mask",
    "frames", "frame_mask"}``; ``evaluate(model) -> metrics dict`` runs after each epoch when given."""

    def __init__(self, model: nn.Module, dataset: Dataset, config: TrainConfig, run_dir: str | Path,
                 evaluate: Callable[[nn.Module], dict] | None = None, recipe: dict | None = None,
                 device: torch.device | str = "cpu", selection_metric: str = "t2v/R@1", num_workers: int = 0):
        self.model = model.to(device)
        self.model.store_weights(config.precision)  # the method's policy (fp16-weights: the backbone's own matrices)
        self.dataset = dataset
        self.config = config
        self.run_dir = Path(run_dir)
        self.evaluate = evaluate
        self.recipe = recipe or {}
        self.device = torch.device(device)
        self.selection_metric = selection_metric
        self.num_workers = num_workers
        self.world = world_size()
        per_step = config.batch_size // self.world
        if per_step * self.world != config.batch_size or per_step % config.gradient_accumulation_steps:
            raise ValueError(f"global batch {config.batch_size} does not split over {self.world} processes x "
                             f"{config.gradient_accumulation_steps} accumulation steps")
        self.micro_batch = per_step // config.gradient_accumulation_steps
        self.steps_per_epoch = len(dataset) // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(dataset)} training samples are fewer than one batch of {config.batch_size}")
        self.total_steps = self.steps_per_epoch * config.epochs
        self.objective = ContrastiveObjective(self.model)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # find_unused_parameters: some heads keep weights their forward never uses (seqLSTM's position table,
            # kept for CLIP4Clip's parameter count), as CLIP4Clip's own DDP setup allows.
            self.objective = nn.parallel.DistributedDataParallel(self.objective, device_ids=ids,
                                                                 find_unused_parameters=True)
        self.optimizer, self.scheduler = build_optimizer(
            config.optimizer, self.model.named_parameters(), lr=config.lr, total_steps=self.total_steps,
            weight_decay=config.weight_decay, warmup=config.warmup, schedule=config.schedule,
            betas=config.betas, eps=config.eps, max_grad_norm=config.max_grad_norm,
            group_of=self.model.parameter_group, lr_multipliers=self.model.method.lr_multipliers(config.coef_lr),
            no_decay_norms_and_embeddings=config.no_decay_norms_and_embeddings)
        self.step = 0
        self.history: list[dict] = []
        self.best: dict | None = None
        self.last_metrics: dict = {}
        self.log = RunLog(self.run_dir) if is_main_process() else None

    # -- data order: a permutation per epoch from (seed, epoch); rank r takes its slice of every global batch --
    def _epoch_batches(self, epoch: int, first_step: int) -> list[list[int]]:
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.config.seed + epoch))
        batches = []
        for step in range(first_step, self.steps_per_epoch):
            global_batch = order[step * self.config.batch_size:(step + 1) * self.config.batch_size]
            local = global_batch.view(self.world, -1)[rank()]
            batches += [chunk.tolist() for chunk in local.split(self.micro_batch)]
        return batches

    def _loader(self, epoch: int, first_step: int) -> DataLoader:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        # Its own generator: creating the iterator then draws nothing from the global RNG, which resume restores.
        return DataLoader(self.dataset, batch_sampler=self._epoch_batches(epoch, first_step),
                          num_workers=self.num_workers, collate_fn=collate_samples,
                          generator=torch.Generator().manual_seed(self.config.seed + epoch))

    def _trainable(self) -> list[Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _learning_rates(self) -> dict[str, float]:
        """The lr the next optimizer step uses, per learning-rate group (``"backbone"``, ``"new"``, ...)."""
        lrs = (self.optimizer.scheduled_lr() if hasattr(self.optimizer, "scheduled_lr")
               else [group["lr"] for group in self.optimizer.param_groups])
        return {group.get("name", str(index)).split("/")[0]: lr
                for index, (group, lr) in enumerate(zip(self.optimizer.param_groups, lrs))}

    def _record(self, entry: dict) -> None:
        """Add ``entry`` to the history and (main process) to ``metrics.jsonl`` / TensorBoard."""
        self.history.append(entry)
        if self.log is not None:
            self.log.add(entry)

    def train(self, stop_after_steps: int | None = None) -> dict:
        """Run to the end of the last epoch, or stop (with a checkpoint) once ``self.step == stop_after_steps``.

        An epoch's end is evaluated and checkpointed before any stop, so a resumed run never misses an evaluation.
        A run that has already finished trains nothing: it says so and rewrites its final adapter and curves.
        """
        config = self.config
        if self.step >= self.total_steps and is_main_process():
            print(f"run already finished at epoch {config.epochs}/{config.epochs}; nothing to do — raise train.epochs "
                  "to extend it")
        if self.log is not None:
            self.log.start(self.history, self.step)
        self.model.train()
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
        start_epoch, start_step = divmod(self.step, self.steps_per_epoch)
        for epoch in range(start_epoch, config.epochs):
            first = start_step if epoch == start_epoch else 0
            progress = tqdm(total=self.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{config.epochs}",
                            unit="step", disable=not is_main_process())
            micro_batches = iter(self._loader(epoch, first))
            for _ in range(first, self.steps_per_epoch):
                step_terms: dict[str, float] = {}
                for _ in range(config.gradient_accumulation_steps):
                    batch = next(micro_batches)
                    with autocast:
                        terms = self.objective(*(batch[k].to(self.device) for k in ("token_ids", "token_mask", "frames", "frame_mask")))
                    self._stop_unless_finite(terms["loss"], epoch, batch)
                    (terms["loss"] / config.gradient_accumulation_steps).backward()
                    for name, value in terms.items():
                        step_terms[name] = step_terms.get(name, 0.0) + value.item() / config.gradient_accumulation_steps
                step_loss = step_terms["loss"]
                learning_rates = self._learning_rates()
                if config.clip_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self._trainable(), config.clip_grad_norm)
                self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                with torch.no_grad():
                    self.model.backbone.logit_scale.clamp_(max=math.log(config.max_logit_scale))
                self.step += 1
                extra = {name: value for name, value in step_terms.items() if name not in ("loss", "infonce")}
                self._record({"step": self.step, "epoch": epoch + 1, "loss": step_loss, **extra,
                              "lr": learning_rates})
                progress.update(1)
                progress.set_postfix(loss=f"{step_loss:.4f}")
                if self.step % self.steps_per_epoch == 0:
                    break  # the epoch's end: evaluated and checkpointed below
                if self.step == stop_after_steps or (
                        config.checkpoint_every_steps and self.step % config.checkpoint_every_steps == 0):
                    self.save_checkpoint()
                if self.step == stop_after_steps:
                    progress.close()
                    return self._stopped()
            progress.close()
            self.last_metrics = self._evaluate_epoch(epoch)
            if is_main_process():
                print(epoch_line(epoch + 1, config.epochs, self.history, self.last_metrics))
            self.save_checkpoint(self.last_metrics)
            if self.step == stop_after_steps:
                return self._stopped()
        final = self.run_dir / "adapter"  # the last epoch's weights with the last epoch's metrics; best/ holds the best
        if self.log is not None:
            self.model.save_adapter(final, self.recipe, self.last_metrics)
            self.log.write_curves(self.history)
            self.log.close()
        return {"history": self.history, "best": self.best, "adapter": str(final)}

    def _stopped(self) -> dict:
        if self.log is not None:
            self.log.close()
        return {"history": self.history, "best": self.best, "adapter": None}

    def _stop_unless_finite(self, loss: Tensor, epoch: int, batch: dict) -> None:
        """Raise, naming the batch's videos, when the loss is NaN or infinite on any process."""
        finite = torch.isfinite(loss.detach()).float()
        if world_size() > 1:  # pairwise heads compute a local loss: every rank must stop together
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not finite.item():
            raise FloatingPointError(
                f"loss is {loss.item()} at epoch {epoch + 1}, step {self.step + 1}; stopping. Videos in this "
                f"batch on this process: {', '.join(map(str, batch['video_id']))}")

    def _evaluate_epoch(self, epoch: int) -> dict:
        """Evaluate on the main process (the others wait at a barrier), keep the best adapter in ``best/``."""
        if self.evaluate is None:
            return {}
        if not is_main_process():
            barrier()
            return {}
        self.model.eval()
        metrics = self.evaluate(self.model)
        self.model.train()
        direction, key = self.selection_metric.split("/")
        score = metrics[direction][key]
        if self.best is None or score > self.best["score"]:
            self.best = {"epoch": epoch + 1, "step": self.step, "score": score, "metrics": metrics}
            self.model.save_adapter(self.run_dir / "best", self.recipe, metrics)
        self._record({"step": self.step, "epoch": epoch + 1, "eval": metrics})
        barrier()
        return metrics

    # -- checkpoints --
    def _training_state(self) -> dict:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "history": self.history,
            "best": self.best,
            "last_metrics": self.last_metrics,
            "train_config": asdict(self.config),
        }

    def save_checkpoint(self, metrics: dict | None = None) -> Path | None:
        """Write ``run_dir/checkpoints/step-N`` atomically, point ``run_dir/latest.json`` at it, and only then delete
        the checkpoints beyond the newest ``keep_checkpoints``, so a complete one exists at every instant."""
        if not is_main_process():
            return None
        folder = self.run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{self.step:08d}"
        state = self._training_state()

        def write(tmp: Path) -> None:
            write_adapter_files(self.model, tmp, self.recipe, metrics)
            save_state(state, tmp, TRAINING_STATE)

        atomic_write_folder(folder, write)
        atomic_write_json(self.run_dir / "latest.json", {"checkpoint": folder.name, "step": self.step})
        older = [old for old in _checkpoints(folder.parent) if old != folder]
        for old in older[self.config.keep_checkpoints - 1:]:
            shutil.rmtree(old, ignore_errors=True)
        return folder

    def start_fresh(self) -> None:
        """Forget earlier checkpoints in ``run_dir`` (``--no-resume``), so the new run's are the only ones."""
        if is_main_process():
            shutil.rmtree(self.run_dir / "checkpoints", ignore_errors=True)
            (self.run_dir / "latest.json").unlink(missing_ok=True)
            self._remove_unfinished_writes()
        barrier()

    def _remove_unfinished_writes(self) -> None:
        for folder in (self.run_dir, self.run_dir / "checkpoints"):
            for done in remove_unfinished_writes(folder):
                print(done)

    def _read_checkpoint(self, folder: Path) -> dict:
        """Load ``folder``'s weights into the model and return its training state; ``ValueError`` saying what is
        wrong when the folder is damaged or incomplete."""
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such checkpoint folder")
        if (folder / PICKLED_TRAINING_STATE).exists() and not (folder / f"{TRAINING_STATE}.json").exists():
            raise ValueError(f"{folder / PICKLED_TRAINING_STATE}: a training state in the old pickle format, which "
                             "petvr does not load because unpickling a file can run code from it; start over "
                             "(--no-resume) or use another output folder")
        state = load_state(folder, TRAINING_STATE)
        try:
            json.loads((folder / ADAPTER_CONFIG).read_text())
        except (OSError, ValueError) as error:
            raise ValueError(f"{folder / ADAPTER_CONFIG}: cannot read the adapter description ({error})") from error
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError(f"{folder / TRAINING_STATE}.json: no step count in the training state")
        load_adapter_weights(self.model, folder)
        return state

    def _check_setup(self, folder: Path, saved: dict) -> None:
        """Refuse a changed training setup, except ``RESUMABLE_CHANGES`` and more ``epochs`` (an extension)."""
        changed = {key: (value, getattr(self.config, key)) for key, value in saved.items()
                   if key not in RESUMABLE_CHANGES + ("epochs",)
                   and _plain(getattr(self.config, key, None)) != _plain(value)}
        if self.config.epochs < saved["epochs"]:
            changed["epochs"] = (saved["epochs"], self.config.epochs)
        if changed:
            details = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in changed.items())
            raise ValueError(f"{folder}: cannot resume with a different training setup ({details}); a run can be "
                             "extended to more epochs, nothing else; use another output folder or start over")

    def _extend_schedule(self, saved_epochs: int) -> None:
        """Recompute the lr schedule over the extended run's ``total_steps`` (the optimizer's and scheduler's state
        hold the old total)."""
        for group in self.optimizer.param_groups:
            if group.get("t_total", -1) != -1:  # BertAdam: the schedule runs inside the optimizer
                group["t_total"] = self.total_steps
        if self.scheduler is not None:
            for multiplier in self.scheduler.lr_lambdas:
                multiplier.total_steps = self.total_steps
            for group, base_lr, multiplier in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                                  self.scheduler.lr_lambdas):
                group["lr"] = base_lr * multiplier(self.scheduler.last_epoch)
            self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        if is_main_process():
            print(f"extending the run from {saved_epochs} to {self.config.epochs} epochs at step {self.step}: the "
                  f"learning-rate schedule is recomputed over the new total of {self.total_steps} steps (its warmup "
                  "and decay are fractions of the whole run), so the learning rate jumps here and the loss curve "
                  "differs from that of a run planned this long")

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint in ``run_dir``; returns whether it resumed.

        ``latest.json`` names the newest checkpoint; when it is unreadable, points nowhere, or its checkpoint is
        damaged, the newest complete checkpoint is used instead, saying which and why, and the damaged ones newer than
        it are moved aside (``checkpoints/damaged-step-N``) so they are neither resumed nor counted as kept. The
        leftovers of writes a killed process left half-done are cleaned up first.
        """
        checkpoints = self.run_dir / "checkpoints"
        if is_main_process():
            self._remove_unfinished_writes()
        barrier()
        pointer = self.run_dir / "latest.json"
        candidates = _checkpoints(checkpoints)
        if not pointer.exists() and not candidates:
            return False
        problems: list[str] = []
        named = None
        try:
            named = json.loads(pointer.read_text())["checkpoint"]
            if not (checkpoints / named).is_dir():
                problems.append(f"{pointer} names {named}, which does not exist")
        except (OSError, ValueError, KeyError, TypeError) as error:
            problems.append(f"{pointer}: cannot read which checkpoint is the latest ({error})")
        state = folder = None
        for folder in candidates:
            try:
                state = self._read_checkpoint(folder)
                break
            except ValueError as error:
                problems.append(str(error))
        if state is None:
            raise ValueError(f"{self.run_dir}: no complete checkpoint to resume from: {'; '.join(problems)}; start "
                             "over (--no-resume) or use another output folder")
        if folder.name != named and is_main_process():
            if not problems:  # killed after the checkpoint was complete, before latest.json moved on
                problems.append(f"{pointer} names {named}, an older one")
            print(f"resuming from {folder} (step {state['step']}), the newest complete checkpoint, because: "
                  f"{'; '.join(problems)}")
            for damaged in candidates[:candidates.index(folder)]:
                aside = damaged.with_name(f"damaged-{damaged.name}")
                shutil.rmtree(aside, ignore_errors=True)
                damaged.rename(aside)
                print(f"moved the damaged {damaged.name} aside to {aside}")
            atomic_write_json(pointer, {"checkpoint": folder.name, "step": state["step"]})
        self._check_setup(folder, state["train_config"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.step, self.history, self.best = state["step"], state["history"], state["best"]
        self.last_metrics = state["last_metrics"]
        if state["train_config"]["epochs"] != self.config.epochs:
            self._extend_schedule(state["train_config"]["epochs"])
        return True


def _checkpoints(folder: Path) -> list[Path]:
    """The ``step-N`` checkpoint folders in ``folder``, newest first."""
    found = []
    for path in folder.glob(f"{CHECKPOINT_PREFIX}*") if folder.is_dir() else []:
        number = path.name[len(CHECKPOINT_PREFIX):]
        if number.isdigit() and path.is_dir():
            found.append((int(number), path))
    return [path for _, path in sorted(found, reverse=True)]
