"""``petvr compare``: the table (and figure) every PETL paper shows, for any set of recipes or run folders.

Each entry is a run folder (holding ``adapter/`` or ``latest.json``) or a recipe (a file or a shipped name). A recipe
is trained into ``runs_dir/<its name>`` unless that run has finished (an interrupted one resumes), then every run is
evaluated on its recipe's test split and on any extra splits given (e.g. the synthetic world's temporal split). The
result is one row per run: method, trainable parameters (count and % of the backbone), text-to-video and
video-to-text R@1/5/10 (and MdR) on each split, written as Markdown and CSV, with a plot of text-to-video R@1 against
trainable parameters on a log axis, one labelled point per run.

The reported weights are the run's final ones (``adapter/``), not the epoch that scored best on the test split, so no
number in the table is selected on the data it reports.
"""
from __future__ import annotations

import copy
import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .adapters import ADAPTER_CONFIG
from .atomic import atomic_write
from .methods import RetrievalModel
from .training.recipe import load_recipe, with_absolute_paths
from .training.run import build_model, make_evaluator, run_recipe

DIRECTIONS = ("t2v", "v2t")
KS = ("R@1", "R@5", "R@10")


@dataclass
class ComparisonRow:
    """One run: its label, method, parameter report, metrics per split, and any extra columns (benchmarks add time
    and memory ratios)."""

    label: str
    method: str
    parameters: dict[str, Any]
    metrics: dict[str, dict]  # split name -> retrieval_metrics() result
    run_dir: str
    extra: dict[str, Any] = field(default_factory=dict)


def is_run_folder(entry: str | Path) -> bool:
    path = Path(entry)
    return path.is_dir() and ((path / "adapter" / ADAPTER_CONFIG).is_file() or (path / "latest.json").is_file())


def run_name(entry: str) -> str:
    """A run folder name for a recipe entry that keeps recipes of different datasets apart:
    ``"msrvtt/clip4clip"`` and ``"recipes/msrvtt/clip4clip.toml"`` -> ``"msrvtt-clip4clip"``."""
    path = Path(entry)
    stem = path.stem if path.suffix == ".toml" else path.name
    return f"{path.parent.name}-{stem}" if path.parent.name else stem


def train_entry(entry: str, runs_dir: Path, overrides: Sequence[str] = (), device: str = "cpu") -> Path:
    """The run folder of ``entry``: itself if it is one (an unfinished run is resumed to its end), else its recipe
    trained into ``runs_dir/<run_name(entry)>``; a finished run is not trained again. A method with nothing to train
    (zero-shot) is evaluated and saved as an adapter with no weights."""
    if is_run_folder(entry):
        run_dir = Path(entry)
        if (run_dir / "adapter" / ADAPTER_CONFIG).is_file():
            return run_dir
        recorded = json.loads((run_dir / "latest.json").read_text())["checkpoint"]
        recipe = json.loads((run_dir / "checkpoints" / recorded / ADAPTER_CONFIG).read_text())["recipe"]
    else:
        recipe = load_recipe(entry, list(overrides))
        run_dir = runs_dir / run_name(entry)
        if (run_dir / "adapter" / ADAPTER_CONFIG).is_file():
            return run_dir
    if build_model(recipe, shape_only=True).parameter_report()["trainable"] == 0:
        recipe = with_absolute_paths(recipe)
        model = build_model(recipe, device)
        model.save_adapter(run_dir / "adapter", recipe, make_evaluator(recipe, model, device, progress=False)(model))
    else:
        run_recipe(recipe, run_dir, resume=True)
    return run_dir


def evaluate_run(run_dir: Path, extra_splits: dict[str, dict] | None = None, device: str = "cpu",
                 label: str | None = None) -> ComparisonRow:
    """Load ``run_dir/adapter`` and evaluate it on its recipe's test split (the metrics its final epoch recorded) and
    on each of ``extra_splits`` (name -> a ``[data.test]`` table replacing the recipe's)."""
    model = RetrievalModel.from_adapter(run_dir / "adapter", device=device)
    description = model.adapter_description
    recipe = description["recipe"]
    metrics = {"test": description["metrics"]} if description["metrics"] else {
        "test": make_evaluator(recipe, model, device, progress=False)(model)}
    for name, test_table in (extra_splits or {}).items():
        variant = copy.deepcopy(recipe)
        variant["data"]["test"] = test_table
        metrics[name] = make_evaluator(variant, model, device, progress=False)(model)
    return ComparisonRow(label or run_dir.name, model.method_name, model.parameter_report(), metrics, str(run_dir))


