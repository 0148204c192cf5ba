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
from .data.readers import read_dataset
from .data.synthetic import generate_world
from .evaluation.evaluate import encode_captions, encode_videos, evaluate_split, similarity_matrix
from .methods import RetrievalModel
from .training.recipe import load_recipe, run_recipe, sampling_config

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "synthetic" / "clip4clip_meanP.toml"
COLLECTION = "studio"
QUERIES = ("a red circle moves left", "a square appears and then turns blue", "a small star grows")


def _row(name: str, metrics: dict) -> str:
    return f"{name:<34}" + "".join(f"{metrics[d][k]:>9.1f}" for d in ("t2v", "v2t") for k in ("R@1", "R@5", "MnR"))


def run_demo(workdir: Path, epochs: int = 5) -> dict:
    started = time.time()
    torch.manual_seed(0)
    world = generate_world(workdir / "world", size="small")
    recipe = load_recipe(RECIPE, [f"train.epochs={epochs}"])
    recipe["data"]["root"] = str(world.root / COLLECTION)
    recipe["data"]["cache_dir"] = str(workdir / "cache")
    tokenizer = Tokenizer(recipe["data"]["max_words"])
    backbone_name = recipe["backbone"]["name"]

    test = read_dataset("msrvtt", annotation_dir=world.dataset(COLLECTION, "msrvtt"),
                        video_dir=world.dataset(COLLECTION, "msrvtt") / "videos", split="test")
    temporal = read_dataset("msrvtt", annotation_dir=world.dataset(COLLECTION, "temporal"),
                            video_dir=world.dataset(COLLECTION, "temporal") / "videos", split="test")
    zero_shot = RetrievalModel(load_backbone(backbone_name), "zero_shot")
    frames = FrameSource(sampling_config(recipe, zero_shot.backbone, train=False), recipe["data"]["cache_dir"])

    def evaluate(model) -> dict:
        return {"test": evaluate_split(model, test, frames, tokenizer, batch_size=64),
                "temporal": evaluate_split(model, temporal, frames, tokenizer, batch_size=64)}

    print(f"zero-shot evaluation of {backbone_name} on the synthetic '{COLLECTION}' collection")
    before = evaluate(zero_shot)
    result = run_recipe(copy.deepcopy(recipe), workdir / "runs" / f"{COLLECTION}-clip4clip-meanP", resume=False)
    from .checkpoint import load_adapter

    trained, _ = load_adapter(result["adapter"], backbone=load_backbone(backbone_name))
    after = evaluate(trained)

    print(f"\n{trained.format_parameter_report()}")
    header = f"{'model / split':<34}" + "".join(f"{d + ' ' + k:>9}" for d in ("t2v", "v2t") for k in ("R@1", "R@5", "MnR"))
    print(header)
    for split in ("test", "temporal"):
        print(_row(f"zero-shot        / {split}", before[split]))
        print(_row(f"clip4clip meanP  / {split}", after[split]))
    print(f"adapter saved to {result['adapter']}")

    video_embeddings, video_mask = encode_videos(trained, VideoDataset(test.videos, frames), batch_size=64, progress=False)
    scores = similarity_matrix(trained, encode_captions(trained, list(QUERIES), tokenizer, progress=False),
                               video_embeddings, video_mask, progress=False)
    for query, row in zip(QUERIES, scores):
        print(f"\nquery: {query!r}")
        for rank, index in enumerate(row.topk(3).indices.tolist(), 1):
            video = test.videos[index]
            print(f"  {rank}. {video.video_id}: {video.captions[0]}")
    print(f"\ndemo finished in {time.time() - started:.0f} s")
    return {"before": before, "after": after, "adapter": result["adapter"]}
