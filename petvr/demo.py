"""``petvr demo``: the whole pipeline on the embedded default, end to end, on 2 CPU cores in minutes.

Generates the synthetic world (if absent), loads the shipped small CLIP (a stand-in for OpenAI's CLIP, pretrained by
``petvr pretrain`` on synthetic image-captions), evaluates it zero-shot, trains one parameter-efficient method,
evaluates again (on the test split and on the hard temporal split), saves the adapter, prints a before/after table and
answers three text queries with their top videos.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from .backbone.checkpoints import load_backbone
from .backbone.tokenizer import Tokenizer
from .data.dataset import FrameSource, VideoDataset
from .synthetic import generate_world
from .evaluation.evaluate import encode_captions, encode_videos, similarity_matrix
from .methods import RetrievalModel
from .training.recipe import load_recipe, sampling_config, shipped_recipes_dir
from .training.run import make_evaluator, read_split, run_recipe

# The method that does best on the embedded default within the demo's time (docs/benchmarks.md): DGL-Linear, whose
# 2 epochs take about as long as CLIP4Clip meanP's 5.
RECIPE = shipped_recipes_dir() / "synthetic" / "dgl_linear.toml"  # package data: works from any directory
LABEL = "dgl (linear)"
DEFAULT_EPOCHS = 2
COLLECTION = "studio"
QUERIES = ("a red circle moves left", "a square appears and then turns blue", "a small star grows")


def _row(name: str, metrics: dict) -> str:
    return f"{name:<34}" + "".join(f"{metrics[d][k]:>9.1f}" for d in ("t2v", "v2t") for k in ("R@1", "R@5", "MnR"))


def run_demo(workdir: Path, epochs: int = DEFAULT_EPOCHS) -> dict:
    started = time.time()
    torch.manual_seed(0)
    world = generate_world(workdir / "world", size="small")
    recipe = load_recipe(RECIPE, [f"train.epochs={epochs}", f"data.root=\"{world.root / COLLECTION}\"",
                                  f"data.cache_dir=\"{workdir / 'cache'}\""])
    temporal = copy.deepcopy(recipe)  # the hard split: every video beside its time reversal
    temporal["data"]["test"] = {"annotation_dir": "temporal", "video_dir": "temporal/videos", "split": "test"}
    backbone_name = recipe["backbone"]["name"]

    zero_shot = RetrievalModel(load_backbone(backbone_name), "zero_shot")
    evaluators = {"test": make_evaluator(recipe, zero_shot, "cpu"), "temporal": make_evaluator(temporal, zero_shot, "cpu")}
    print(f"zero-shot evaluation of {backbone_name} on the synthetic '{COLLECTION}' collection")
    before = {split: evaluate(zero_shot) for split, evaluate in evaluators.items()}
    result = run_recipe(recipe, workdir / "runs" / f"{COLLECTION}-{RECIPE.stem}", resume=False)
    trained = RetrievalModel.from_adapter(result["adapter"], backbone=load_backbone(backbone_name))
    after = {split: evaluate(trained) for split, evaluate in evaluators.items()}

    print(f"\n{trained.format_parameter_report()}")
    print(f"{'model / split':<34}" + "".join(f"{d + ' ' + k:>9}" for d in ("t2v", "v2t") for k in ("R@1", "R@5", "MnR")))
    for split in evaluators:
        print(_row(f"zero-shot        / {split}", before[split]))
        print(_row(f"{LABEL:<16} / {split}", after[split]))
    print(f"adapter saved to {result['adapter']}")
    _answer_queries(trained, recipe)
    print(f"\ndemo finished in {time.time() - started:.0f} s")
    return {"before": before, "after": after, "adapter": result["adapter"]}


def _answer_queries(model: RetrievalModel, recipe: dict) -> None:
    """Print the top three test videos (with one of their captions) for each of ``QUERIES``."""
    test = read_split(recipe, "test")
    frames = FrameSource(sampling_config(recipe, model.backbone, train=False), recipe["data"]["cache_dir"])
    tokenizer = Tokenizer(recipe["data"]["max_words"])
    video_embeddings, video_mask = encode_videos(model, VideoDataset(test.videos, frames), batch_size=64, progress=False)
    scores = similarity_matrix(model, encode_captions(model, list(QUERIES), tokenizer, progress=False),
                               video_embeddings, video_mask, progress=False)
    for query, row in zip(QUERIES, scores):
        print(f"\nquery: {query!r}")
        for rank, index in enumerate(row.topk(3).indices.tolist(), 1):
            video = test.videos[index]
            print(f"  {rank}. {video.video_id}: {video.captions[0]}")
