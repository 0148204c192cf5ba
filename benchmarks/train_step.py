"""Time per training step and peak memory: full fine-tuning vs frozen backbone + meanP, as ratios from one run.

Both configurations use the same backbone (random weights of the chosen config), batch, frames and words; each runs
in its own child process so its peak memory is its own (peak RSS on CPU, ``max_memory_allocated`` on CUDA).
``measure_step(args, method, options)`` serves any method (``benchmarks/methods.py`` uses it for every method).

    python benchmarks/train_step.py                       # ViT-B-32 shape, 4 videos x 4 frames, CPU fp32
    python benchmarks/train_step.py --device cuda --batch 32 --frames 12 --precision bf16
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import queue as queue_module
import resource
import time

import torch

CONFIGS = {
    "full fine-tuning (clip4clip, freeze 0)": ("clip4clip", {"freeze_layer_num": 0}),
    "frozen backbone + meanP (projections only)": ("clip4clip", {"freeze_layer_num": 12}),
}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_step(args: argparse.Namespace, method: str, method_config: dict):
    """The model of ``method`` on a random backbone of ``args.model`` and one training step on a random batch of
    ``args.batch`` videos x ``args.frames`` frames: returns (model, step), ``step()`` running forward, backward and
    the optimizer. Shared by ``measure_step`` and ``benchmarks/memory.py``'s profile."""
    from petvr.backbone import create_backbone
    from petvr.methods import RetrievalModel
    from petvr.training.trainer import ContrastiveObjective
    from petvr.training.optim import build_optimizer

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backbone = create_backbone(args.model)
    layers = max(backbone.config.vision.layers, backbone.config.text.layers)
    config = dict(method_config)
    if "freeze_layer_num" in config:
        config["freeze_layer_num"] = min(config["freeze_layer_num"], layers)
    model = RetrievalModel(backbone, method, **config).to(device)
    objective = ContrastiveObjective(model)
    optimizer, _ = build_optimizer("bertadam", model.named_parameters(), lr=1e-4, total_steps=100,
                                   group_of=model.parameter_group, lr_multipliers=model.method.lr_multipliers(1e-3))
    size = backbone.config.vision.image_size
    frames = torch.randn(args.batch, args.frames, 3, size, size, device=device)
    frame_mask = torch.ones(args.batch, args.frames, dtype=torch.bool, device=device)
    token_ids = torch.randint(1, 49000, (args.batch, args.words), device=device)
    token_ids[:, -1] = 49407
    token_mask = torch.ones_like(token_ids, dtype=torch.bool)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def step() -> None:
        with autocast:
            loss = objective(token_ids, token_mask, frames, frame_mask)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def _measure(args: argparse.Namespace, method: str, method_config: dict, queue: mp.Queue) -> None:
    model, step = build_step(args, method, method_config)
    device = torch.device(args.device)
    baseline_rss = _peak_rss_mb()
    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _peak_rss_mb()
    queue.put({"seconds_per_step": sorted(times)[len(times) // 2], "peak_mb": peak,
               "peak_over_model_mb": peak - (0 if device.type == "cuda" else baseline_rss),
               "trainable": model.parameter_report()["trainable"]})


def measure_step(args: argparse.Namespace, method: str, method_config: dict, target=None) -> dict:
    """Median seconds per training step, peak memory and trainable count of one method, in a child process.
    ``target(args, method, method_config, queue)`` (a module-level function) replaces the measurement."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target or _measure, args=(args, method, method_config, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not process.is_alive():
                raise RuntimeError(f"timing {method} {method_config} failed in its child process (exit code "
                                   f"{process.exitcode}); its traceback is above") from None
    process.join()
    return result


def add_step_arguments(parser: argparse.ArgumentParser, model: str = "ViT-B-32", batch: int = 4, frames: int = 4) -> None:
    parser.add_argument("--model", default=model, help="backbone config whose shape is timed (random weights)")
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--frames", type=int, default=frames)
    parser.add_argument("--words", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_arguments(parser)
    args = parser.parse_args()
    results = {name: measure_step(args, method, config) for name, (method, config) in CONFIGS.items()}
    print(f"{args.model}, batch {args.batch} videos x {args.frames} frames, {args.words} words, {args.device} "
          f"{args.precision}, median of {args.steps} steps")
    print(f"{'configuration':<46}{'trainable':>14}{'s/step':>10}{'peak MB':>10}{'peak-model MB':>15}")
    for name, r in results.items():
        print(f"{name:<46}{r['trainable']:>14,}{r['seconds_per_step']:>10.3f}{r['peak_mb']:>10.0f}"
              f"{r['peak_over_model_mb']:>15.0f}")
    full, frozen = results.values()
    print(f"time ratio full / frozen: {full['seconds_per_step'] / frozen['seconds_per_step']:.2f}x")
    print(f"peak memory ratio full / frozen: {full['peak_mb'] / frozen['peak_mb']:.2f}x "
          f"(above the model: {full['peak_over_model_mb'] / max(frozen['peak_over_model_mb'], 1):.2f}x)")


if __name__ == "__main__":
    main()
