"""Peak training memory of UniPT against full fine-tuning and Cross-Modal Adapter, the largest batch each method fits in
a fixed memory budget, and its training throughput there.

Every measurement is one training step (after a warm-up step) in a child process of its own, through
``train_step.measure_step``: the peak resident memory of that process on the CPU, ``torch.cuda.max_memory_allocated``
on a GPU. The methods are the synthetic recipes' configurations (``--recipes``; full fine-tuning is
``synthetic/clip4clip_full``) on the backbone shape ``--model`` with random weights, plus UniPT with its frozen pass in
a lower precision (``--unipt-precision``, the released code's fp16; bf16 where the CPU has no fast fp16).

1. Same batch and frames: each method's peak, as ratios to full fine-tuning and to Cross-Modal Adapter.
2. Budget: the peak is close to linear in the batch (weights and optimizer state, plus activations per video), so a
   second measurement at ``--small-batch`` gives each method's line; the largest batch under ``--budget-mb`` read from
   it is then run, and stepped down until its measured peak fits. A batch above ``--max-batch`` is not run (reported as
   "> max"): the throughput is measured at ``--max-batch`` then.

    python benchmarks/memory.py                                   # ViT-B-32 shape, 8 videos x 4 frames, CPU fp32
    python benchmarks/memory.py --device cuda --batch 32 --frames 12 --budget-mb 16000 --max-batch 512
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import resource
from pathlib import Path

import torch
from train_step import add_step_arguments, build_step, measure_step

from petvr.training.recipe import load_recipe

FULL_FINE_TUNING = "synthetic/clip4clip_full"
CROSS_MODAL_ADAPTER = "synthetic/cross_modal_adapter"
UNIPT = "synthetic/unipt"


def configurations(recipes: list[str], unipt_precision: str | None) -> dict[str, tuple[str, dict]]:
    """label -> (method, options), from each recipe's [method] table."""
    configs = {}
    defaults = [FULL_FINE_TUNING, CROSS_MODAL_ADAPTER, UNIPT]
    for name in defaults + [recipe for recipe in recipes if recipe not in defaults]:
        method = dict(load_recipe(name)["method"])
        configs[name.removeprefix("synthetic/")] = (method.pop("name"), method)
    if unipt_precision:
        method, options = configs["unipt"]
        configs[f"unipt ({unipt_precision} frozen pass)"] = (method, {**options, "backbone_precision": unipt_precision})
    return configs


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _profile(args: argparse.Namespace, method: str, options: dict, queue) -> None:
    """Where one training step's memory goes (child process): the process before the model, the weights, the trained
    weights' gradients and optimizer state, and the tensors autograd saves for backward (unique storages that are not
    weights, counted by a ``saved_tensors_hooks`` pack hook during the forward)."""
    before_model = _rss_mb()
    model, step = build_step(args, method, options)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    trained = [p for p in model.parameters() if p.requires_grad]
    mb = 2**-20
    queue.put({"process_mb": before_model, "weights_mb": sum(p.nbytes for p in model.parameters()) * mb,
               "gradients_and_adam_mb": 3 * sum(p.nbytes for p in trained) * mb,
               "saved_for_backward_mb": sum(saved.values()) * mb, "peak_mb": _rss_mb(),
               "trainable": sum(p.numel() for p in trained)})


def at_batch(args: argparse.Namespace, batch: int) -> argparse.Namespace:
    changed = copy.copy(args)
    changed.batch = batch
    return changed


