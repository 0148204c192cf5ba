"""What a run learned, in its run folder: ``metrics.jsonl``, ``curves.png``, TensorBoard, one console line per epoch.

``metrics.jsonl`` holds the trainer's history, one JSON object per line: a training step
``{"step", "epoch", "loss", "lr": {group: lr}, <the method's extra loss terms>}`` or an epoch's evaluation
``{"step", "epoch", "eval": metrics}``. Lines are appended as the run goes; when a run starts or resumes the file is
rewritten from the history the checkpoint restored, so lines written after that checkpoint by a killed process are
dropped and no step appears twice. TensorBoard events go to ``tensorboard/`` when ``torch.utils.tensorboard`` and
tensorboard are importable (nothing otherwise); on resume, events from the replayed steps are purged. Only the main
process writes (the trainer gives the others no log).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..atomic import atomic_write

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"


def _lines(entries: list[dict]) -> str:
    return "".join(json.dumps(entry, sort_keys=True) + "\n" for entry in entries)


def _summary_writer(folder: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard needs the tensorboard package
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


def epoch_line(epoch: int, epochs: int, history: list[dict], metrics: dict) -> str:
    """``epoch 3/5: loss 1.234, t2v R@1 33.3, v2t R@1 30.7``: the epoch's mean step loss and its R@1s."""
    losses = [entry["loss"] for entry in history if entry.get("epoch") == epoch and "loss" in entry]
    parts = [f"epoch {epoch}/{epochs}: loss {sum(losses) / len(losses):.4f}" if losses else f"epoch {epoch}/{epochs}:"]
    parts += [f"{direction} R@1 {metrics[direction]['R@1']:.1f}" for direction in ("t2v", "v2t")
              if isinstance(metrics.get(direction), dict) and "R@1" in metrics[direction]]
    return ", ".join(parts)


class RunLog:
    """Appends history entries to ``run_dir/metrics.jsonl`` (and TensorBoard) as the trainer makes them."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.writer = None

    def start(self, history: list[dict], step: int) -> None:
        """Rewrite ``metrics.jsonl`` from ``history`` (atomically) and open TensorBoard from ``step`` on."""
        atomic_write(self.run_dir / METRICS_FILE, lambda tmp: tmp.write_text(_lines(history)), durable=False)
        self.close()
        self.writer = _summary_writer(self.run_dir / TENSORBOARD_DIR, purge_step=step if step > 0 else None)

    def add(self, entry: dict) -> None:
        """Append one history entry (a step or an evaluation)."""
        with open(self.run_dir / METRICS_FILE, "a") as file:
            file.write(_lines([entry]))
        if self.writer is None:
            return
        step = entry["step"]
        if "loss" in entry:
            for name, value in entry.items():
                if name not in ("step", "epoch", "lr"):
                    self.writer.add_scalar(f"train/{name}", value, step)
            for group, lr in entry.get("lr", {}).items():
                self.writer.add_scalar(f"lr/{group}", lr, step)
        for direction, values in entry.get("eval", {}).items():
            if isinstance(values, dict):
                for key, value in values.items():
                    if isinstance(value, (int, float)):
                        self.writer.add_scalar(f"eval/{direction}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def write_curves(self, history: list[dict]) -> Path:
        """``curves.png``: the loss (and the method's extra terms) per step, and R@1 per epoch, written atomically."""
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        steps = [entry for entry in history if "loss" in entry]
        evaluations = [entry for entry in history if "eval" in entry]
        figure = Figure(figsize=(10, 4))
        loss_axes, recall_axes = figure.subplots(1, 2)
        terms = sorted({name for entry in steps for name in entry} - {"step", "epoch", "lr"})
        for name in terms:
            points = [(entry["step"], entry[name]) for entry in steps if name in entry]
            loss_axes.plot(*zip(*points), label=name)
        loss_axes.set(xlabel="step", ylabel="loss", title="training loss")
        if terms:
            loss_axes.legend()
        plotted = False
        for direction in ("t2v", "v2t"):
            points = [(entry["epoch"], entry["eval"][direction]["R@1"]) for entry in evaluations
                      if isinstance(entry["eval"].get(direction), dict) and "R@1" in entry["eval"][direction]
                      and math.isfinite(entry["eval"][direction]["R@1"])]
            if points:
                recall_axes.plot(*zip(*points), marker="o", label=f"{direction} R@1")
                plotted = True
        recall_axes.set(xlabel="epoch", ylabel="R@1 (%)", title="retrieval per epoch")
        if plotted:  # evaluations without recall (a pretraining record) draw nothing to label
            recall_axes.legend()
        figure.tight_layout()
        return atomic_write(self.run_dir / CURVES_FILE, lambda tmp: figure.savefig(tmp, format="png"))
