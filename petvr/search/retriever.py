"""``Retriever``: one frozen backbone plus one adapter, as a notebook user expects from open_clip.

Raw strings and file paths in, normalised numpy arrays and ranked results out::

    retriever = Retriever.from_adapter("runs/my-adapter")      # or Retriever.from_adapter() for the bundled default
    texts = retriever.embed_texts(["a red square moves left"])  # (1, D) float32, unit rows
    videos = retriever.embed_videos(["a.mp4", "b.mkv"])         # (2, D)
    retriever.index("my_videos/")                               # builds my_videos/.petvr-index
    for hit in retriever.search("a red square moves left", k=5):
        print(hit.path, hit.score, hit.start, hit.end)

The tokenizer, the sampling config (from the adapter's recipe) and the pooling are the retriever's business. A video's
*vector* is what the method's loose similarity head compares a text with (its ``pool_video``, cosine = the head's
logit / logit scale). For a query-dependent method (``method.pairwise``: query scoring, tightTransf, or a method that
scores pairs its own way) no such vector exists: the vector is then the mean of the normalised frame features, used
only to shortlist, and the shortlist is re-ranked by the method's own ``similarity`` on the stored frame features.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..backbone import CLIP
from ..backbone.tokenizer import Tokenizer
from ..data.dataset import FrameSource
from ..data.video import SamplingConfig, normalize, resize_center_crop
from ..errors import DataError
from ..methods import RetrievalModel
from ..methods.base import Method
from ..methods.heads import PooledVideoHead, mean_pool_normalised

DEFAULT_ADAPTER = "default"
"""What ``from_adapter()`` without a folder loads: the bundled backbone, zero-shot (frames mean-pooled)."""
DEFAULT_RECIPE = ("synthetic", "zero_shot.toml")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True)
class TextQuery:
    """A text after tokenisation: how many BPE tokens it had and whether the word limit cut it (CLIP's way: the
    first ``max_words - 2`` tokens are kept between SOT and EOT)."""

    text: str
    tokens: int
    max_tokens: int

    @property
    def truncated(self) -> bool:
        return self.tokens > self.max_tokens

    def note(self) -> str | None:
        if not self.truncated:
            return None
        return (f"the query has {self.tokens} tokens; the text tower reads {self.max_tokens}, so it was truncated "
                f"after {self.max_tokens} tokens as CLIP does")


@dataclass
class SegmentEmbeddings:
    """What indexing keeps of a batch of clips: ``vectors (N, D)`` float32 unit rows (what faiss searches),
    ``frames`` per clip ``(T_i, D)`` float16 frame features, ``times`` per clip ``(T_i,)`` seconds, and ``extras``
    per clip: the other tensors of a method whose ``encode_video`` gives a dict (None otherwise)."""

    vectors: np.ndarray
    frames: list[np.ndarray]
    times: list[np.ndarray]
    extras: list[dict[str, np.ndarray] | None]


class Retriever:
    """A ``RetrievalModel`` with its sampling config and word limit: embeds, indexes and searches."""

    def __init__(self, model: RetrievalModel, sampling: SamplingConfig, max_words: int = 32, *,
                 adapter: str = DEFAULT_ADAPTER, adapter_hash: str | None = None,
                 device: torch.device | str = "cpu", frame_cache: str | Path | None = None):
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.sampling = sampling
        context = model.backbone.config.text.context_length
        self.tokenizer = Tokenizer(min(max_words, context))
        self.adapter = adapter
        self.adapter_hash = adapter_hash or adapter_identity(model, None)
        self.frames = FrameSource(sampling, frame_cache)
        self.collection = None  # the index ``index()`` built or ``open()`` opened, for ``search``

    # -- construction -----------------------------------------------------------------------------------------------
    @classmethod
    def from_adapter(cls, folder: str | Path | None = None, *, backbone: CLIP | None = None,
                     device: torch.device | str = "cpu", frame_cache: str | Path | None = None) -> "Retriever":
        """The retriever of an adapter folder (its recipe gives frames and words), or with ``folder=None`` (or
        ``"default"``) the bundled default: the embedded backbone zero-shot. ``backbone``: an already loaded backbone
        to share (its weight hash must match the adapter's); many retrievers can share one."""
        from ..backbone.checkpoints import backbone_weight_hash, load_backbone
        from ..training.recipe import load_recipe, sampling_config, shipped_recipes_dir

        if folder is None or str(folder) == DEFAULT_ADAPTER:
            recipe = load_recipe(shipped_recipes_dir().joinpath(*DEFAULT_RECIPE))
            if backbone is None:
                backbone = load_backbone(recipe["backbone"]["name"])
                model = RetrievalModel(backbone, "zero_shot")
            else:
                model = RetrievalModel(backbone, "zero_shot", backbone_hash=backbone_weight_hash(backbone))
            adapter, weights = DEFAULT_ADAPTER, None
        else:
            model = RetrievalModel.from_adapter(folder, backbone=backbone)
            recipe = model.adapter_description.get("recipe") or {}
            from ..adapters import ADAPTER_WEIGHTS, resolve_adapter_folder

            resolved = resolve_adapter_folder(Path(folder))
            adapter, weights = str(resolved.resolve()), resolved / ADAPTER_WEIGHTS
        if "data" in recipe:
            sampling = sampling_config(recipe, model.backbone, train=False)
            max_words = int(recipe["data"].get("max_words", 32))
        else:  # an adapter without a recipe (a converted checkpoint): CLIP4Clip's evaluation defaults
            sampling = SamplingConfig(image_size=model.backbone.config.vision.image_size)
            max_words = 32
        return cls(model, sampling, max_words, adapter=adapter, adapter_hash=adapter_identity(model, weights),
                   device=device, frame_cache=frame_cache)

    # -- what the vectors mean --------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.model.backbone.config.embed_dim

    @property
    def pairwise(self) -> bool:
        """True when a text's score needs the video's frames (the index shortlists, then re-ranks)."""
        method = self.model.method
        loose = (not method.pairwise and isinstance(getattr(method, "head", None), PooledVideoHead)
                 and type(method).similarity is Method.similarity)
        return not loose

    @property
    def backbone_hash(self) -> str:
        return self.model.backbone_hash

    def identity(self) -> dict:
        """What an index records and checks: the adapter and backbone behind its vectors, and how frames were
        sampled (a different sampling gives different vectors too)."""
        return {"adapter": self.adapter, "adapter_hash": self.adapter_hash, "backbone": self.model.backbone.name,
                "backbone_hash": self.backbone_hash, "method": self.model.method_name, "pairwise": self.pairwise,
                "dim": self.dim, "sampling": self.sampling.key(), "max_words": self.tokenizer.max_words}

    # -- embedding --------------------------------------------------------------------------------------------------
    def text_query(self, text: str) -> TextQuery:
        if not isinstance(text, str):
            raise TypeError(f"a text query must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("the query is empty")
        tokens = len(Tokenizer(10 ** 9).encode(text)) - 2
        return TextQuery(text, tokens, self.tokenizer.max_words - 2)

    @torch.no_grad()
    def text_features(self, texts: Sequence[str]) -> Tensor:
        """The text tower's raw output ``(N, D)`` (what a pairwise head takes)."""
        token_ids, token_mask = self.tokenizer(list(texts))
        return self.model.encode_text(token_ids.to(self.device), token_mask.to(self.device))

    def embed_texts(self, texts: str | Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> ``(N, D)`` float32 unit rows (a query over the word limit is truncated, CLIP's way)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        for text in texts:
            self.text_query(text)
        chunks = [F.normalize(self.text_features(texts[start:start + batch_size]), dim=-1)
                  for start in range(0, len(texts), batch_size)]
        return torch.cat(chunks).cpu().numpy() if chunks else np.zeros((0, self.dim), np.float32)

    @torch.no_grad()
    def pool(self, frame_features: Tensor, frame_mask: Tensor) -> Tensor:
        """``(N, T, D)``, ``(N, T)`` -> ``(N, D)`` unit vectors: the loose head's pooling, else meanP (shortlist)."""
        if self.pairwise:
            return mean_pool_normalised(frame_features, frame_mask)
        return F.normalize(self.model.method.head.pool_video(frame_features, frame_mask), dim=-1)

    @torch.no_grad()
    def embed_clips(self, frames: Tensor, frame_mask: Tensor, timestamps: Tensor) -> SegmentEmbeddings:
        """Model inputs ``(N, T, 3, H, W)``, ``(N, T)``, ``(N, T)`` -> vectors, frame features and frame times."""
        frame_mask = frame_mask.to(self.device)
        output = self.model.encode_video(frames.to(self.device), frame_mask)
        # A method may give a dict of per-video tensors with the frame features under "frames" (VideoFeatures).
        features = output["frames"] if isinstance(output, dict) else output
        vectors = self.pool(features, frame_mask).float().cpu().numpy()
        masks = frame_mask.cpu().numpy()
        features = features.cpu().to(torch.float16).numpy()
        extras = ({name: value.cpu().float().numpy() for name, value in output.items() if name != "frames"}
                  if isinstance(output, dict) else {})
        return SegmentEmbeddings(np.ascontiguousarray(vectors, dtype=np.float32),
                                 [features[i][masks[i]] for i in range(len(masks))],
                                 [timestamps[i].numpy()[masks[i]] for i in range(len(masks))],
                                 [{name: value[i] for name, value in extras.items()} or None
                                  for i in range(len(masks))])

    def embed_videos(self, paths: str | Path | Sequence[str | Path], batch_size: int = 8) -> np.ndarray:
        """Video files (whole, sampled as the adapter was trained) -> ``(N, D)`` float32 unit rows."""
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        vectors = []
        for start in range(0, len(paths), batch_size):
            samples = [self.frames.load(Path(path), None, None, None) for path in paths[start:start + batch_size]]
            vectors.append(self.embed_clips(torch.stack([s.frames for s in samples]),
                                            torch.stack([s.frame_mask for s in samples]),
                                            torch.stack([s.timestamps for s in samples])).vectors)
        return np.concatenate(vectors) if vectors else np.zeros((0, self.dim), np.float32)

    def embed_images(self, paths: str | Path | Sequence[str | Path]) -> np.ndarray:
        """Image files -> ``(N, D)`` float32 unit rows: each image is a one-frame video for the video side."""
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not paths:
            return np.zeros((0, self.dim), np.float32)
        frames = torch.stack([normalize(_read_image(path, self.sampling.image_size)[None], self.sampling.mean,
                                        self.sampling.std) for path in paths])
        mask = torch.ones(len(paths), 1, dtype=torch.bool)
        return self.embed_clips(frames, mask, torch.zeros(len(paths), 1, dtype=torch.float64)).vectors

    # -- index and search -------------------------------------------------------------------------------------------
    def index(self, folder: str | Path, out: str | Path | None = None, **options):
        """Index every video under ``folder`` (recursively) into ``out`` (default ``folder/.petvr-index``); see
        ``petvr.search.indexer.build_index`` for the options. Returns the run's ``IndexReport``; ``search`` then
        searches this index."""
        from .collection import Collection
        from .indexer import build_index

        report = build_index(self, folder, out, **options)
        self.collection = Collection.open(report.index, self)
        return report

    def open(self, index: str | Path):
        """Open an existing index for ``search`` (refused when it was built with another adapter or backbone)."""
        from .collection import Collection

        self.collection = Collection.open(index, self)
        return self.collection

    def search(self, query: str | Path | None = None, k: int = 10, *, text: str | None = None,
               image: str | Path | None = None, video: str | Path | None = None):
        """The ``k`` best videos of the index for a text, an image or a short video clip.

        ``query`` is a text, unless it names an existing image or video file; or say which with ``text=``,
        ``image=`` or ``video=``. Returns a ``SearchResult`` (a list of ``Hit``s, best first, with ``.note``)."""
        if self.collection is None:
            raise ValueError("no index to search: call retriever.index(folder) or retriever.open(index) first")
        return self.collection.search(query, k, text=text, image=image, video=video)


def adapter_identity(model: RetrievalModel, weights: Path | None) -> str:
    """A short sha256 of what makes the vectors: method, its config, the trained weights' bytes, the backbone's hash."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"method": model.method_name, "config": model.method_config_dict(),
                              "backbone": model.backbone_hash}, sort_keys=True, default=str).encode())
    if weights is not None:
        digest.update(Path(weights).read_bytes())
    return digest.hexdigest()[:16]


def _read_image(path: str | Path, size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return resize_center_crop(image, size)
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(path, f"cannot read as an image: {error}") from None
