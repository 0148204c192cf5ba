"""What DGL's video sequence costs: a DGL training step against per-frame encoding and Cross-Modal Adapter.

DGL's vision tower runs one sequence of G + T (1 + k + N) tokens per video (652 on ViT-B/32 with 12 frames): every
frame's tokens plus its k local prompts attend within the frame and to the G global prompts, and the global prompts
attend to all of it. Per-frame encoding (VPT-deep here, whose 20 prompts per frame also train through every block;
the frozen backbone + meanP baseline, whose backward stops at the projections) runs T sequences of 1 + N tokens.
Every configuration runs in its own child process (``train_step.measure_step``) on the same batch; the table gives
the median step time, the peak memory (peak RSS on CPU, ``max_memory_allocated`` on CUDA) and both as ratios to
Cross-Modal Adapter's. ``--repeats`` runs the whole set again and keeps each configuration's fastest median (a
shared machine's load only ever slows a run down).

    python benchmarks/dgl_cost.py                                   # ViT-B-32, 4 videos x 12 frames, CPU fp32
    python benchmarks/dgl_cost.py --device cuda --batch 32 --precision bf16
"""
from __future__ import annotations

import argparse
import json

from train_step import add_step_arguments, measure_step

CONFIGS = {
    "frozen backbone + meanP (projections only)": ("clip4clip", {"freeze_layer_num": 12}),
    "VPT-deep, per-frame (prompt)": ("prompt", {}),
    "Cross-Modal Adapter": ("cross_modal_adapter", {}),
    "DGL-Transformer": ("dgl", {"shared_latent_space": "transformer"}),
    "DGL-Linear": ("dgl", {"shared_latent_space": "linear"}),
}
REFERENCE = "Cross-Modal Adapter"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser, batch=4, frames=12)
    parser.add_argument("--repeats", type=int, default=1, help="runs of the whole set; the fastest median is kept")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    for _ in range(args.repeats):
        for name, (method, options) in CONFIGS.items():
            if method == "dgl":
                options = {**options, "num_frames": args.frames}
            result = measure_step(args, method, options)
            best = results.get(name)
            if best is None or result["seconds_per_step"] < best["seconds_per_step"]:
                results[name] = result
    reference = results[REFERENCE]
    print(f"{args.model}, batch {args.batch} videos x {args.frames} frames, {args.words} words, {args.device} "
          f"{args.precision}, median of {args.steps} steps, best of {args.repeats} run(s)")
    print(f"{'configuration':<44}{'trainable':>12}{'s/step':>9}{'x CMA':>7}{'peak MB':>9}{'x CMA':>7}"
          f"{'peak-model MB':>15}")
    for name, r in results.items():
        print(f"{name:<44}{r['trainable']:>12,}{r['seconds_per_step']:>9.3f}"
              f"{r['seconds_per_step'] / reference['seconds_per_step']:>7.2f}{r['peak_mb']:>9.0f}"
              f"{r['peak_mb'] / reference['peak_mb']:>7.2f}{r['peak_over_model_mb']:>15.0f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
