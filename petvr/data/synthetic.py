"""The procedural synthetic world: image-caption pairs and captioned videos, deterministic by seed.

No real CLIP weights or benchmark videos can be downloaded here, so the embedded default backbone (``petvr-tiny``) is
pretrained and evaluated on this world instead:

- ``SyntheticImageCaptions``: an indexable stream of ``(uint8 image (H, W, 3), caption)`` pairs for contrastive
  pretraining. Scenes hold one or two shapes with a colour, a size and a position; captions come from a small grammar
  with synonyms and word-order variants. ``dataset[i]`` depends only on ``(seed, offset + i)``, so DataLoader workers
  need no coordination and held-out sets are other seeds or offsets.
- Videos are ``VideoSpec``s: objects on a 3x3 grid and a sequence of 2-6 events (move left/right/up/down, appear,
  disappear, change colour, grow, shrink) separated by idle gaps. ``render_video`` turns a spec into frames and the
  caption functions describe the events in order ("a red circle moves left, then a blue square appears").
- ``generate_world`` writes mp4 files with annotations in the real MSR-VTT and ActivityNet Captions formats, a hard
  "temporal" test split, for several visual collections (``STYLES``), with a manifest; see its docstring.

The temporal split pairs every video with its time reversal. Each event interpolates as ``(a * (K - k) + b * k) / K``,
which is bit-identical whichever way it is evaluated, so ``render_video(spec.reversed())`` is exactly
``render_video(spec)[::-1]``: the same multiset of frames, hence the same mean frame, but the reversed captions
("moves right" for "moves left", "turns red, then ..." for "..., then turns blue").
"""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from petvr.errors import DataError

WORLD_FORMAT_VERSION = 1
VIDEO_FPS = 8
VIDEO_FRAME_SIZE = 64
CAPTIONS_PER_VIDEO = 5
MAX_CAPTION_WORDS = 24
"""Words plus punctuation marks; keeps every caption inside the 32-token text context of ``petvr-tiny``."""

# ---------------------------------------------------------------------------------------------------------------------
# Vocabulary and styles

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond")
SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "donut"),
    "diamond": ("diamond",),
}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
BACKGROUND_KINDS = ("plain", "gradient", "noise", "stripes")
BACKGROUND_WORDS = {"plain": ("plain",), "gradient": ("gradient", "fading"), "noise": ("noisy", "grainy"),
                    "stripes": ("striped",)}
MIN_CONTRAST = 80.0
"""Least Euclidean RGB distance between an object's colour and the mean background colour."""


@dataclass(frozen=True)
class Style:
    """One visual collection: object palette (colour name -> RGB) and how backgrounds and objects are drawn."""

    name: str
    palette: dict[str, tuple[int, int, int]]
    background_low: float
    background_high: float
    tint: tuple[float, float, float]
    stripe_contrast: float
    noise_sigma: float
    grain_sigma: float
    speckle_fraction: float
    glow_strength: float


STYLES = {
    "studio": Style(
        name="studio",
        palette={"red": (215, 35, 35), "orange": (240, 135, 20), "yellow": (235, 200, 20), "green": (35, 150, 55),
                 "blue": (35, 75, 215), "purple": (130, 50, 180), "pink": (235, 95, 175), "black": (25, 25, 25)},
        background_low=200.0, background_high=248.0, tint=(0.0, 0.0, 0.0), stripe_contrast=16.0, noise_sigma=7.0,
        grain_sigma=0.0, speckle_fraction=0.0, glow_strength=0.0),
    "night": Style(
        name="night",
        palette={"red": (255, 70, 70), "orange": (255, 160, 50), "yellow": (250, 240, 90), "green": (80, 250, 120),
                 "blue": (70, 140, 255), "purple": (190, 100, 255), "pink": (255, 120, 220), "white": (235, 235, 235)},
        background_low=6.0, background_high=40.0, tint=(0.0, 4.0, 14.0), stripe_contrast=14.0, noise_sigma=12.0,
        grain_sigma=4.0, speckle_fraction=0.006, glow_strength=0.35),
}
STYLE_NAMES = tuple(STYLES)


def get_style(name: str) -> Style:
    if name not in STYLES:
        raise ValueError(f"unknown synthetic style {name!r}; known: {', '.join(STYLES)}")
    return STYLES[name]


def _stable_hash(text: str) -> int:
    return zlib.crc32(text.encode())


def _rng(*keys: int | str) -> np.random.Generator:
    """A generator seeded by a tuple of ints and names, independent of Python's hash randomisation."""
    return np.random.default_rng([_stable_hash(key) if isinstance(key, str) else int(key) for key in keys])


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _word_count(text: str) -> int:
    return len(text.split()) + sum(text.count(mark) for mark in ",;:.")


# ---------------------------------------------------------------------------------------------------------------------
# Drawing: anti-aliased shape masks, backgrounds, compositing

