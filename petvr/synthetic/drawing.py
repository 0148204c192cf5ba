"""How the synthetic world looks: styles (palettes, backgrounds), anti-aliased shapes, compositing, and the seeded
random generators every part of the world draws from.

Pixels only: what a shape or a style is called in a caption lives in ``captions.py``.
"""
from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "diamond")
BACKGROUND_KINDS = ("plain", "gradient", "noise", "stripes")
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


def seeded_rng(*keys: int | str) -> np.random.Generator:
    """A generator seeded by a tuple of ints and names, independent of Python's hash randomisation."""
    return np.random.default_rng([_stable_hash(key) if isinstance(key, str) else int(key) for key in keys])


def pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[rng.integers(len(options))]


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


def contrasting_colours(style: Style, background: np.ndarray) -> list[str]:
    mean = background.reshape(-1, 3).mean(axis=0)
    return [name for name, rgb in style.palette.items() if np.linalg.norm(np.asarray(rgb) - mean) >= MIN_CONTRAST]


def to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
