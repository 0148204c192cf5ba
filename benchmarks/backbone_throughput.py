"""Backbone throughput: petvr vs open_clip on the same weights and inputs, in one run.

Measures frames/s of the image tower and captions/s of the text tower. Repetitions of the two implementations are
interleaved (and their order alternates) so that load from other processes hits both alike. The ratio is
petvr / open_clip of the median throughputs (>= 1.0 means petvr is at least as fast); the median of the ratios of
neighbouring repetitions is printed beside it, as it is less sensitive to load that drifts during the run.

    python benchmarks/backbone_throughput.py                      # ViT-B/32 shape, CPU fp32
    python benchmarks/backbone_throughput.py --device cuda        # also bf16 autocast
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIP as OpenClipCLIP
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from tqdm import tqdm

from petvr.backbone import get_model_config, load_backbone
from petvr.backbone.config import CLIPConfig


def open_clip_model(config: CLIPConfig, words: int) -> OpenClipCLIP:
    """An open_clip CLIP of the config's shape (text context = ``words``, so both sides see the same tokens)."""
    vision, text = config.vision, config.text
    return OpenClipCLIP(
        config.embed_dim,
        CLIPVisionCfg(layers=vision.layers, width=vision.width, head_width=vision.width // vision.heads,
                      mlp_ratio=vision.mlp_ratio, patch_size=vision.patch_size, image_size=vision.image_size),
        CLIPTextCfg(context_length=words, vocab_size=text.vocab_size, width=text.width, heads=text.heads,
                    layers=text.layers, mlp_ratio=text.mlp_ratio),
        quick_gelu=config.quick_gelu,
    ).eval()


def timed(function, iters: int, device: torch.device) -> float:
    """Seconds per call, averaged over ``iters`` calls."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


def compare(name: str, workloads: dict, items: int, iters: int, repeats: int, device: torch.device, autocast) -> None:
    """Interleave the implementations' timings and print items/s per implementation and the ratio."""
    with torch.inference_mode(), autocast():
        for function in workloads.values():  # warm-up
            for _ in range(2):
                function()
        seconds: dict[str, list[float]] = {label: [] for label in workloads}
        labels = list(workloads)
        for repeat in tqdm(range(repeats), desc=name, leave=False):
            for label in labels if repeat % 2 == 0 else labels[::-1]:
                seconds[label].append(timed(workloads[label], iters, device))
    rates = {label: items / statistics.median(values) for label, values in seconds.items()}
    paired = statistics.median(ours_open / ours for ours, ours_open in zip(seconds["petvr"], seconds["open_clip"]))
    print(f"{name:<30} petvr {rates['petvr']:8.1f}/s   open_clip {rates['open_clip']:8.1f}/s   "
          f"ratio {rates['petvr'] / rates['open_clip']:5.2f} (median of paired repetitions {paired:5.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="bundled model config (random weights of that shape)")
    parser.add_argument("--batch", type=int, default=16, help="images per call; captions per call are 4x this")
    parser.add_argument("--words", type=int, default=32, help="tokens per caption")
    parser.add_argument("--iters", type=int, default=2, help="calls per timed repetition")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per implementation (interleaved)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    config = get_model_config(args.model)
    reference = open_clip_model(config, args.words)
    with tempfile.TemporaryDirectory() as folder:  # petvr reads the very same weights through its checkpoint reader
        path = Path(folder) / "weights.pt"
        torch.save(reference.state_dict(), path)
        model = load_backbone(checkpoint=path, quick_gelu=config.quick_gelu).eval().to(device)
    reference.to(device)

    size = config.vision.image_size
    images = torch.randn(args.batch, 3, size, size, device=device)
    captions = [f"a person is doing activity number {i} in a video clip" for i in range(4 * args.batch)]
    token_ids = open_clip.tokenize(captions, context_length=args.words).to(device)
    with torch.inference_mode():
        image_diff = (model.encode_images(images) - reference.encode_image(images)).abs().max().item()
        text_diff = (model.encode_text(token_ids) - reference.encode_text(token_ids)).abs().max().item()

    print(f"{args.model} on {device} ({torch.get_num_threads()} CPU threads), random weights; "
          f"{args.batch} images of {size}px, {len(captions)} captions of {args.words} tokens; "
          f"{args.repeats} interleaved repetitions x {args.iters} calls")
    print(f"fp32 max |petvr - open_clip|: images {image_diff:.2e}, text {text_diff:.2e}")
    precisions = {"fp32": nullcontext}
    if device.type == "cuda":
        precisions["bf16 autocast"] = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    for precision, autocast in precisions.items():
        compare(f"image tower {precision} frames", {
            "petvr": lambda: model.encode_images(images), "open_clip": lambda: reference.encode_image(images),
        }, args.batch, args.iters, args.repeats, device, autocast)
        compare(f"text tower {precision} captions", {
            "petvr": lambda: model.encode_text(token_ids), "open_clip": lambda: reference.encode_text(token_ids),
        }, len(captions), args.iters, args.repeats, device, autocast)


if __name__ == "__main__":
    main()
