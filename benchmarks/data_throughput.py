"""Data throughput, measured in one run on synthetic videos it writes itself.

(a) Decode + preprocess: petvr (PyAV, seeks only where it skips work, decodes only the selected frames) against an
    OpenCV baseline that samples the CLIP4Clip way (``cv2.VideoCapture`` seek per second, read every per-second frame,
    cv2 bicubic resize, centre crop, normalise, then uniform subsampling to 12). Goal: petvr >= 1.0x.
(b) One epoch from the frame cache against one epoch decoding on the fly (petvr and the OpenCV baseline). Goal >= 10x.
(c) The seek policy: petvr's planned seeking against decoding every clip sequentially, on short and long videos.

Usage: ``python benchmarks/data_throughput.py [--videos 20] [--rounds 2]``. Each timing is the best of ``--rounds``
passes, methods interleaved, so a busy machine penalises them alike.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable
from unittest import mock

import av
import cv2
import numpy as np
import torch
from tqdm import tqdm

from petvr.data import video
from petvr.data.cache import FrameCache, build_cache
from petvr.data.video import CLIP_MEAN, CLIP_STD, SamplingConfig, load_video, subsample_positions


def write_synthetic_video(path: Path, seconds: float, fps: int, width: int = 298, height: int = 224) -> Path:
    """A moving textured scene (noise texture scrolling, a drifting bright square) encoded with x264 defaults."""
    rng = np.random.default_rng(len(path.name) * 7919 + int(seconds))
    texture = rng.integers(0, 256, (height * 2, width * 2, 3), dtype=np.uint8)
    texture = cv2.GaussianBlur(texture, (7, 7), 2.0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "superfast"}
        for number in range(int(seconds * fps)):
            shift_y, shift_x = (number * 2) % height, (number * 3) % width
            image = texture[shift_y: shift_y + height, shift_x: shift_x + width].copy()
            x = int((np.sin(number / 20) + 1) / 2 * (width - 40))
            image[80:120, x: x + 40] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def opencv_clip4clip(path: Path, config: SamplingConfig) -> torch.Tensor:
    """The CLIP4Clip reader with OpenCV: seek to each second, read its frame, preprocess, subsample uniformly."""
    capture = cv2.VideoCapture(str(path))
    frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = int(capture.get(cv2.CAP_PROP_FPS))
    size = config.image_size
    frames = []
    for second in range((frame_count + fps - 1) // fps + 1):
        capture.set(cv2.CAP_PROP_POS_FRAMES, second * fps)
        ok, frame = capture.read()
        if not ok:
            break
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        height, width = rgb.shape[:2]
        scale = size / min(height, width)
        resized = cv2.resize(rgb, (max(size, int(width * scale)), max(size, int(height * scale))),
                             interpolation=cv2.INTER_CUBIC)
        top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
        frames.append(resized[top: top + size, left: left + size])
    capture.release()
    chosen = np.stack(frames)[subsample_positions(len(frames), config.max_frames, config.subsample)]
    tensor = torch.from_numpy(chosen).permute(0, 3, 1, 2).float() / 255.0
    return (tensor - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


def best_time(passes: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Best wall time of each pass over ``rounds`` rounds, passes interleaved within a round."""
    best = {name: float("inf") for name in passes}
    for _ in range(rounds):
        for name, run in passes.items():
            started = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def sequential_only():
    """Patch petvr's decoder to never seek: no keyframe index, and an infinite seek gap."""
    return mock.patch.multiple(video, _keyframes=lambda stream, start_pts: ([], []),
                               SEEK_GAP_WITHOUT_INDEX_S=float("inf"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = SamplingConfig()  # CLIP4Clip: 12 frames, 1 fps, uniform, 224 px

    with tempfile.TemporaryDirectory(prefix="petvr-bench-") as folder:
        folder = Path(folder)
        rng = np.random.default_rng(0)
        specs = [(10 + 20 * rng.random(), int(rng.choice([25, 30]))) for _ in range(args.videos)]
        paths = [write_synthetic_video(folder / f"video{index:02d}.mp4", seconds, fps)
                 for index, (seconds, fps) in enumerate(tqdm(specs, desc="writing synthetic videos", unit="video"))]
        long_paths = [write_synthetic_video(folder / f"long{index}.mp4", 180, 25, width=160, height=120)
                      for index in tqdm(range(2), desc="writing long videos", unit="video")]
        total_seconds = sum(seconds for seconds, _ in specs)
        print(f"\n{len(paths)} videos, {total_seconds:.0f} s in all, 298x224 at 25/30 fps, x264 superfast defaults "
              f"(keyint 250 plus scene cuts); 2 long videos of 180 s at 160x120")

        def petvr_epoch() -> int:
            return sum(int(load_video(path, config).frame_mask.sum()) for path in paths)

        def opencv_epoch() -> int:
            return sum(len(opencv_clip4clip(path, config)) for path in paths)

        frames_per_epoch = petvr_epoch()
        assert frames_per_epoch == opencv_epoch(), "petvr and the OpenCV baseline must deliver the same frame count"

        cache_dir = folder / "cache"
        started = time.perf_counter()
        report = build_cache(paths, config, cache_dir)
        build_seconds = time.perf_counter() - started
        assert report.decoded == len(paths) and not report.skipped
        cache = FrameCache(cache_dir)

        def cached_epoch() -> int:
            return sum(int(cache.get(path, config).frame_mask.sum()) for path in paths)

        train_config = SamplingConfig(sampler="segment", train=True, feature_framerate=1.0)
        train_rng = np.random.default_rng(0)

        def cached_train_epoch() -> int:
            return sum(int(cache.get(path, train_config, rng=train_rng).frame_mask.sum()) for path in paths)

        timings = best_time({"opencv": opencv_epoch, "petvr": petvr_epoch, "cache": cached_epoch,
                             "cache_train": cached_train_epoch}, args.rounds)

        def sequential_epoch(videos: list[Path]) -> Callable[[], None]:
            def run() -> None:
                with sequential_only():
                    for path in videos:
                        load_video(path, config)
            return run

        def planned_epoch(videos: list[Path]) -> Callable[[], object]:
            return lambda: [load_video(path, config) for path in videos]

        seek_timings = best_time({"short_planned": planned_epoch(paths), "short_sequential": sequential_epoch(paths),
                                  "long_planned": planned_epoch(long_paths),
                                  "long_sequential": sequential_epoch(long_paths)}, args.rounds)

    def row(name: str, seconds: float, baseline: float) -> str:
        return f"| {name:<52} | {seconds:8.2f} | {frames_per_epoch / seconds:9.1f} | {baseline / seconds:7.2f}x |"

    header = f"| {'one epoch over the videos (12 frames each)':<52} | {'wall s':>8} | {'frames/s':>9} | {'ratio':>8} |"
    print("\n(a) decode + preprocess, ratio against the OpenCV CLIP4Clip reader")
    print(header)
    print("|" + "-" * 54 + "|" + "-" * 10 + "|" + "-" * 11 + "|" + "-" * 10 + "|")
    print(row("OpenCV, CLIP4Clip way (seek per second)", timings["opencv"], timings["opencv"]))
    print(row("petvr on the fly (load_video)", timings["petvr"], timings["opencv"]))
    print("\n(b) frame cache, ratio against petvr on the fly (and against OpenCV)")
    print(header)
    print("|" + "-" * 54 + "|" + "-" * 10 + "|" + "-" * 11 + "|" + "-" * 10 + "|")
    print(row("petvr on the fly (load_video)", timings["petvr"], timings["petvr"]))
    print(row("cache, eval config (per_second uniform)", timings["cache"], timings["petvr"]))
    print(row("cache, train config (segment, random offsets)", timings["cache_train"], timings["petvr"]))
    print(f"cache vs OpenCV: {timings['opencv'] / timings['cache']:.1f}x; "
          f"one-off build_cache: {build_seconds:.2f} s ({len(paths)} clips)")
    print("\n(c) seek policy: planned seeking against sequential decoding (ratio = sequential / planned)")
    for kind, count in (("short", len(paths)), ("long", len(long_paths))):
        planned, sequential = seek_timings[f"{kind}_planned"], seek_timings[f"{kind}_sequential"]
        print(f"  {count} {kind} videos: planned {planned:.2f} s, sequential {sequential:.2f} s, "
              f"ratio {sequential / planned:.2f}x")


if __name__ == "__main__":
    main()
