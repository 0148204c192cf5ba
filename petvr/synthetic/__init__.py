"""The procedural synthetic world: image-caption pairs and captioned videos, deterministic by seed.

No real CLIP weights or benchmark videos can be downloaded here, so the embedded default backbone (``petvr-tiny``) is
pretrained and evaluated on this world instead:

- ``drawing``: styles (one per visual collection), anti-aliased shapes, backgrounds, the seeded random generators.
- ``captions``: the vocabulary and the grammar that describes images and videos.
- ``images``: ``SyntheticImageCaptions``, an indexable stream of ``(uint8 image (H, W, 3), caption)`` pairs for
  contrastive pretraining. Scenes hold one or two shapes with a colour, a size and a position; captions come from a
  small grammar with synonyms and word-order variants.
- ``videos``: ``VideoSpec``s, objects on a 3x3 grid and a sequence of 2-6 events (move left/right/up/down, appear,
  disappear, change colour, grow, shrink) separated by idle gaps. ``render_video`` turns a spec into frames and the
  caption functions describe the events in order ("a red circle moves left, then a blue square appears").
- ``world``: ``generate_world`` writes mp4 files with annotations in the real MSR-VTT and ActivityNet Captions formats,
  a hard "temporal" test split, for several visual collections (``STYLES``), with a manifest; see its docstring.
- ``pretrain``: pretraining of ``petvr-tiny`` on the image-caption stream (imported on its own: it needs the trainer).
"""
from .captions import CAPTIONS_PER_VIDEO, MOVE_WORDS, SHAPE_WORDS, VERB_WORDS, event_sentences, image_caption, video_captions
from .drawing import STYLE_NAMES, STYLES, Style, get_style, shape_mask
from .images import ImageSample, SyntheticImageCaptions
from .videos import (INVERSE_KIND, VIDEO_CELL_CENTRES, VIDEO_FPS, VIDEO_RADIUS, ClipLayout, Event, VideoObject,
                     VideoSpec, apply_event, render_video, sample_temporal_pair, sample_video_spec, video_background,
                     write_mp4)
from .world import WORLD_SIZES, WorldPaths, generate_world

__all__ = [
    "CAPTIONS_PER_VIDEO", "INVERSE_KIND", "MOVE_WORDS", "SHAPE_WORDS", "STYLES", "STYLE_NAMES", "VERB_WORDS",
    "VIDEO_CELL_CENTRES", "VIDEO_FPS", "VIDEO_RADIUS", "WORLD_SIZES", "ClipLayout", "Event", "ImageSample", "Style",
    "SyntheticImageCaptions", "VideoObject", "VideoSpec", "WorldPaths", "apply_event", "event_sentences",
    "generate_world", "get_style", "image_caption", "render_video", "sample_temporal_pair", "sample_video_spec",
    "shape_mask", "video_background", "video_captions", "write_mp4",
]
