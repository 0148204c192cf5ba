"""Captioned videos: ``VideoSpec`` (objects on a 3x3 grid and a sequence of events), their rendering to frames,
random specs and time-reversed pairs, and byte-reproducible mp4 writing.

The temporal split pairs every video with its time reversal. Each event interpolates as ``(a * (K - k) + b * k) / K``,
which is bit-identical whichever way it is evaluated, so ``render_video(spec.reversed())`` is exactly
``render_video(spec)[::-1]``: the same multiset of frames, hence the same mean frame, but the reversed captions.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import av
import numpy as np

from .drawing import (BACKGROUND_KINDS, SHAPES, Style, contrasting_colours, draw_background, draw_object, get_style,
                      pick, seeded_rng, to_uint8)

VIDEO_FPS = 8
VIDEO_FRAME_SIZE = 64


# ---------------------------------------------------------------------------------------------------------------------
# Specs, per-frame object tracks, rendering

VIDEO_CELL_CENTRES = (1 / 6, 1 / 2, 5 / 6)
VIDEO_RADIUS = {"small": 0.09, "large": 0.15}
EVENT_KINDS = ("move", "appear", "disappear", "recolour", "grow", "shrink")
INVERSE_KIND = {"move": "move", "appear": "disappear", "disappear": "appear", "recolour": "recolour",
                "grow": "shrink", "shrink": "grow"}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


@dataclass(frozen=True)
class VideoObject:
    """An object's state at frame 0: shape, colour name, size name, grid cell, visible or hidden."""

    shape: str
    colour: str
    size: str
    column: int
    row: int
    visible: bool