_SUPERSAMPLE = 4


def _shape_polygons(shape: str) -> list[tuple[list[tuple[float, float]], bool]]:
    """Unit-radius outline(s) of a shape as (polygon, filled) pairs; ``filled=False`` cuts a hole (the ring)."""
    def regular(count: int, radius: float, phase: float) -> list[tuple[float, float]]:
        angles = phase + 2 * np.pi * np.arange(count) / count
        return [(radius * np.cos(a), radius * np.sin(a)) for a in angles]

    if shape == "circle":
        return [(regular(64, 1.0, 0.0), True)]
    if shape == "ring":
        return [(regular(64, 1.0, 0.0), True), (regular(64, 0.55, 0.0), False)]
    if shape == "square":
        return [([(-0.82, -0.82), (0.82, -0.82), (0.82, 0.82), (-0.82, 0.82)], True)]
    if shape == "diamond":
        return [([(0.0, -1.0), (0.8, 0.0), (0.0, 1.0), (-0.8, 0.0)], True)]
    if shape == "triangle":
        return [(regular(3, 1.0, -np.pi / 2), True)]
    if shape == "star":
        outer, inner = regular(5, 1.0, -np.pi / 2), regular(5, 0.42, -np.pi / 2 + np.pi / 5)
        return [([point for pair in zip(outer, inner) for point in pair], True)]
    if shape == "cross":
        arm = 0.3
        return [([(-arm, -1), (arm, -1), (arm, -arm), (1, -arm), (1, arm), (arm, arm), (arm, 1), (-arm, 1),
                  (-arm, arm), (-1, arm), (-1, -arm), (-arm, -arm)], True)]
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


