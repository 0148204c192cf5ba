"""The long-video world for timestamp supervision (``petvr.editing``): a separate collection from ``generate_world``,
which it leaves untouched.

Each video holds several captioned events of widely varying length, separated by stretches that no caption
describes: between events (and before the first and after the last) the video cuts away to an empty scene of
another background, as cooking and how-to videos cut to the presenter. The heuristic initial clips (midpoints
between neighbouring timestamps) therefore take in cut-away frames and parts of neighbouring events, and cut long
events short. The annotations are in the ActivityNet Captions format (``train.json``/``val_1.json``, one sentence
and span per event, id lists, ``videos/<id>.mp4``) beside ``events.json`` (every ``VideoSpec``) and a
``manifest.json`` recording the settings.
"""
from __future__ import annotations

import tempfile
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .drawing import BACKGROUND_KINDS, draw_background, get_style, seeded_rng, to_uint8
from .videos import VIDEO_FPS, VIDEO_FRAME_SIZE, ClipLayout, VideoSpec, render_video, sample_video_spec, write_mp4
from .world import _activitynet_dataset, _parallel_map, _read_manifest, _replace_folder, _write_annotation

EDITING_WORLD_FORMAT = 1


@dataclass(frozen=True)
class EditingWorldSize:
    """Videos per split and the layout of their events, gaps and ends (in frames at ``VIDEO_FPS``)."""

    train: int
    val: int
    layout: ClipLayout


# Events of 1-6 s, gaps of 1-7 s, 0.5-4 s before the first and after the last (frames at VIDEO_FPS).
LONG_VIDEO_LAYOUT = ClipLayout(num_events=(3, 5), event_frames=(8, 48), gap_frames=(8, 56), edge_frames=(4, 32))
EDITING_WORLD_SIZES = {
    "tiny": EditingWorldSize(4, 2, ClipLayout(num_events=(2, 3), event_frames=(6, 16), gap_frames=(8, 24),
                                              edge_frames=(4, 12))),
    "small": EditingWorldSize(64, 24, LONG_VIDEO_LAYOUT),
    # four times small's validation videos (about 390 queries, so one query is 0.25 points of R@1) and half again
    # the training videos: what benchmarks/editing.py measures on
    "medium": EditingWorldSize(96, 96, LONG_VIDEO_LAYOUT),
    # four times medium's training videos: whether more training data lets clip quality show
    "large": EditingWorldSize(384, 96, LONG_VIDEO_LAYOUT),
}


def cutaway_frames(spec: VideoSpec) -> np.ndarray:
    """Frame numbers ``(N,)`` outside every event: what no caption describes."""
    inside = np.zeros(spec.num_frames, dtype=bool)
    for event in spec.events:
        inside[event.start:event.end + 1] = True
    return np.flatnonzero(~inside)


def render_with_cutaways(spec: VideoSpec) -> np.ndarray:
    """``render_video(spec)`` with every stretch outside the events replaced by a cut-away: the empty scene of another
    background kind, one per stretch, seeded by the spec."""
    frames = render_video(spec)
    style = get_style(spec.style)
    others = [kind for kind in BACKGROUND_KINDS if kind != spec.background_kind]
    outside = cutaway_frames(spec)
    stretches = np.split(outside, np.flatnonzero(np.diff(outside) > 1) + 1) if len(outside) else []
    for number, stretch in enumerate(stretches):
        rng = seeded_rng(spec.background_seed, "cutaway", number)
        scene = draw_background(style, others[int(rng.integers(len(others)))], rng, spec.frame_size)
        frames[stretch] = to_uint8(scene)
    return frames


def _render_and_write(job: tuple[VideoSpec, str]) -> None:
    spec, path = job
    write_mp4(path, render_with_cutaways(spec), spec.fps)


def generate_editing_world(root: str | Path, seed: int = 0, size: str = "small", collection: str = "studio",
                           workers: int = 2) -> Path:
    """Write the long-video world under ``root`` (a no-op when it is there with the same settings) and return the
    dataset folder ``root/<collection>/editing`` (ActivityNet Captions format; read it in sentence mode)."""
    if size not in EDITING_WORLD_SIZES:
        raise ValueError(f"unknown editing world size {size!r}; known: {', '.join(EDITING_WORLD_SIZES)}")
    style = get_style(collection)
    world = EDITING_WORLD_SIZES[size]
    settings = {"format_version": EDITING_WORLD_FORMAT, "kind": "editing", "seed": seed, "size": size,
                "collection": style.name, "fps": VIDEO_FPS, "frame_size": VIDEO_FRAME_SIZE}
    root = Path(root)
    relative = f"{style.name}/editing"
    existing = _read_manifest(root)
    if existing is not None and existing.get("settings") == settings:
        return root / relative
    if root.exists() and existing is None and any(root.iterdir()):
        raise DataError(root, "exists and is not a synthetic world (no manifest.json); refusing to overwrite it")

    def specs(split: str, count: int) -> list[VideoSpec]:
        return [sample_video_spec(seeded_rng(seed, style.name, "editing", split, index), style, world.layout)
                for index in range(count)]

    dataset = _activitynet_dataset(relative, seed, specs("train", world.train), specs("val", world.val))
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        folder = staging / relative
        (folder / "videos").mkdir(parents=True)
        for name, content in dataset.files.items():
            _write_annotation(folder / name, content)
        jobs = sorted(((spec, str(folder / path)) for spec, path in dataset.jobs), key=lambda job: -job[0].num_frames)
        _parallel_map(_render_and_write, jobs, workers, f"editing world ({size})", "video")
        manifest = {"format": "petvr synthetic world", "settings": settings, "datasets": {relative: dataset.summary},
                    "num_videos": len(jobs)}
        _write_annotation(staging / "manifest.json", manifest)
        _replace_folder(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root / relative