def largest_batch(args: argparse.Namespace, method: str, options: dict, at_full: dict) -> dict:
    """The largest batch whose measured peak fits ``args.budget_mb`` (see the module docstring)."""
    small = measure_step(at_batch(args, args.small_batch), method, options)
    per_video = (at_full["peak_mb"] - small["peak_mb"]) / (args.batch - args.small_batch)
    fixed = small["peak_mb"] - per_video * args.small_batch
    predicted = math.floor((args.budget_mb - fixed) / per_video) if per_video > 0 else args.max_batch
    result = {"fixed_mb": fixed, "per_video_mb": per_video, "predicted_batch": predicted, "tried": []}
    batch = min(predicted, args.max_batch)
    while batch >= 1:
        run = measure_step(at_batch(args, batch), method, options)
        result["tried"].append({"batch": batch, "peak_mb": run["peak_mb"]})
        if run["peak_mb"] <= args.budget_mb:
            result.update(batch=batch, peak_mb=run["peak_mb"], samples_per_second=batch / run["seconds_per_step"],
                          capped=predicted > args.max_batch)
            return result
        batch = math.floor(batch * 0.9) if batch > 10 else batch - 1
    result.update(batch=0, peak_mb=None, samples_per_second=None, capped=False)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser, model="ViT-B-32", batch=8, frames=4)
    parser.add_argument("--recipes", nargs="*", default=[], help="more synthetic recipes to measure")
    parser.add_argument("--unipt-precision", default="bf16", help="UniPT's lower-precision frozen pass ('' for none)")
    parser.add_argument("--budget-mb", type=float, default=4000.0)
    parser.add_argument("--small-batch", type=int, default=2)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--no-budget", action="store_true", help="only the same-batch peaks and the profile")
    parser.add_argument("--json", default=None, help="write the results here too")
    parser.set_defaults(steps=1)
    args = parser.parse_args()

    configs = configurations(args.recipes, args.unipt_precision)
    same_batch = {}
    for label, (method, options) in configs.items():
        same_batch[label] = measure_step(args, method, options)
        print(f"{label}: {same_batch[label]['peak_mb']:.0f} MB at {args.batch} x {args.frames}, "
              f"{same_batch[label]['seconds_per_step']:.2f} s/step", flush=True)
    profile = {label: measure_step(args, method, options, target=_profile) for label, (method, options) in configs.items()}
    budget = {label: largest_batch(args, method, options, same_batch[label])
              for label, (method, options) in configs.items()} if not args.no_budget else {}
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "same_batch": same_batch, "profile": profile,
                                               "budget": budget}, indent=2) + "\n")

    memory = "max_memory_allocated" if args.device.startswith("cuda") else "peak RSS of the process"
    print(f"\n{args.model} shape, random weights, {args.frames} frames, {args.words} words, {args.device} "
          f"{args.precision}, {args.threads} threads; memory = {memory}")
    full, cma = same_batch["clip4clip_full"]["peak_mb"], same_batch["cross_modal_adapter"]["peak_mb"]
    print(f"\nSame batch ({args.batch} videos):")
    print(f"{'method':<32}{'trainable':>12}{'peak MB':>10}{'/ full':>8}{'/ CMA':>8}{'s/step':>9}")
    for label, r in same_batch.items():
        print(f"{label:<32}{r['trainable']:>12,}{r['peak_mb']:>10.0f}{r['peak_mb'] / full:>8.2f}{r['peak_mb'] / cma:>8.2f}"
              f"{r['seconds_per_step']:>9.2f}")
    print(f"\nWhere the memory goes at {args.batch} videos (one step; MB):")
    print(f"{'method':<32}{'process':>9}{'weights':>9}{'grad+Adam':>11}{'saved for backward':>20}{'peak':>7}")
    for label, r in profile.items():
        print(f"{label:<32}{r['process_mb']:>9.0f}{r['weights_mb']:>9.0f}{r['gradients_and_adam_mb']:>11.0f}"
              f"{r['saved_for_backward_mb']:>20.0f}{r['peak_mb']:>7.0f}")
    saved_full, saved_cma = (profile[label]["saved_for_backward_mb"] for label in ("clip4clip_full", "cross_modal_adapter"))
    for label in profile:
        if label.startswith("unipt"):
            print(f"{label}: saved for backward {profile[label]['saved_for_backward_mb'] / saved_full:.3f}x full "
                  f"fine-tuning, {profile[label]['saved_for_backward_mb'] / saved_cma:.3f}x Cross-Modal Adapter")
    if not budget:
        return
    print(f"\nBudget {args.budget_mb:.0f} MB (line from batches {args.small_batch} and {args.batch}; at most "
          f"{args.max_batch} run):")
    print(f"{'method':<32}{'fixed MB':>10}{'MB/video':>10}{'line':>7}{'batch':>8}{'peak MB':>10}{'samples/s':>11}")
    for label, r in budget.items():
        batch = f">{r['batch']}" if r["capped"] else str(r["batch"])
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "-"
        speed = f"{r['samples_per_second']:.2f}" if r["samples_per_second"] is not None else "-"
        print(f"{label:<32}{r['fixed_mb']:>10.0f}{r['per_video_mb']:>10.1f}{r['predicted_batch']:>7}{batch:>8}"
              f"{peak:>10}{speed:>11}")


if __name__ == "__main__":
    main()
