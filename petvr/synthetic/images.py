"""Image-caption pairs for contrastive pretraining of the embedded default (``SyntheticImageCaptions``).

Scenes hold one or two shapes with a colour, a size and a position on a 3x3 grid; captions come from the grammar in
``captions.py``. ``dataset[i]`` depends only on ``(seed, offset + i)``, so DataLoader workers need no coordination and
held-out sets are other seeds or offsets.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .captions import image_caption
from .drawing import (BACKGROUND_KINDS, SHAPES, STYLE_NAMES, STYLES, Style, contrasting_colours, draw_background,
                      draw_object, get_style, seeded_rng, to_uint8)

IMAGE_CELL_CENTRES = (0.2, 0.5, 0.8)
IMAGE_RADIUS = {"small": (0.075, 0.1), "large": (0.16, 0.19)}
IMAGE_JITTER = 0.02


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
        rng = seeded_rng(self.seed, "images", self.offset + index)
        style = STYLES[self.styles[rng.integers(len(self.styles))]]
        background_kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
        canvas = draw_background(style, background_kind, rng, self.image_size)
        objects = self._place_objects(rng, style, contrasting_colours(style, canvas))
        for obj in objects:
            draw_object(canvas, style, obj.shape, obj.x, obj.y, obj.radius, obj.rgb)
        scene = ImageScene(style.name, background_kind, objects)
        return ImageSample(to_uint8(canvas), image_caption(scene, rng), scene)

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
