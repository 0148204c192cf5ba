"""Fixtures shared by several test files (so that no test file imports another)."""
from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from petvr.backbone import create_backbone


def _write_numbered_video(path: Path, num_frames: int, fps: int = 10, width: int = 64, height: int = 48,
                          keyframe_interval: int = 250, codec: str = "libx264") -> Path:
    """Write a video whose frame ``i`` shows its number: left half grey ``4 * (i % 64)``, right half ``4 * (i // 64)``."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(keyframe_interval), "crf": "1"} if codec == "libx264" else {"g": str(keyframe_interval)}
        for number in range(num_frames):
            image = np.zeros((height, width, 3), np.uint8)
            image[:, : width // 2] = 4 * (number % 64)
            image[:, width // 2:] = 4 * (number // 64)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _frame_numbers(frames: np.ndarray) -> np.ndarray:
    """Read back the numbers ``write_numbered_video`` painted, from uint8 ``(T, H, W, 3)`` frames."""
    width = frames.shape[2]
    low = frames[:, 4:-4, 2: width // 2 - 6].mean(axis=(1, 2, 3)) / 4
    high = frames[:, 4:-4, width // 2 + 6: -2].mean(axis=(1, 2, 3)) / 4
    return (np.round(low) + 64 * np.round(high)).astype(int)


@pytest.fixture(scope="session")
def write_numbered_video():
    """``write_numbered_video(path, num_frames, fps=10, ...) -> path``: an mp4 whose frames show their own number."""
    return _write_numbered_video


@pytest.fixture(scope="session")
def frame_numbers():
    """``frame_numbers(frames (T, H, W, 3) uint8) -> (T,)``: the numbers ``write_numbered_video`` painted."""
    return _frame_numbers


@pytest.fixture
def tiny_backbone():
    """A randomly initialised petvr-tiny CLIP in eval mode (seeded, so every test gets the same weights)."""
    import torch

    torch.manual_seed(0)
    return create_backbone("petvr-tiny").eval()


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """A tiny synthetic world (one collection, "studio") and a random petvr-tiny checkpoint beside it."""
    import torch

    from petvr.backbone import save_backbone
    from petvr.synthetic import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root / "world", size="tiny", collections=("studio",))
    torch.manual_seed(0)
    save_backbone(create_backbone("petvr-tiny"), root / "tiny.safetensors")
    return root


@pytest.fixture
def world_overrides(world):
    """``world_overrides(run_dir)``: recipe overrides that train the shipped synthetic recipe on ``world`` for one
    epoch into ``run_dir``."""

    def overrides(run_dir):
        return [f"backbone.checkpoint=\"{world / 'tiny.safetensors'}\"", f"data.root=\"{world / 'world' / 'studio'}\"",
                f"data.cache_dir=\"{world / 'cache'}\"", "train.epochs=1", "train.batch_size=6",
                f"train.output_dir=\"{run_dir}\""]

    return overrides


@pytest.fixture(scope="session")
def pattern_videos():
    """``pattern_videos(num_classes=8, samples_per_class=2, image_size=64, seed=0)``: a tiny training set of Trainer
    items (64 x 64 frames fit petvr-tiny). Video k shows a fixed random pattern (+ noise) on 2 frames; its caption is
    SOT, a word id for k, EOT. ``.batch()`` stacks every item into one batch: (token_ids, token_mask, frames,
    frame_mask); ``.full_batch_losses(model, steps, lr=3e-3)`` trains ``model`` on that batch with AdamW (no weight
    decay) through the trainer's contrastive objective and returns the loss of each step."""
    import torch

    class PatternVideos(torch.utils.data.Dataset):
        def __init__(self, num_classes=8, samples_per_class=2, image_size=64, seed=0):
            generator = torch.Generator().manual_seed(seed)
            self.patterns = torch.randn(num_classes, 3, image_size, image_size, generator=generator)
            self.classes = [k for k in range(num_classes) for _ in range(samples_per_class)]
            self.noise = torch.randn(len(self.classes), 2, 3, image_size, image_size, generator=generator) * 0.3

        def __len__(self):
            return len(self.classes)

        def __getitem__(self, index):
            k = self.classes[index]
            token_ids = torch.tensor([49406, 1000 + k, 49407, 0])
            return {"video_id": f"video{k}", "token_ids": token_ids, "token_mask": token_ids != 0,
                    "frames": self.patterns[k] + self.noise[index], "frame_mask": torch.ones(2, dtype=torch.bool)}

        def batch(self):
            items = [self[index] for index in range(len(self))]
            return tuple(torch.stack([item[key] for item in items])
                         for key in ("token_ids", "token_mask", "frames", "frame_mask"))

        def full_batch_losses(self, model, steps: int, lr: float = 3e-3) -> list[float]:
            from petvr.training.trainer import ContrastiveObjective

            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
            objective, batch, losses = ContrastiveObjective(model), self.batch(), []
            for _ in range(steps):
                loss = objective(*batch)["loss"]
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            return losses

    return PatternVideos


@pytest.fixture
def convert_with_cli(tmp_path):
    """``convert_with_cli(method, official_state, base, out="out") -> (adapter folder, checkpoint path)``: the state
    saved as the official code saves it, the base as a petvr-tiny checkpoint, then ``petvr convert`` run on them."""
    import torch

    from petvr.backbone import save_backbone
    from petvr.cli import main

    def convert(method: str, state: dict, base, out: str = "out") -> tuple[Path, Path]:
        checkpoint, saved = tmp_path / "pytorch_model.bin.4", tmp_path / "tiny.safetensors"
        torch.save(state, checkpoint)
        save_backbone(base, saved)
        main(["convert", method, str(checkpoint), str(tmp_path / out), "--backbone", "petvr-tiny",
              "--backbone-checkpoint", str(saved)])
        return tmp_path / out, checkpoint

    return convert