def compare(entries: Sequence[str], runs_dir: str | Path = "runs", overrides: Sequence[str] = (),
            extra_splits: dict[str, dict] | None = None, device: str = "cpu") -> list[ComparisonRow]:
    """Train what has not been trained, then evaluate every entry (see the module docstring)."""
    run_dirs = [train_entry(entry, Path(runs_dir), overrides, device) for entry in entries]
    return [evaluate_run(run_dir, extra_splits, device) for run_dir in run_dirs]


def table_columns(rows: Sequence[ComparisonRow]) -> list[str]:
    splits = list(dict.fromkeys(split for row in rows for split in row.metrics))
    columns = ["run", "method", "trainable", "trainable %"]
    for split in splits:
        columns += [f"{split} {d} {k}" for d in DIRECTIONS for k in KS]
        columns += [f"{split} t2v MdR"]
    extra = list(dict.fromkeys(key for row in rows for key in row.extra))
    return columns + extra


def table_values(row: ComparisonRow, columns: Sequence[str]) -> list[Any]:
    values = {"run": row.label, "method": row.method, "trainable": row.parameters["trainable"],
              "trainable %": row.parameters["trainable_percent_of_backbone"], **row.extra}
    for split, metrics in row.metrics.items():
        for direction in DIRECTIONS:
            for key, value in metrics[direction].items():
                values[f"{split} {direction} {key}"] = value
    return [values.get(column, "") for column in columns]


def _format(value: Any, column: str) -> str:
    if isinstance(value, bool) or value == "":
        return str(value)
    if column == "trainable":
        return f"{value:,}"
    if column == "trainable %":
        return f"{value:.3f}"
    if isinstance(value, float):
        return f"{value:.2f}" if "ratio" in column else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[ComparisonRow]) -> str:
    columns = table_columns(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_format(v, c) for v, c in zip(table_values(row, columns), columns)) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[ComparisonRow]) -> str:
    columns = table_columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(table_values(row, columns))
    return buffer.getvalue()


def plot_recall_against_parameters(rows: Sequence[ComparisonRow], path: str | Path, split: str = "test",
                                   title: str = "") -> Path:
    """Text-to-video R@1 against trainable parameters (log axis), one labelled point per run. A run with no trained
    weights (zero-shot) is drawn as a horizontal reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    for row in rows:
        recall = row.metrics[split]["t2v"]["R@1"]
        if row.parameters["trainable"] == 0:
            axis.axhline(recall, color="grey", linestyle="--", linewidth=1)
            axis.annotate(row.label, (0.01, recall), xycoords=("axes fraction", "data"), va="bottom", fontsize=8,
                          color="grey")
            continue
        axis.scatter(row.parameters["trainable"], recall, s=30)
        axis.annotate(row.label, (row.parameters["trainable"], recall), textcoords="offset points", xytext=(5, 4),
                      fontsize=8)
    axis.set_xscale("log")
    axis.set_xlabel("trainable parameters (log scale)")
    axis.set_ylabel(f"text-to-video R@1 ({split})")
    axis.set_title(title or "R@1 against trainable parameters")
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    path = atomic_write(path, lambda tmp: figure.savefig(tmp, format="png"))
    plt.close(figure)
    return path


def write_results(rows: Sequence[ComparisonRow], folder: str | Path, name: str = "comparison",
                  title: str = "") -> dict[str, Path]:
    """``<name>.md``, ``<name>.csv`` and ``<name>.png`` in ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "markdown": atomic_write(folder / f"{name}.md", lambda tmp: tmp.write_text(markdown_table(rows))),
        "csv": atomic_write(folder / f"{name}.csv", lambda tmp: tmp.write_text(csv_table(rows))),
        "plot": plot_recall_against_parameters(rows, folder / f"{name}.png", title=title),
    }