@dataclass(frozen=True)
class Event:
    """One change of one object over frames ``start..end`` (inclusive): ``before`` -> ``after``.

    ``before``/``after`` hold the changed attribute: the cell ``[column, row]`` for "move", the colour name for
    "recolour", the size name for "grow"/"shrink", visibility for "appear"/"disappear".
    """

    kind: str
    target: int
    start: int
    end: int
    before: object
    after: object

    @property
    def direction(self) -> str:
        """The direction word of a move ("left", "right", "up", "down")."""
        step = (int(np.sign(self.after[0] - self.before[0])), int(np.sign(self.after[1] - self.before[1])))
        return next(name for name, delta in DIRECTIONS.items() if delta == step)


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render a video: style, size, frame count, background seed, objects and events."""

    style: str
    frame_size: int
    fps: int
    num_frames: int
    background_kind: str
    background_seed: int
    objects: tuple[VideoObject, ...]
    events: tuple[Event, ...]

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> VideoSpec:
        def plain(value):
            return tuple(value) if isinstance(value, list) else value

        objects = tuple(VideoObject(**obj) for obj in data["objects"])
        events = tuple(Event(**{**event, "before": plain(event["before"]), "after": plain(event["after"])})
                       for event in data["events"])
        return cls(**{**data, "objects": objects, "events": events})

    def final_objects(self) -> tuple[VideoObject, ...]:
        """Object states after the last event."""
        objects = list(self.objects)
        for event in self.events:
            objects[event.target] = apply_event(objects[event.target], event.kind, event.after)
        return tuple(objects)

    def reversed(self) -> VideoSpec:
        """The time-reversed video: frame ``i`` of the result is frame ``num_frames - 1 - i`` of this one."""
        last = self.num_frames - 1
        events = tuple(Event(INVERSE_KIND[e.kind], e.target, last - e.end, last - e.start, e.after, e.before)
                       for e in reversed(self.events))
        return replace(self, objects=self.final_objects(), events=events)

    def signature(self) -> tuple:
        """What the captions say: the ordered (object, kind, before, after) of the events."""
        return tuple((e.target, e.kind, e.before, e.after) for e in self.events)


def apply_event(obj: VideoObject, kind: str, value) -> VideoObject:
    if kind == "move":
        return replace(obj, column=value[0], row=value[1])
    if kind == "recolour":
        return replace(obj, colour=value)
    if kind in ("grow", "shrink"):
        return replace(obj, size=value)
    return replace(obj, visible=value)


@dataclass
class ObjectTrack:
    """Per-frame state of one object: centre ``x``/``y`` and ``radius`` in pixels, ``rgb (T, 3)``, ``opacity (T,)``."""

    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    rgb: np.ndarray
    opacity: np.ndarray


def _interpolate(before: np.ndarray, after: np.ndarray, start: int, end: int) -> np.ndarray:
    """Linear values over frames start..end as ``(a * (K - k) + b * k) / K``: bit-identical under time reversal."""
    span = end - start
    steps = np.arange(span + 1, dtype=np.float64).reshape(-1, *([1] * np.ndim(before)))
    return (np.asarray(before, np.float64) * (span - steps) + np.asarray(after, np.float64) * steps) / span


def object_tracks(spec: VideoSpec) -> list[ObjectTrack]:
    """The per-frame state of every object of ``spec`` (events applied in time order)."""
    style, size, frames = get_style(spec.style), spec.frame_size, spec.num_frames
    tracks = []
    for obj in spec.objects:
        tracks.append(ObjectTrack(
            x=np.full(frames, VIDEO_CELL_CENTRES[obj.column] * size),
            y=np.full(frames, VIDEO_CELL_CENTRES[obj.row] * size),
            radius=np.full(frames, VIDEO_RADIUS[obj.size] * size),
            rgb=np.tile(np.asarray(style.palette[obj.colour], np.float64), (frames, 1)),
            opacity=np.full(frames, 1.0 if obj.visible else 0.0)))
    for event in spec.events:
        track, span = tracks[event.target], slice(event.start, event.end + 1)
        if event.kind == "move":
            for values, axis in ((track.x, 0), (track.y, 1)):
                before = VIDEO_CELL_CENTRES[event.before[axis]] * size
                after = VIDEO_CELL_CENTRES[event.after[axis]] * size
                values[span] = _interpolate(before, after, event.start, event.end)
                values[event.end + 1:] = after
        elif event.kind == "recolour":
            before, after = np.asarray(style.palette[event.before]), np.asarray(style.palette[event.after])
            track.rgb[span] = _interpolate(before, after, event.start, event.end)
            track.rgb[event.end + 1:] = after
        elif event.kind in ("grow", "shrink"):
            before, after = VIDEO_RADIUS[event.before] * size, VIDEO_RADIUS[event.after] * size
            track.radius[span] = _interpolate(before, after, event.start, event.end)
            track.radius[event.end + 1:] = after
        else:
            before, after = float(event.before), float(event.after)
            track.opacity[span] = _interpolate(before, after, event.start, event.end)
            track.opacity[event.end + 1:] = after
    return tracks


def video_background(spec: VideoSpec) -> np.ndarray:
    """The static background ``(S, S, 3)`` float32 of a video."""
    return draw_background(get_style(spec.style), spec.background_kind, seeded_rng(spec.background_seed), spec.frame_size)


def render_video(spec: VideoSpec) -> np.ndarray:
    """Frames ``(T, S, S, 3)`` uint8 of a video spec."""
    style, background, tracks = get_style(spec.style), video_background(spec), object_tracks(spec)
    frames = np.repeat(background[None], spec.num_frames, axis=0)
    previous_state = None
    for index, canvas in enumerate(frames):
        state = [(round(t.x[index]), round(t.y[index]), round(t.radius[index] * 4), *t.rgb[index], t.opacity[index])
                 for t in tracks]
        if state == previous_state:  # idle frame: nothing moved or changed
            canvas[:] = frames[index - 1]
            continue
        for obj, track in zip(spec.objects, tracks):
            draw_object(canvas, style, obj.shape, track.x[index], track.y[index], track.radius[index],
                        track.rgb[index], track.opacity[index])
        previous_state = state
    return to_uint8(frames)


# ---------------------------------------------------------------------------------------------------------------------
# Sampling specs

@dataclass(frozen=True)
class ClipLayout:
    """Ranges (inclusive) for the number of events and the frame lengths of events, gaps between them and ends."""

    num_events: tuple[int, int]
    event_frames: tuple[int, int]
    gap_frames: tuple[int, int]
    edge_frames: tuple[int, int]

    def __post_init__(self):
        if self.num_events[0] < 1 or self.event_frames[0] < 2 or self.gap_frames[0] < 0 or self.edge_frames[0] < 0:
            raise ValueError(f"clip layout needs >= 1 event of >= 2 frames and non-negative gaps, got {self}")


EVENT_WEIGHTS = {"move": 0.4, "recolour": 0.2, "grow": 0.1, "shrink": 0.1, "appear": 0.1, "disappear": 0.1}


def _candidate_events(objects: list[VideoObject]) -> list[tuple[str, int, object, object]]:
    """Every (kind, target, before, after) that is valid now: moves stay on the grid and never cross another object."""
    candidates = []
    for target, obj in enumerate(objects):
        others = {(o.column, o.row) for index, o in enumerate(objects) if index != target}
        if not obj.visible:
            if (obj.column, obj.row) not in others:
                candidates.append(("appear", target, False, True))
            continue
        candidates.append(("disappear", target, True, False))
        candidates.append(("recolour", target, obj.colour, None))
        candidates.append(("grow", target, "small", "large") if obj.size == "small"
                          else ("shrink", target, "large", "small"))
        for column_step, row_step in DIRECTIONS.values():
            for distance in (1, 2):
                path = [(obj.column + column_step * k, obj.row + row_step * k) for k in range(1, distance + 1)]
                if all(0 <= c < 3 and 0 <= r < 3 and (c, r) not in others for c, r in path):
                    candidates.append(("move", target, (obj.column, obj.row), path[-1]))
    return candidates


def _sample_changes(rng: np.random.Generator, objects: list[VideoObject], num_events: int,
                    colours: list[str]) -> list[tuple[str, int, object, object]] | None:
    """Events in order as (kind, target, before, after), every object taking part; ``None`` if the draw got stuck."""
    objects, changes, unused = list(objects), [], set(range(len(objects)))
    for slot in range(num_events):
        candidates = _candidate_events(objects)
        if len(unused) >= num_events - slot:
            candidates = [c for c in candidates if c[1] in unused]
        if len(colours) < 2:
            candidates = [c for c in candidates if c[0] != "recolour"]
        if not candidates:
            return None
        kinds = sorted({c[0] for c in candidates}, key=EVENT_KINDS.index)
        weights = np.asarray([EVENT_WEIGHTS[kind] for kind in kinds])
        kind = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        options = [c for c in candidates if c[0] == kind]
        kind, target, before, after = options[rng.integers(len(options))]
        if kind == "recolour":
            after = pick(rng, [c for c in colours if c != before])
        changes.append((kind, target, before, after))
        objects[target] = apply_event(objects[target], kind, after)
        unused.discard(target)
    return changes


def sample_video_spec(rng: np.random.Generator, style: Style, layout: ClipLayout, frame_size: int = VIDEO_FRAME_SIZE,
                      fps: int = VIDEO_FPS) -> VideoSpec:
    """A random video: 1-2 objects (distinct shapes), events in sequence with idle gaps; every object takes part."""
    background_kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    background_seed = int(rng.integers(2**31))
    background = draw_background(style, background_kind, seeded_rng(background_seed), frame_size)
    colours = contrasting_colours(style, background)
    num_events = int(rng.integers(layout.num_events[0], layout.num_events[1] + 1))
    changes = None
    while changes is None:
        num_objects = 1 if rng.random() < 0.4 else 2
        shapes = rng.choice(len(SHAPES), num_objects, replace=False)
        cells = rng.choice(9, num_objects, replace=False)
        objects = tuple(VideoObject(SHAPES[shape], pick(rng, colours), ("small", "large")[rng.integers(2)],
                                    int(cell % 3), int(cell // 3), bool(rng.random() < 0.8))
                        for shape, cell in zip(shapes, cells))
        changes = _sample_changes(rng, list(objects), num_events, colours)
    frame = int(rng.integers(layout.edge_frames[0], layout.edge_frames[1] + 1))
    events = []
    for index, (kind, target, before, after) in enumerate(changes):
        if index:
            frame += int(rng.integers(layout.gap_frames[0], layout.gap_frames[1] + 1))
        length = int(rng.integers(layout.event_frames[0], layout.event_frames[1] + 1))
        events.append(Event(kind, target, frame, frame + length - 1, before, after))
        frame += length
    num_frames = frame + int(rng.integers(layout.edge_frames[0], layout.edge_frames[1] + 1))
    return VideoSpec(style.name, frame_size, fps, num_frames, background_kind, background_seed, objects,
                     tuple(events))


def sample_temporal_pair(rng: np.random.Generator, style: Style, layout: ClipLayout, frame_size: int = VIDEO_FRAME_SIZE,
                         fps: int = VIDEO_FPS) -> tuple[VideoSpec, VideoSpec]:
    """A video and its time reversal, redrawn until the two say different things (no palindromic event lists)."""
    while True:
        spec = sample_video_spec(rng, style, layout, frame_size, fps)
        mirror = spec.reversed()
        if mirror.signature() != spec.signature():
            return spec, mirror


# ---------------------------------------------------------------------------------------------------------------------
# Writing videos

def rgb_to_yuv420(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 RGB -> planar yuv420p ``(T, 3 H / 2, W)`` uint8: BT.601 limited range (what decoders
    assume for untagged video) in the usual 8-bit integer form, chroma averaged over 2x2 pixels. Done here in integers
    rather than by swscale, whose rounding depends on buffer alignment and would make the mp4 bytes vary by run."""
    rgb = frames.astype(np.int32)
    count, height, width = frames.shape[:3]
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = ((66 * red + 129 * green + 25 * blue + 128) >> 8) + 16
    block = rgb[:, 0::2, 0::2] + rgb[:, 1::2, 0::2] + rgb[:, 0::2, 1::2] + rgb[:, 1::2, 1::2]  # 4x the 2x2 mean
    red, green, blue = block[..., 0], block[..., 1], block[..., 2]
    chroma_blue = ((-38 * red - 74 * green + 112 * blue + 512) >> 10) + 128
    chroma_red = ((112 * red - 94 * green - 18 * blue + 512) >> 10) + 128
    planes = [luma, chroma_blue.reshape(count, height // 4, width), chroma_red.reshape(count, height // 4, width)]
    return np.clip(np.concatenate(planes, axis=1), 0, 255).astype(np.uint8)


def write_mp4(path: str | Path, frames: np.ndarray, fps: int) -> None:
    """Encode ``frames (T, H, W, 3)`` uint8 (H, W even) as H.264 yuv420p in an mp4, reproducibly byte for byte."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        # one thread and no lookahead (zerolatency: no B-frames, no mb-tree): the other settings let x264's output
        # vary from run to run on identical input
        stream.options = {"preset": "veryfast", "tune": "zerolatency", "crf": "17", "threads": "1"}
        for planes in rgb_to_yuv420(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")))
        container.mux(stream.encode())
