"""RAP (a reconstruction) ablation on the embedded default, and its per-pair evaluation cost against meanP.

Quality: ``petvr compare`` on ``synthetic/rap`` with one option changed per row (LoRM only = the light variant, ASA
only, both; rank r; top-k; with ``--more`` also r 8, top-1, the text-free selection, LoRM in the blocks, and CLIP4Clip
meanP and full fine-tuning trained in the same run), on the synthetic world's test split and its temporal split
(every video beside its time reversal). Each row is one training run: the same world, data, epochs, batch and seed
as ``benchmarks/methods.py`` (docs/results.md), whose rows are the reference.

Cost: the time to score every (text, video) pair of an evaluation block by block (``similarity_matrix``, features
already cached), RAP's text-conditioned scoring against meanP's, on ViT-B/32 shapes (12 frames, 49 patches, D = 512)
with random features, and each one's multiply-adds per pair.

    python benchmarks/rap_ablation.py --workdir /tmp/petvr-rap            # 1 seed, 1 epoch: ~20 min on 2 shared cores
    python benchmarks/rap_ablation.py --seeds 0 1 2 --epochs 5 --out docs/rap.md
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from petvr.backbone import create_backbone
from petvr.compare import ComparisonRow, compare, markdown_table
from petvr.evaluation.evaluate import similarity_matrix
from petvr.methods import RetrievalModel
from petvr.synthetic import generate_world

TEMPORAL = {"annotation_dir": "temporal", "video_dir": "temporal/videos", "split": "test"}
COLLECTION = "studio"
VARIANTS = [  # (label, recipe, method overrides); synthetic/rap's defaults: LoRM on the output, r 4, conv factors, top-4
    ("LoRM + ASA (rap: r 4, top-4)", "synthetic/rap", []),
    ("LoRM only (rap_light)", "synthetic/rap_light", []),
    ("ASA only", "synthetic/rap", ["method.lorm=\"off\""]),
    ("LoRM + ASA, r 1", "synthetic/rap", ["method.rank=1"]),
    ("LoRM + ASA, top-16", "synthetic/rap", ["method.top_k=16"]),
    ("LoRM + ASA, lr 1e-2", "synthetic/rap", ["train.lr=1e-2"]),  # the recipes' lr is the demo's 1e-3
    ("LoRM only, lr 1e-2", "synthetic/rap_light", ["train.lr=1e-2"]),
    ("LoRM + ASA, LoRM at 10x lr", "synthetic/rap", ["method.lorm_lr_scale=10.0"]),
]
EXTRA = [  # with --more: further rows (each another training run)
    ("LoRM + ASA, r 8", "synthetic/rap", ["method.rank=8"]),
    ("LoRM + ASA, top-1", "synthetic/rap", ["method.top_k=1"]),
    ("text-free selection", "synthetic/rap", ["method.selection=\"frame\""]),
    ("LoRM also before the last 4 blocks", "synthetic/rap", ["method.lorm=\"both\""]),
    ("meanP (CLIP4Clip)", "synthetic/clip4clip_meanP", []),
    ("full fine-tuning", "synthetic/clip4clip_full", []),
]


def quality(workdir: Path, seeds: list[int], epochs: int, variants: list, chosen, world_root: Path, cache: Path
            ) -> list[ComparisonRow]:
    world = generate_world(world_root, size="small")
    rows = []
    for index in chosen:  # run folders are named by index, so a later call with more rows reuses finished runs
        label, recipe, options = variants[index]
        runs = []
        for seed in seeds:
            overrides = [f"data.root=\"{world.root / COLLECTION}\"", f"data.cache_dir=\"{cache}\"",
                         f"train.seed={seed}", f"train.epochs={epochs}", *options]
            runs.extend(compare([recipe], workdir / f"runs-{index}-seed{seed}", overrides, {"temporal": TEMPORAL}))
        rows.append(mean_over_seeds(runs, label))
        print(f"{label}: test t2v R@1 {rows[-1].metrics['test']['t2v']['R@1']:.1f}, temporal t2v R@1 "
              f"{rows[-1].metrics['temporal']['t2v']['R@1']:.1f}", flush=True)
    return rows


def mean_over_seeds(runs: list[ComparisonRow], label: str) -> ComparisonRow:
    first = runs[0]
    metrics = {split: {direction: {key: statistics.fmean(run.metrics[split][direction][key] for run in runs)
                                   for key in reference[direction]} for direction in ("t2v", "v2t")}
               for split, reference in first.metrics.items()}
    return ComparisonRow(label, first.method, first.parameters, metrics, first.run_dir)


def pair_cost(num_videos: int = 128) -> str:
    """Seconds per million (text, video) pairs and multiply-adds per pair of RAP's scoring and meanP's, from cached
    features (ViT-B/32 shapes, random): ``num_videos`` texts x ``num_videos`` videos for the pairwise scorings,
    1,024 x 1,024 for the matrix products (their fixed overheads would dominate a small block)."""
    torch.manual_seed(0)
    backbone = create_backbone("ViT-B-32")  # none of these variants wraps it, so one serves all
    frames, patches, dim = 12, backbone.config.vision.grid_size ** 2, backbone.config.embed_dim
    lines = ["| scoring | trained | multiply-adds per pair | s per million pairs (CPU, block 64) | vs meanP |",
             "|---|---|---|---|---|"]
    reference = None
    for label, method, options in (("meanP (zero-shot head)", "zero_shot", {}),
                                   ("RAP, text-conditioned ASA, top-4", "rap", {}),
                                   ("RAP, top-16", "rap", {"top_k": 16}),
                                   ("RAP light or text-free (one embedding per video)", "rap", {"asa": False})):
        model = RetrievalModel(backbone, method, backbone_hash="not hashed", **options).eval()
        count = num_videos if model.method.pairwise else 1024
        texts, frame_mask = torch.randn(count, dim), torch.ones(count, frames, dtype=torch.bool)
        with torch.no_grad():
            video = torch.randn(count, frames, dim)
            if model.method.pairwise:
                asa = model.method.asa
                raw = torch.randn(count, frames, patches, dim)
                video = {"frames": video, "patches": torch.nn.functional.normalize(raw, dim=-1),
                         "patch_tokens": asa.patch_tokens(raw)}
                k, width = min(asa.top_k, patches), asa.qkv.in_features
                macs = frames * patches * dim + 2 * (frames * k) ** 2 * width + width * dim + dim
            else:
                macs = dim
            start = time.perf_counter()
            similarity_matrix(model, texts, video, frame_mask, block_size=64, progress=False)
            seconds = (time.perf_counter() - start) * 1e6 / count**2
        reference = reference or seconds
        lines.append(f"| {label} | {model.parameter_report()['trainable']:,} | {macs:,} | {seconds:.3f} | "
                     f"{seconds / reference:.0f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="bench-rap")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the tables to this Markdown file")
    parser.add_argument("--cost-only", action="store_true")
    parser.add_argument("--more", action="store_true", help="also r 8, top-1, text-free, LoRM in blocks, meanP and "
                                                             "full fine-tuning (6 more training runs)")
    parser.add_argument("--rows", nargs="+", type=int, default=None, help="only these rows (indices into the list)")
    parser.add_argument("--world", default=None, help="an existing small world to reuse (default: WORKDIR/world)")
    parser.add_argument("--cache", default=None, help="its frame cache (default: WORKDIR/cache)")
    args = parser.parse_args()
    started = time.time()
    cost = pair_cost()
    print(cost, flush=True)
    text = f"Per-pair evaluation cost (features cached; ViT-B/32 shapes):\n\n{cost}"
    if not args.cost_only:
        workdir = Path(args.workdir)
        variants = VARIANTS + (EXTRA if args.more else [])
        rows = quality(workdir, args.seeds, args.epochs, variants, args.rows or range(len(variants)),
                       Path(args.world or workdir / "world"), Path(args.cache or workdir / "cache"))
        setup = (f"{len(args.seeds)} seed(s) ({', '.join(map(str, args.seeds))}), {args.epochs} epoch(s), synthetic "
                 f"'{COLLECTION}' collection (small world), petvr-tiny; {time.time() - started:.0f} s in all")
        text = f"Ablation ({setup}):\n\n{markdown_table(rows)}\n{text}"
        print(markdown_table(rows))
        print(setup)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
