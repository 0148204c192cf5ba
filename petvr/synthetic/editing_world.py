"""The long-video world for timestamp supervision (``petvr.editing``): a separate collection from ``generate_world``,
which it leaves untouched.

Each video strings together several captioned scenes of widely varying length, separated by stretches that no
caption describes. A scene is a short clip of the studio world (its own background and one or two objects going
through one to three changes) and its caption is one studio-style sentence naming every change in order; between
scenes, and before the first and after the last, the video cuts away to an empty scene of some background, as
cooking and how-to videos cut to the presenter. The heuristic initial clips (midpoints between neighbouring
timestamps) therefore take in cut-aways and parts of the neighbouring scenes, whose objects a caption does not name,
and cut long scenes short: training on them pairs captions with what they do not describe. The annotations are in the
ActivityNet Captions format (``train.json``/``val_1.json``, one sentence and span per scene, id lists,
``videos/<id>.mp4``) beside ``events.json`` (every ``LongVideoSpec``) and a ``manifest.json`` recording the settings.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .captions import video_captions
from .drawing import BACKGROUND_KINDS, draw_background, get_style, seeded_rng, to_uint8
from .videos import VIDEO_FPS, VIDEO_FRAME_SIZE, ClipLayout, VideoSpec, render_video, sample_video_spec, write_mp4
from .world import _activitynet_dataset, _parallel_map, _read_manifest, _replace_folder, _write_annotation

EDITING_WORLD_FORMAT = 2


@dataclass(frozen=True)
class LongVideoLayout:
    """Ranges (inclusive) for the number of captioned scenes of a video, the layout of each scene's own events, and the
    frame lengths of the cut-aways between scenes and at the ends (frames at ``VIDEO_FPS``)."""

    num_scenes: tuple[int, int]
    scene: ClipLayout
    cutaway_frames: tuple[int, int]
    edge_frames: tuple[int, int]


@dataclass(frozen=True)
class EditingWorldSize:
    """Videos per split and their layout."""

    train: int
    val: int
    layout: LongVideoLayout


@dataclass(frozen=True)
class LongVideoSpec:
    """A long video: its captioned ``scenes`` (each rendered on its own) starting at frames ``starts``, cut-aways
    elsewhere (one empty scene per stretch, drawn from ``cutaway_seed``)."""

    scenes: tuple[VideoSpec, ...]
    starts: tuple[int, ...]
    num_frames: int
    cutaway_seed: int
    fps: int = VIDEO_FPS

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    def spans(self) -> list[tuple[int, int]]:
        """Each scene's first and last frame (inclusive)."""
        return [(start, start + scene.num_frames - 1) for scene, start in zip(self.scenes, self.starts)]

    def to_json(self) -> dict:
        return {"scenes": [scene.to_json() for scene in self.scenes], "starts": list(self.starts),
                "num_frames": self.num_frames, "cutaway_seed": self.cutaway_seed, "fps": self.fps}

    @classmethod
    def from_json(cls, data: dict) -> LongVideoSpec:
        return cls(tuple(VideoSpec.from_json(scene) for scene in data["scenes"]), tuple(data["starts"]),
                   data["num_frames"], data["cutaway_seed"], data["fps"])


# Scenes of 1-3 changes (0.75-7 s), cut-aways of 0.5-4 s between them, 0.5-3 s before the first and after the last
LONG_VIDEO_LAYOUT = LongVideoLayout(num_scenes=(3, 5), scene=ClipLayout((1, 3), (4, 14), (1, 4), (1, 3)),
                                    cutaway_frames=(4, 32), edge_frames=(4, 24))
EDITING_WORLD_SIZES = {
    "tiny": EditingWorldSize(4, 2, LongVideoLayout(num_scenes=(2, 3), scene=ClipLayout((1, 2), (4, 8), (1, 2), (1, 2)),
                                                   cutaway_frames=(8, 16), edge_frames=(4, 8))),
    "small": EditingWorldSize(64, 24, LONG_VIDEO_LAYOUT),
    "medium": EditingWorldSize(400, 100, LONG_VIDEO_LAYOUT),
    "large": EditingWorldSize(1200, 100, LONG_VIDEO_LAYOUT),
}


def sample_long_video(rng: np.random.Generator, style, layout: LongVideoLayout) -> LongVideoSpec:
    """Scenes drawn like the studio world's clips, laid out in sequence with cut-aways between them."""
    count = int(rng.integers(layout.num_scenes[0], layout.num_scenes[1] + 1))
    scenes, starts = [], []
    frame = int(rng.integers(layout.edge_frames[0], layout.edge_frames[1] + 1))
    for index in range(count):
        if index:
            frame += int(rng.integers(layout.cutaway_frames[0], layout.cutaway_frames[1] + 1))
        scene = sample_video_spec(rng, style, layout.scene)
        scenes.append(scene)
        starts.append(frame)
        frame += scene.num_frames
    frame += int(rng.integers(layout.edge_frames[0], layout.edge_frames[1] + 1))
    return LongVideoSpec(tuple(scenes), tuple(starts), frame, int(rng.integers(2**31)))


def cutaway_frames(spec: LongVideoSpec) -> np.ndarray:
    """Frame numbers ``(N,)`` outside every scene: what no caption describes."""
    inside = np.zeros(spec.num_frames, dtype=bool)
    for start, end in spec.spans():
        inside[start:end + 1] = True
    return np.flatnonzero(~inside)


def render_long_video(spec: LongVideoSpec) -> np.ndarray:
    """Frames ``(T, S, S, 3)`` uint8: every scene rendered in place, each stretch outside them an empty scene of a
    background kind drawn for it."""
    first = spec.scenes[0]
    style, size = get_style(first.style), first.frame_size
    frames = np.empty((spec.num_frames, size, size, 3), np.uint8)
    outside = cutaway_frames(spec)
    stretches = np.split(outside, np.flatnonzero(np.diff(outside) > 1) + 1) if len(outside) else []
    for number, stretch in enumerate(stretches):
        rng = seeded_rng(spec.cutaway_seed, "cutaway", number)
        frames[stretch] = to_uint8(draw_background(style, BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))],
                                                   rng, size))
    for scene, (start, end) in zip(spec.scenes, spec.spans()):
        frames[start:end + 1] = render_video(scene)
    return frames


def _render_and_write(job: tuple[LongVideoSpec, str]) -> None:
    spec, path = job
    write_mp4(path, render_long_video(spec), spec.fps)


def scene_sentence(scene: VideoSpec, rng: np.random.Generator) -> str:
    """One studio-style sentence naming every change of a scene in order, capitalised with a full stop."""
    sentence = video_captions(scene, rng, count=1)[0]
    return sentence[0].upper() + sentence[1:] + "."


def _scene_annotation(spec: LongVideoSpec, rng: np.random.Generator) -> tuple[list[tuple[int, int]], list[str]]:
    """Each scene's first and last frame, and its sentence."""
    return spec.spans(), [scene_sentence(scene, rng) for scene in spec.scenes]


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

    def specs(split: str, count: int) -> list[LongVideoSpec]:
        return [sample_long_video(seeded_rng(seed, style.name, "editing", split, index), style, world.layout)
                for index in range(count)]

    dataset = _activitynet_dataset(relative, seed, specs("train", world.train), specs("val", world.val),
                                   describe=_scene_annotation)
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
