"""Running a recipe: build its model, read its splits (filling the frame cache), train, evaluate.

``run_recipe(load_recipe("msrvtt/clip4clip"))`` trains one experiment in one process or every process of a
``torchrun``; reading and checking the recipe itself is ``petvr.training.recipe``'s job.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..backbone import create_backbone
from ..backbone.checkpoints import load_backbone
from ..backbone.tokenizer import Tokenizer
from ..data.cache import build_cache
from ..data.dataset import CaptionVideoDataset, FrameSource
from ..data.readers import read_dataset
from ..data.records import RetrievalSplit
from ..data.video import SamplingConfig
from ..evaluation.evaluate import evaluate_split
from ..evaluation.metrics import format_metrics_table
from ..methods import RetrievalModel
from ..typed_config import dataclass_from_dict
from .distributed import barrier, destroy_distributed, init_distributed_from_env, is_main_process, seed_everything
from .recipe import reader_arguments, sampling_config, with_absolute_paths
from .trainer import TrainConfig, Trainer


def build_model(recipe: dict, device: torch.device | str = "cpu", shape_only: bool = False) -> RetrievalModel:
    """The recipe's backbone with its method; ``shape_only``: on the meta device, no weights read (for parameter
    counts, e.g. whether the method trains anything)."""
    backbone_table = recipe["backbone"]
    if shape_only:
        backbone = create_backbone(backbone_table["name"], device="meta")
    else:
        backbone = load_backbone(backbone_table["name"], backbone_table.get("checkpoint") or None)
    method = dict(recipe["method"])
    model = RetrievalModel(backbone, method.pop("name"), **method)
    return model if shape_only else model.to(device)


def read_split(recipe: dict, which: str, sampling: SamplingConfig | None = None,
               report_dir: Path | None = None) -> RetrievalSplit:
    """Read the ``[data.<which>]`` split. With a ``cache_dir`` and a ``sampling`` config, every video is decoded
    into the cache first, which also finds unreadable videos before training starts. ``data.skip_unreadable``
    leaves bad annotation rows and unreadable videos out instead of stopping, and writes what it left out and why to
    ``report_dir/skipped-<which>.jsonl``."""
    data = recipe["data"]
    skip = bool(data.get("skip_unreadable", False))
    if skip and not data.get("cache_dir"):
        raise ValueError("data.skip_unreadable finds unreadable videos while filling the frame cache: set data.cache_dir")
    arguments = reader_arguments(recipe, which)
    split = read_dataset(data["dataset"], **({"skip_unreadable": True} if skip else {}), **arguments)
    if sampling is not None and data.get("cache_dir"):
        # Every clip the split can ask for: whole videos and, in sentence modes, each caption's own span.
        clips = list(split.videos) + [pair for pair in split.pairs() if pair.start is not None]
        report = build_cache(clips, sampling, data["cache_dir"], num_workers=data.get("num_workers", 0),
                             skip_unreadable=skip)
        print(f"frame cache, {which} split ({data[which].get('annotation_dir', data['dataset'])}): "
              f"{report.summary().splitlines()[0]}")
        unreadable = {str(Path(item.path).resolve()) for item in report.skipped.items}
        split.videos = [video for video in split.videos if str(Path(video.path).resolve()) not in unreadable]
        split.skipped.items.extend(report.skipped.items)
    if split.skipped:
        print(f"{data['dataset']} {which}: {split.skipped.summary()}")
        if report_dir is not None and is_main_process():
            print(f"report written to {split.skipped.write(Path(report_dir) / f'skipped-{which}.jsonl')}")
    return split


def make_evaluator(recipe: dict, model: RetrievalModel, device, progress: bool = True,
                   split: RetrievalSplit | None = None):
    """A function ``model -> metrics`` on the recipe's test split (read and cached once, unless given).

    ``data.ties`` picks the tie rule of the metrics (default ``"stable"``; ``"official"`` reproduces CLIP4Clip's
    numbers for comparing with a paper, see ``petvr.evaluation.metrics``)."""
    data = recipe["data"]
    sampling = sampling_config(recipe, model.backbone, train=False)
    split = split if split is not None else read_split(recipe, "test", sampling)
    frames = FrameSource(sampling, data.get("cache_dir") or None)
    tokenizer = Tokenizer(data.get("max_words", 32))
    return lambda m: evaluate_split(m, split, frames, tokenizer, batch_size=data.get("batch_size_val", 16),
                                    num_workers=data.get("num_workers", 0), device=device, progress=progress,
                                    ties=data.get("ties", "stable"))


def run_recipe(recipe: dict, output_dir: str | Path | None = None, resume: bool = True) -> dict:
    """Train and evaluate a recipe (one process, or every process of a ``torchrun``); returns the trainer's result.

    The splits are read and their frames cached first (by the main process, the others then find the cache full),
    then the model is built and trained; the best epoch is chosen on the test split's text-to-video R@1, as
    CLIP4Clip does (these benchmarks have no separate validation split).
    """
    recipe = with_absolute_paths(recipe)  # the copy kept in adapter.json must work from any directory
    info = init_distributed_from_env()
    try:
        train_table = dict(recipe["train"])
        output_dir = Path(output_dir or train_table.pop("output_dir", None) or Path("runs") / recipe["name"])
        train_table.pop("output_dir", None)
        config = dataclass_from_dict(TrainConfig, train_table, "[train]")
        seed_everything(config.seed)
        data = recipe["data"]
        shape_only = create_backbone(recipe["backbone"]["name"], device="meta")
        train_sampling = sampling_config(recipe, shape_only, train=True)
        splits = {}
        for turn in ("main", "others"):  # the main process fills the cache; the others wait, then read it
            if is_main_process() == (turn == "main"):
                splits = {which: read_split(recipe, which, train_sampling, output_dir) for which in ("train", "test")}
            barrier()
        model = build_model(recipe, info.device)
        samples = splits["train"].training_samples(data.get("expand_sentences", True), seed=config.seed)
        frames = FrameSource(train_sampling, data.get("cache_dir") or None)
        dataset = CaptionVideoDataset(samples, frames, Tokenizer(data.get("max_words", 32)), seed=config.seed)
        evaluate = make_evaluator(recipe, model, info.device, split=splits["test"])
        trainer = Trainer(model, dataset, config, output_dir, evaluate=evaluate, recipe=recipe, device=info.device,
                          num_workers=data.get("num_workers", 0))
        if is_main_process():
            print(model.format_parameter_report())
        if not resume:
            trainer.start_fresh()
        elif trainer.resume():
            print(f"resumed from step {trainer.step} in {output_dir}")
        result = trainer.train()
        if is_main_process() and trainer.best:
            print(f"best epoch {trainer.best['epoch']} (chosen on the test split):\n"
                  f"{format_metrics_table(trainer.best['metrics'])}")
    except BaseException:
        destroy_distributed(wait_for_others=False)  # the other processes may never reach a barrier
        raise
    destroy_distributed()
    return result