@lru_cache(maxsize=4096)
def shape_mask(shape: str, radius: float) -> np.ndarray:
    """Anti-aliased coverage ``(S, S)`` float32 in [0, 1] of a shape of ``radius`` pixels centred on pixel S // 2."""
    half = int(np.ceil(radius)) + 1
    side = 2 * half + 1
    canvas = Image.new("L", (side * _SUPERSAMPLE, side * _SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    centre = (half + 0.5) * _SUPERSAMPLE
    for polygon, filled in _shape_polygons(shape):
        points = [(centre + x * radius * _SUPERSAMPLE, centre + y * radius * _SUPERSAMPLE) for x, y in polygon]
        draw.polygon(points, fill=255 if filled else 0)
    small = canvas.resize((side, side), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


@lru_cache(maxsize=4096)
def _glow_mask(shape: str, radius: float) -> np.ndarray:
    """A soft halo around a shape (night style): the mask padded and blurred, same centring as ``shape_mask``."""
    pad = int(np.ceil(radius * 0.6)) + 2
    core = shape_mask(shape, radius)
    padded = np.pad(core, pad)
    blurred = Image.fromarray((padded * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius * 0.35 + 1))
    return np.asarray(blurred, dtype=np.float32) / 255.0


def _paste(canvas: np.ndarray, mask: np.ndarray, x: int, y: int, rgb: np.ndarray, opacity: float) -> None:
    """Alpha-blend ``rgb`` into ``canvas (H, W, 3)`` float32 with coverage ``mask`` centred on pixel (x, y)."""
    half = mask.shape[0] // 2
    height, width = canvas.shape[:2]
    top, left = y - half, x - half
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + mask.shape[0], height), min(left + mask.shape[1], width)
    if y0 >= y1 or x0 >= x1:
        return
    alpha = mask[y0 - top: y1 - top, x0 - left: x1 - left, None] * opacity
    region = canvas[y0:y1, x0:x1]
    region += alpha * (rgb - region)


def draw_object(canvas: np.ndarray, style: Style, shape: str, x: float, y: float, radius: float,
                rgb: Sequence[float], opacity: float = 1.0) -> None:
    """Draw one shape centred at pixel ``(x, y)`` (rounded) with ``radius`` pixels (quantised to 1/4) in place."""
    if opacity <= 0.0:
        return
    radius = round(radius * 4) / 4
    x, y = round(x), round(y)
    colour = np.asarray(rgb, dtype=np.float32)
    if style.glow_strength > 0:
        _paste(canvas, _glow_mask(shape, radius), x, y, colour, opacity * style.glow_strength)
    _paste(canvas, shape_mask(shape, radius), x, y, colour, opacity)


def _background_colour(style: Style, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(style.background_low, style.background_high, 3) + np.asarray(style.tint)


def draw_background(style: Style, kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A background ``(size, size, 3)`` float32 in [0, 255]: plain, gradient, light noise or stripes."""
    base = _background_colour(style, rng)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    if kind == "plain":
        image = np.broadcast_to(base, (size, size, 3)).astype(np.float32)
    elif kind == "gradient":
        other = _background_colour(style, rng)
        direction = rng.integers(4)
        weight = [ramp[None, :], ramp[:, None], (ramp[None, :] + ramp[:, None]) / 2,
                  (ramp[None, ::-1] + ramp[:, None]) / 2][direction]
        weight = np.broadcast_to(weight, (size, size))[..., None]
        image = (base * (1 - weight) + other * weight).astype(np.float32)
    elif kind == "noise":
        image = (base + rng.normal(0.0, style.noise_sigma, (size, size, 3))).astype(np.float32)
        if style.speckle_fraction > 0:
            speckles = rng.random((size, size)) < style.speckle_fraction
            image[speckles] = rng.uniform(140, 220, (int(speckles.sum()), 1))
    elif kind == "stripes":
        period = int(rng.integers(max(size // 12, 3), max(size // 6, 4) + 1))
        orientation = rng.integers(3)
        rows, cols = np.mgrid[0:size, 0:size]
        coordinate = [cols, rows, rows + cols][orientation]
        stripe = ((coordinate // period) % 2).astype(np.float32)[..., None]
        shift = style.stripe_contrast * rng.choice([-1.0, 1.0])
        image = (base + shift * stripe).astype(np.float32)
    else:
        raise ValueError(f"unknown background kind {kind!r}; known: {', '.join(BACKGROUND_KINDS)}")
    if style.grain_sigma > 0:
        image = image + rng.normal(0.0, style.grain_sigma, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 255.0)


def _contrasting_colours(style: Style, background: np.ndarray) -> list[str]:
    mean = background.reshape(-1, 3).mean(axis=0)
    return [name for name, rgb in style.palette.items() if np.linalg.norm(np.asarray(rgb) - mean) >= MIN_CONTRAST]


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------------
# Image-caption pairs

IMAGE_CELL_CENTRES = (0.2, 0.5, 0.8)
IMAGE_RADIUS = {"small": (0.075, 0.1), "large": (0.16, 0.19)}
IMAGE_JITTER = 0.02
COLUMN_NAMES = ("left", "centre", "right")
ROW_NAMES = ("top", "middle", "bottom")


def position_name(column: int, row: int) -> str:
    """Grid cell -> "top left", "left", "centre", "bottom", ..."""
    vertical = "" if row == 1 else ROW_NAMES[row]
    horizontal = "" if column == 1 else COLUMN_NAMES[column]
    return " ".join(word for word in (vertical, horizontal) if word) or "centre"


def _position_phrases(column: int, row: int) -> tuple[str, ...]:
    name = position_name(column, row)
    if name == "centre":
        return ("in the centre", "in the middle", "at the centre")
    if column != 1 and row != 1:
        return (f"in the {name} corner", f"at the {name}", f"in the {name}")
    if row == 1:
        return (f"on the {name}", f"at the {name} side", f"on the {name} side")
    return (f"at the {name}", f"near the {name}", f"at the {name} edge")


@dataclass(frozen=True)
class SceneObject:
    """One drawn shape: ``column``/``row`` is its named grid cell; ``x``, ``y``, ``radius`` are in pixels."""

    shape: str
    colour: str
    size: str
    column: int
    row: int
    x: float
    y: float
    radius: float
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class ImageScene:
    style: str
    background: str
    objects: tuple[SceneObject, ...]


@dataclass(frozen=True)
class ImageSample:
    image: np.ndarray
    caption: str
    scene: ImageScene


class SyntheticImageCaptions:
    """Indexable image-caption pairs for CLIP pretraining: ``dataset[i] -> (uint8 (S, S, 3), caption)``.

    Sample ``i`` is a pure function of ``(seed, offset + i)``; ``styles`` lists the collections drawn from (one chosen
    per sample). Works as a map-style dataset for a torch ``DataLoader`` with workers.
    """

    def __init__(self, seed: int = 0, num_samples: int = 100_000, image_size: int = 64,
                 styles: Sequence[str] = STYLE_NAMES, offset: int = 0):
        if min(seed, num_samples, offset) < 0:
            raise ValueError(f"seed, num_samples and offset must be non-negative, got {seed}, {num_samples}, {offset}")
        if image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
        self.seed, self.num_samples, self.image_size, self.offset = seed, num_samples, image_size, offset
        self.styles = tuple(get_style(name).name for name in styles)
        if not self.styles:
            raise ValueError("styles must name at least one style")

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        sample = self.sample(index)
        return sample.image, sample.caption

    def sample(self, index: int) -> ImageSample:
        """The image, its caption and the scene it was drawn from (for checks and analysis)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = _rng(self.seed, "images", self.offset + index)
        style = STYLES[self.styles[rng.integers(len(self.styles))]]
        background_kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
        canvas = draw_background(style, background_kind, rng, self.image_size)
        objects = self._place_objects(rng, style, _contrasting_colours(style, canvas))
        for obj in objects:
            draw_object(canvas, style, obj.shape, obj.x, obj.y, obj.radius, obj.rgb)
        scene = ImageScene(style.name, background_kind, objects)
        return ImageSample(_to_uint8(canvas), image_caption(scene, rng), scene)

    def _place_objects(self, rng: np.random.Generator, style: Style, colours: list[str]) -> tuple[SceneObject, ...]:
        count = 1 if rng.random() < 0.55 else 2
        cells = [(column, row) for row in range(3) for column in range(3)]
        while True:
            chosen = [cells[i] for i in rng.choice(len(cells), count, replace=False)]
            sizes = [("small", "large")[rng.integers(2)] for _ in range(count)]
            radii = [rng.uniform(*IMAGE_RADIUS[size]) for size in sizes]
            kinds = [(colours[rng.integers(len(colours))], SHAPES[rng.integers(len(SHAPES))]) for _ in range(count)]
            if count == 2:
                gap = np.hypot(*(np.subtract(IMAGE_CELL_CENTRES[chosen[0][0]], IMAGE_CELL_CENTRES[chosen[1][0]]),
                                 np.subtract(IMAGE_CELL_CENTRES[chosen[0][1]], IMAGE_CELL_CENTRES[chosen[1][1]])))
                if kinds[0] == kinds[1] or gap < radii[0] + radii[1] + 2 * IMAGE_JITTER + 0.02:
                    continue
            break
        objects = []
        for (column, row), size, radius, (colour, shape) in zip(chosen, sizes, radii, kinds):
            jitter = rng.uniform(-IMAGE_JITTER, IMAGE_JITTER, 2)
            rgb = np.clip(np.asarray(style.palette[colour]) + rng.integers(-12, 13, 3), 0, 255)
            objects.append(SceneObject(
                shape, colour, size, column, row, x=(IMAGE_CELL_CENTRES[column] + jitter[0]) * self.image_size,
                y=(IMAGE_CELL_CENTRES[row] + jitter[1]) * self.image_size, radius=radius * self.image_size,
                rgb=tuple(int(c) for c in rgb)))
        return tuple(objects)


def _choice(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[rng.integers(len(options))]


def _object_phrase(rng: np.random.Generator, obj: SceneObject, with_size: bool) -> str:
    words = [_choice(rng, SIZE_WORDS[obj.size])] if with_size else []
    return " ".join(words + [obj.colour, _choice(rng, SHAPE_WORDS[obj.shape])])


def _relation(first: SceneObject, second: SceneObject, rng: np.random.Generator) -> str:
    """A true spatial relation of ``first`` to ``second`` from their grid cells."""
    options = []
    if first.row != second.row:
        options.append("above" if first.row < second.row else "below")
    if first.column != second.column:
        options.append("to the left of" if first.column < second.column else "to the right of")
    return _choice(rng, options)


def image_caption(scene: ImageScene, rng: np.random.Generator) -> str:
    """One caption for a scene from a small grammar (synonyms, optional size and position, word-order variants)."""
    background = f" on a {_choice(rng, BACKGROUND_WORDS[scene.background])} background" if rng.random() < 0.15 else ""
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        where = _choice(rng, _position_phrases(obj.column, obj.row))
        size, colour, shape = _choice(rng, SIZE_WORDS[obj.size]), obj.colour, _choice(rng, SHAPE_WORDS[obj.shape])
        full = _with_article(f"{size} {colour} {shape}")
        templates = (
            f"{full} {where}",
            f"{colour} {shape}, {size}, {where}",
            f"there is {full} {where}",
            f"{where}, {full}",
            f"{_with_article(f'{colour} {shape}')} {where}",
            f"a picture of {full}",
            f"{_with_article(f'{size} {shape}')} in {colour} {where}",
            f"{full} {where}{background}",
        )
        return templates[rng.integers(len(templates))]
    first, second = scene.objects
    a = _with_article(_object_phrase(rng, first, rng.random() < 0.6))
    b = _with_article(_object_phrase(rng, second, rng.random() < 0.6))
    where_a = _choice(rng, _position_phrases(first.column, first.row))
    where_b = _choice(rng, _position_phrases(second.column, second.row))
    templates = (
        f"{a} {_relation(first, second, rng)} {b}",
        f"{b} {_relation(second, first, rng)} {a}",
        f"{a} and {b}",
        f"{a} {where_a} and {b} {where_b}",
        f"two shapes: {a} and {b}",
        f"{a} {_relation(first, second, rng)} {b}{background}",
    )
    return templates[rng.integers(len(templates))]


# ---------------------------------------------------------------------------------------------------------------------
# Videos: specs, per-frame object tracks, rendering

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
            objects[event.target] = _apply(objects[event.target], event.kind, event.after)
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


def _apply(obj: VideoObject, kind: str, value) -> VideoObject:
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
    return draw_background(get_style(spec.style), spec.background_kind, _rng(spec.background_seed), spec.frame_size)


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
    return _to_uint8(frames)


# ---------------------------------------------------------------------------------------------------------------------
# Videos: sampling specs

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
            after = _choice(rng, [c for c in colours if c != before])
        changes.append((kind, target, before, after))
        objects[target] = _apply(objects[target], kind, after)
        unused.discard(target)
    return changes


def sample_video_spec(rng: np.random.Generator, style: Style, layout: ClipLayout, frame_size: int = VIDEO_FRAME_SIZE,
                      fps: int = VIDEO_FPS) -> VideoSpec:
    """A random video: 1-2 objects (distinct shapes), events in sequence with idle gaps; every object takes part."""
    background_kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    background_seed = int(rng.integers(2**31))
    background = draw_background(style, background_kind, _rng(background_seed), frame_size)
    colours = _contrasting_colours(style, background)
    num_events = int(rng.integers(layout.num_events[0], layout.num_events[1] + 1))
    changes = None
    while changes is None:
        num_objects = 1 if rng.random() < 0.4 else 2
        shapes = rng.choice(len(SHAPES), num_objects, replace=False)
        cells = rng.choice(9, num_objects, replace=False)
        objects = tuple(VideoObject(SHAPES[shape], _choice(rng, colours), ("small", "large")[rng.integers(2)],
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
# Videos: captions

MOVE_WORDS = {
    "left": ("moves left", "moves to the left", "slides to the left", "goes left"),
    "right": ("moves right", "moves to the right", "slides to the right", "goes right"),
    "up": ("moves up", "goes up", "rises", "slides up"),
    "down": ("moves down", "goes down", "drops down", "slides down"),
}
VERB_WORDS = {
    "appear": ("appears", "shows up", "pops up", "comes into view"),
    "disappear": ("disappears", "vanishes", "fades away", "fades out"),
    "grow": ("grows", "gets bigger", "grows larger", "becomes large"),
    "shrink": ("shrinks", "gets smaller", "becomes small", "shrinks down"),
}
RECOLOUR_WORDS = ("turns {after}", "becomes {after}", "changes to {after}", "changes colour from {before} to {after}")


def _event_states(spec: VideoSpec) -> list[VideoObject]:
    """The target object's state just before each event (its colour and size name it in the captions)."""
    objects, states = list(spec.objects), []
    for event in spec.events:
        states.append(objects[event.target])
        objects[event.target] = _apply(objects[event.target], event.kind, event.after)
    return states


def _verb_phrase(rng: np.random.Generator, event: Event, state: VideoObject, short: bool) -> str:
    if event.kind == "move":
        return MOVE_WORDS[event.direction][0 if short else rng.integers(4)]
    if event.kind == "recolour":
        template = RECOLOUR_WORDS[0 if short else rng.integers(len(RECOLOUR_WORDS))]
        return template.format(before=event.before, after=event.after)
    verb = VERB_WORDS[event.kind][0 if short else rng.integers(4)]
    if event.kind == "appear" and not short and rng.random() < 0.4:
        verb += " " + _choice(rng, _position_phrases(state.column, state.row))
    return verb


def _clauses(rng: np.random.Generator, spec: VideoSpec, order: Sequence[int], short: bool,
             allow_pronoun: bool) -> dict[int, str]:
    """One clause per event, with articles by mention order in the sentence (``order``: events in surface order)."""
    states, mentioned, clauses, previous_target = _event_states(spec), set(), {}, None
    for index in order:
        event, state = spec.events[index], states[index]
        shape = SHAPE_WORDS[state.shape][0 if short else rng.integers(len(SHAPE_WORDS[state.shape]))]
        if allow_pronoun and event.target == previous_target and not short and rng.random() < 0.5:
            subject = "it"
        elif event.target in mentioned:
            subject = f"the {state.colour} {shape}" if short or rng.random() < 0.7 else f"the {shape}"
        else:
            with_size = not short and rng.random() < 0.3
            words = f"{_choice(rng, SIZE_WORDS[state.size])} {state.colour} {shape}" if with_size \
                else f"{state.colour} {shape}"
            subject = _with_article(words)
        clauses[index] = f"{subject} {_verb_phrase(rng, event, state, short)}"
        mentioned.add(event.target)
        previous_target = event.target
    return clauses


def _sequence_sentence(rng: np.random.Generator, spec: VideoSpec, short: bool) -> str:
    """All events in one sentence, with connectives that make their order explicit."""
    count = len(spec.events)
    forward = list(range(count))
    if count == 1:
        return _clauses(rng, spec, forward, short, allow_pronoun=False)[0]
    if count == 2 and not short and rng.random() < 0.3:
        c = _clauses(rng, spec, [1, 0], short, allow_pronoun=False)
        return _choice(rng, (f"{c[1]} after {c[0]}", f"{c[1]} once {c[0]}"))
    c = _clauses(rng, spec, forward, short, allow_pronoun=True)
    if short:
        return ", then ".join(c[i] for i in forward)
    if count == 2:
        return _choice(rng, (f"{c[0]}, then {c[1]}", f"first {c[0]}, after that {c[1]}", f"{c[0]} and then {c[1]}",
                             f"{c[0]}, afterwards {c[1]}", f"{c[0]} before {c[1]}"))
    middle = ", ".join(c[i] for i in forward[1:-1])
    return _choice(rng, (", then ".join(c[i] for i in forward),
                         f"first {c[0]}, then {middle}, and finally {c[count - 1]}",
                         f"{c[0]}, after that {middle}, and in the end {c[count - 1]}",
                         f"first {c[0]}, next {middle}, finally {c[count - 1]}"))


def video_captions(spec: VideoSpec, rng: np.random.Generator, count: int = CAPTIONS_PER_VIDEO) -> list[str]:
    """``count`` distinct paraphrases that name every event in order, each at most ``MAX_CAPTION_WORDS`` long."""
    captions: list[str] = []
    for _ in range(count * 20):
        sentence = _sequence_sentence(rng, spec, short=False)
        if _word_count(sentence) <= MAX_CAPTION_WORDS and sentence not in captions:
            captions.append(sentence)
            if len(captions) == count:
                return captions
    shortest = _sequence_sentence(rng, spec, short=True)
    return (captions + [shortest] * count)[:count]


def event_sentences(spec: VideoSpec, rng: np.random.Generator) -> list[str]:
    """One sentence per event (ActivityNet Captions style), in order, capitalised with a full stop."""
    clauses = _clauses(rng, spec, range(len(spec.events)), short=False, allow_pronoun=False)
    return [clauses[index][0].upper() + clauses[index][1:] + "." for index in range(len(spec.events))]


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


def _render_and_write(job: tuple[VideoSpec, str]) -> None:
    spec, path = job
    write_mp4(path, render_video(spec), spec.fps)


def _parallel_map(function, items: list, workers: int, description: str, unit: str, chunksize: int = 1) -> list:
    """``[function(item) for item in items]`` in ``workers`` processes (forked where the platform allows, so a script
    run from stdin or a notebook works too), with a progress bar; results do not depend on the number of workers."""
    if workers <= 1:
        return [function(item) for item in tqdm(items, desc=description, unit=unit)]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        return list(tqdm(pool.imap(function, items, chunksize), total=len(items), desc=description, unit=unit))


# ---------------------------------------------------------------------------------------------------------------------
# The world: sizes, datasets in the MSR-VTT and ActivityNet Captions formats, manifest

@dataclass(frozen=True)
class WorldSize:
    """How many videos each collection gets, and the clip layouts of short (MSR-VTT style) and long videos."""

    msrvtt_train: int
    msrvtt_test: int
    temporal_pairs: int
    activitynet_train: int
    activitynet_val: int
    short_clips: ClipLayout
    long_clips: ClipLayout


_SHORT = ClipLayout(num_events=(2, 3), event_frames=(6, 10), gap_frames=(2, 5), edge_frames=(1, 4))
_LONG = ClipLayout(num_events=(4, 6), event_frames=(12, 18), gap_frames=(5, 10), edge_frames=(3, 6))
WORLD_SIZES = {
    "tiny": WorldSize(12, 6, 4, 3, 2, short_clips=ClipLayout((2, 3), (4, 6), (1, 2), (1, 2)),
                      long_clips=ClipLayout((3, 3), (6, 8), (3, 5), (2, 3))),
    "small": WorldSize(1500, 300, 150, 100, 30, _SHORT, _LONG),
    "medium": WorldSize(6000, 1000, 500, 400, 100, _SHORT, _LONG),
}


@dataclass(frozen=True)
class _CsvTable:
    columns: tuple[str, ...]
    rows: list[dict[str, str]]


@dataclass
class _Dataset:
    """Annotations of one dataset folder in memory, and the videos still to render into it."""

    relative: str
    files: dict[str, object] = field(default_factory=dict)
    jobs: list[tuple[VideoSpec, str]] = field(default_factory=list)
    summary: dict[str, object] = field(default_factory=dict)


def _msrvtt_dataset(relative: str, collection: str, seed: int, train: list[VideoSpec], test: list[VideoSpec],
                    groups: list[list[int]] | None) -> _Dataset:
    """MSR-VTT layout: ``MSRVTT_data.json``, ``MSRVTT_train.9k.csv`` (if any train), ``MSRVTT_JSFUSION_test.csv``."""
    dataset = _Dataset(relative)
    videos, sentences, events, test_rows = [], [], {}, []
    for number, spec in enumerate(train + test):
        video_id, split = f"video{number}", "train" if number < len(train) else "test"
        captions = video_captions(spec, _rng(seed, relative, "captions", number))
        videos.append({"category": EVENT_KINDS.index(spec.events[0].kind), "url": f"synthetic://{relative}/{video_id}",
                       "video_id": video_id, "start time": 0.0, "end time": round(spec.duration, 3), "split": split,
                       "id": number})
        sentences += [{"caption": caption, "video_id": video_id, "sen_id": len(sentences) + k}
                      for k, caption in enumerate(captions)]
        events[video_id] = spec.to_json()
        dataset.jobs.append((spec, f"videos/{video_id}.mp4"))
        if split == "test":
            test_rows.append({"key": f"ret{len(test_rows)}", "vid_key": f"msr{number}", "video_id": video_id,
                              "sentence": captions[0]})
    dataset.files["MSRVTT_data.json"] = {
        "info": {"contributor": "petvr synthetic world", "description": f"{collection} collection, procedural",
                 "version": str(WORLD_FORMAT_VERSION)},
        "videos": videos, "sentences": sentences}
    if train:
        dataset.files["MSRVTT_train.9k.csv"] = _CsvTable(("video_id",), [{"video_id": f"video{n}"}
                                                                         for n in range(len(train))])
    dataset.files["MSRVTT_JSFUSION_test.csv"] = _CsvTable(("key", "vid_key", "video_id", "sentence"), test_rows)
    dataset.files["events.json"] = events
    dataset.summary = {"format": "msrvtt", "train_videos": len(train), "test_videos": len(test),
                       "captions": len(sentences)}
    if groups is not None:
        offset = len(train)
        dataset.files["groups.json"] = {"groups": [[f"video{offset + i}" for i in group] for group in groups]}
        dataset.summary["groups"] = len(groups)
    return dataset


def _activitynet_id(rng: np.random.Generator, taken: set[str]) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
    while True:
        stem = alphabet[rng.integers(52)] + "".join(alphabet[i] for i in rng.integers(len(alphabet), size=10))
        if stem not in taken:
            taken.add(stem)
            return stem


def _activitynet_dataset(relative: str, seed: int, train: list[VideoSpec], val: list[VideoSpec]) -> _Dataset:
    """ActivityNet Captions layout: ``train.json``/``val_1.json`` keyed ``v_<id>``, id lists, files ``<id>.mp4``."""
    dataset, taken, events, id_rng = _Dataset(relative), set(), {}, _rng(seed, relative, "ids")
    for split, specs, captions_name, ids_name in (("train", train, "train.json", "train_ids.json"),
                                                  ("val", val, "val_1.json", "val_ids.json")):
        annotations, ids = {}, []
        for number, spec in enumerate(specs):
            stem = _activitynet_id(id_rng, taken)
            key = "v_" + stem
            annotations[key] = {
                "duration": round(spec.duration, 3),
                "timestamps": [[round(e.start / spec.fps, 3), round((e.end + 1) / spec.fps, 3)] for e in spec.events],
                "sentences": event_sentences(spec, _rng(seed, relative, split, "captions", number))}
            ids.append(key)
            events[key] = spec.to_json()
            dataset.jobs.append((spec, f"videos/{stem}.mp4"))
        dataset.files[captions_name] = annotations
        dataset.files[ids_name] = ids
    dataset.files["events.json"] = events
    dataset.summary = {"format": "activitynet", "train_videos": len(train), "val_videos": len(val),
                       "captions": sum(len(spec.events) for spec in train + val)}
    return dataset


def _collection_datasets(task: tuple[str, int, WorldSize, int]) -> list[_Dataset]:
    """The three datasets of one collection, annotations complete and videos still to render: ``task`` is
    ``(collection, seed, size, num_train)``."""
    collection, seed, size, num_train = task
    style = get_style(collection)

    def specs(name: str, count: int, layout: ClipLayout) -> list[VideoSpec]:
        return [sample_video_spec(_rng(seed, collection, name, index), style, layout) for index in range(count)]

    short, long = size.short_clips, size.long_clips
    msrvtt = _msrvtt_dataset(f"{collection}/msrvtt", collection, seed, specs("msrvtt train", num_train, short),
                             specs("msrvtt test", size.msrvtt_test, short), groups=None)
    temporal, groups = [], []
    for index in range(size.temporal_pairs):
        rng = _rng(seed, collection, "temporal", index)
        pair = list(sample_temporal_pair(rng, style, short))
        rng.shuffle(pair)  # which of the two is the one sampled forwards must not follow from the numbering
        groups.append([len(temporal), len(temporal) + 1])
        temporal += pair
    temporal_set = _msrvtt_dataset(f"{collection}/temporal", collection, seed, [], temporal, groups=groups)
    activitynet = _activitynet_dataset(f"{collection}/activitynet", seed,
                                       specs("activitynet train", size.activitynet_train, long),
                                       specs("activitynet val", size.activitynet_val, long))
    return [msrvtt, temporal_set, activitynet]


def _write_annotation(path: Path, content) -> None:
    if isinstance(content, _CsvTable):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=content.columns)
            writer.writeheader()
            writer.writerows(content.rows)
    else:
        path.write_text(json.dumps(content, indent=1 if path.name == "manifest.json" else None))


@dataclass(frozen=True)
class WorldPaths:
    """Where a generated world lives: ``datasets["studio/msrvtt"]`` -> its folder (also temporal, activitynet)."""

    root: Path
    manifest: Path
    datasets: dict[str, Path]

    def dataset(self, collection: str, kind: str) -> Path:
        key = f"{collection}/{kind}"
        if key not in self.datasets:
            raise KeyError(f"no dataset {key!r} in the world at {self.root}; it has {', '.join(self.datasets)}")
        return self.datasets[key]


def _world_paths(root: Path, manifest: dict) -> WorldPaths:
    return WorldPaths(root, root / "manifest.json", {key: root / key for key in manifest["datasets"]})


def _read_manifest(root: Path) -> dict | None:
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(path, f"not valid JSON ({error}); delete the folder to regenerate the world") from error


def generate_world(root: str | Path, seed: int = 0, size: str = "small", num_videos: int | None = None,
                   collections: Sequence[str] = STYLE_NAMES, workers: int = 2) -> WorldPaths:
    """Write the synthetic world under ``root`` and return its paths; a no-op if it is already there.

    Layout, per collection (``studio``, ``night``): ``<collection>/msrvtt`` (MSR-VTT format: ``videos/videoN.mp4``,
    ``MSRVTT_data.json``, ``MSRVTT_train.9k.csv``, ``MSRVTT_JSFUSION_test.csv``), ``<collection>/temporal`` (MSR-VTT
    format, test only, time-reversed pairs listed in ``groups.json``), ``<collection>/activitynet`` (ActivityNet
    Captions format: ``train.json``, ``val_1.json``, ``train_ids.json``, ``val_ids.json``, ``videos/<id>.mp4``). Every
    dataset folder also has ``events.json``: the ``VideoSpec`` of each video, so anyone can re-render or check it.
    ``root/manifest.json`` records the settings; a call with the same settings returns at once, other settings replace
    the world. Everything is written to a temporary sibling folder and renamed into place, so an interrupted run
    never leaves a half world behind ``root``. ``num_videos`` overrides the MSR-VTT training videos per collection.
    """
    if size not in WORLD_SIZES:
        raise ValueError(f"unknown world size {size!r}; known: {', '.join(WORLD_SIZES)}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    collections = tuple(get_style(name).name for name in collections)
    if not collections or len(set(collections)) != len(collections):
        raise ValueError(f"collections must name distinct styles, got {collections}")
    world_size = WORLD_SIZES[size]
    num_train = world_size.msrvtt_train if num_videos is None else num_videos
    if num_train < 0:
        raise ValueError(f"num_videos must be non-negative, got {num_videos}")
    settings = {"format_version": WORLD_FORMAT_VERSION, "seed": seed, "size": size, "msrvtt_train": num_train,
                "collections": list(collections), "fps": VIDEO_FPS, "frame_size": VIDEO_FRAME_SIZE}
    root = Path(root)
    existing = _read_manifest(root)
    if existing is not None and existing.get("settings") == settings:
        return _world_paths(root, existing)
    if root.exists() and existing is None and any(root.iterdir()):
        raise DataError(root, "exists and is not a synthetic world (no manifest.json); refusing to overwrite it")

    tasks = [(name, seed, world_size, num_train) for name in collections]
    datasets = [dataset for datasets in _parallel_map(_collection_datasets, tasks, workers, "annotations", "collection")
                for dataset in datasets]
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        jobs = []
        for dataset in datasets:
            folder = staging / dataset.relative
            (folder / "videos").mkdir(parents=True)
            for name, content in dataset.files.items():
                _write_annotation(folder / name, content)
            jobs += [(spec, str(folder / relative)) for spec, relative in dataset.jobs]
        jobs.sort(key=lambda job: -job[0].num_frames)
        _parallel_map(_render_and_write, jobs, workers, f"synthetic world ({size})", "video", chunksize=8)
        manifest = {"format": "petvr synthetic world", "settings": settings,
                    "datasets": {dataset.relative: dataset.summary for dataset in datasets},
                    "num_videos": len(jobs),
                    "num_files": sum(len(d.files) for d in datasets) + len(jobs) + 1}
        _write_annotation(staging / "manifest.json", manifest)
        _replace_folder(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _world_paths(root, manifest)


def _replace_folder(staging: Path, root: Path) -> None:
    """Move the finished world into ``root``; an older world there is moved aside first, then deleted."""
    if not root.exists():
        os.replace(staging, root)
        return
    if not any(root.iterdir()):
        root.rmdir()
        os.replace(staging, root)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    os.replace(root, retired / root.name)
    os.replace(staging, root)
    shutil.rmtree(retired, ignore_errors=True)
