"""An opened index: its store, its faiss vectors and the retriever that made them; ``search`` answers queries.

A query is a text, an image or a short video clip. Its vector is searched in faiss; hits are segments, grouped by
video (a video's score is its best segment's). For a query-dependent method and a text query, the best
``shortlist`` segments are re-scored by the method's own ``similarity`` on their stored frame features and re-ranked.
Each hit carries its segment's window and the best-matching time inside it: the frame whose stored feature is closest
to the query.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .indexer import VIDEO_SUFFIXES, IndexMismatch, check_identity
from .retriever import IMAGE_SUFFIXES
from .store import STORE_NAME, Store, VideoRow
from .vectors import APPROXIMATE_ABOVE, refresh_vectors

SHORTLIST = 100
"""Segments a query-dependent method re-ranks per text query."""
TEXT_CACHE_SIZE = 1024


@dataclass
class Hit:
    """One ranked video. ``score``: cosine similarity for loose heads; for re-ranked (query-dependent) hits, the
    method's logit divided by the logit scale. ``start``/``end``: the best segment's window (seconds); ``time``: the
    best-matching frame's time."""

    rank: int
    video_id: int
    path: str
    score: float
    start: float
    end: float
    time: float
    duration: float
    file: str


@dataclass
class SearchResult:
    query: str
    kind: str  # "text" | "image" | "video"
    hits: list[Hit] = field(default_factory=list)
    note: str | None = None  # e.g. that a text query was truncated
    reranked: bool = False

    def __iter__(self):
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, index):
        return self.hits[index]

    def to_dict(self) -> dict:
        return {"query": self.query, "kind": self.kind, "note": self.note, "reranked": self.reranked,
                "hits": [asdict(hit) for hit in self.hits]}


class Collection:
    """``Collection.open(index_dir, retriever)``; thread-safe ``search`` (one SQLite connection per thread)."""

    def __init__(self, folder: Path, retriever, vectors, meta: dict):
        self.folder, self.retriever, self.vectors, self.meta = folder, retriever, vectors, meta
        self.kind = vectors.kind
        self.root = Path(meta["root"])
        self.name = self.root.name
        self._local = threading.local()
        self._model_lock = threading.Lock()
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @classmethod
    def open(cls, folder: str | Path, retriever) -> "Collection":
        """Open index ``folder``; refused (``IndexMismatch``, both hashes named) when another adapter or backbone
        built it. A faiss file older than the store (a run killed before it was rewritten) is rebuilt."""
        folder = Path(folder).expanduser().resolve()
        with Store(folder / STORE_NAME) as store:
            meta = store.meta()
            if "identity" not in meta or "root" not in meta:
                raise ValueError(f"{folder}: an index that was never completed once (no identity recorded); run "
                                 "`petvr index` again")
            check_identity(store, retriever.identity(), Path(meta["root"]), meta["segment_seconds"])
            vectors = refresh_vectors(folder, store, retriever.dim, meta.get("vector_kind", "auto"),
                                      meta.get("approximate_above", APPROXIMATE_ABOVE))
        return cls(folder, retriever, vectors, meta)

    @property
    def store(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = Store(self.folder / STORE_NAME)
        return store

    def __len__(self) -> int:
        return self.store.count("videos")

    def video(self, video_id: int) -> VideoRow | None:
        return self.store.video(video_id)

    def video_file(self, video_id: int) -> Path | None:
        """The file of video ``video_id`` if it is a file inside the indexed root (symlinks resolved), else None."""
        row = self.video(video_id)
        if row is None:
            return None
        root = self.root.resolve()
        path = (root / row.path).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    # -- queries ----------------------------------------------------------------------------------------------------
    def _text_features(self, text: str) -> torch.Tensor:
        cached = self._text_cache.get(text)
        if cached is None:
            with self._model_lock:
                cached = self.retriever.text_features([text])[0].cpu()
            self._text_cache[text] = cached
            while len(self._text_cache) > TEXT_CACHE_SIZE:
                self._text_cache.popitem(last=False)
        return cached

    def _query(self, query, text, image, video) -> tuple[str, str]:
        given = [(kind, value) for kind, value in (("text", text), ("image", image), ("video", video))
                 if value is not None]
        if query is not None:
            path = Path(str(query)).expanduser()
            if isinstance(query, Path) or (len(str(query)) < 4096 and path.suffix and path.is_file()):
                suffix = path.suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    given.append(("image", str(path)))
                elif suffix in VIDEO_SUFFIXES:
                    given.append(("video", str(path)))
                else:
                    given.append(("text", str(query)))
            else:
                given.append(("text", str(query)))
        if not given:
            raise ValueError("the query is empty")
        if len(given) != 1:
            raise ValueError("give exactly one query: a text, an image or a video clip")
        return given[0]

    def search(self, query=None, k: int = 10, *, text: str | None = None, image=None, video=None) -> SearchResult:
        kind, value = self._query(query, text, image, video)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        result = SearchResult(str(value), kind)
        features = None
        if kind == "text":
            described = self.retriever.text_query(value)
            result.note = described.note()
            features = self._text_features(value)
            vector = F.normalize(features, dim=-1).numpy()[None]
        else:
            with self._model_lock:
                embed = self.retriever.embed_images if kind == "image" else self.retriever.embed_videos
                vector = embed([value])
        total = self.vectors.ntotal
        if total == 0:
            return result
        rerank = self.retriever.pairwise and kind == "text"
        fetch = min(total, max(4 * k, SHORTLIST if rerank else k + 16))
        while True:
            scores, ids = self.vectors.search(vector, fetch)
            pairs = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0]
            segments = self.store.segments([i for _, i in pairs], self.retriever.dim)
            videos = {segments[i].video_id for _, i in pairs if i in segments}
            if len(videos) >= k or fetch >= total:
                break
            fetch = min(total, fetch * 4)
        if rerank:
            pairs = self._rerank(features, [segments[i] for _, i in pairs if i in segments])
            result.reranked = True
        best: dict[int, tuple[float, int]] = {}
        for score, segment_id in sorted(pairs, key=lambda pair: -pair[0]):
            segment = segments.get(segment_id)
            if segment is not None and segment.video_id not in best:
                best[segment.video_id] = (score, segment_id)
        for rank, (video_id, (score, segment_id)) in enumerate(list(best.items())[:k], 1):
            segment, row = segments[segment_id], self.store.video(video_id)
            if row is None:  # deleted by a concurrent indexing run
                continue
            result.hits.append(Hit(rank, video_id, row.path, score, segment.start, segment.end,
                                   self._best_time(vector[0], segment), row.duration, str(self.root / row.path)))
        return result

    def _rerank(self, text_features: torch.Tensor, segments: list) -> list[tuple[float, int]]:
        """Score ``segments`` with the method's pairwise ``similarity`` on their stored frame features."""
        if not segments:
            return []
        length = self.retriever.sampling.max_frames  # the frame count encode_video saw (padding included)
        frames = torch.zeros(len(segments), length, self.retriever.dim)
        mask = torch.zeros(len(segments), length, dtype=torch.bool)
        for row, segment in enumerate(segments):
            count = len(segment.times)
            frames[row, :count] = torch.from_numpy(segment.frames.astype(np.float32))
            mask[row, :count] = True
        model = self.retriever.model
        device = self.retriever.device
        video = frames.to(device)
        if segments[0].extras:  # the method's encode_video gave a dict: give its similarity the same dict back
            video = {"frames": video, **{name: torch.from_numpy(np.stack([s.extras[name] for s in segments]))
                                         .float().to(device) for name in segments[0].extras}}
        with self._model_lock, torch.no_grad():
            logits = model.similarity(text_features[None].to(device), video, mask.to(device))[0]
            scores = (logits / model.logit_scale).float().cpu().tolist()
        return [(score, segment.id) for score, segment in zip(scores, segments)]

    @staticmethod
    def _best_time(vector: np.ndarray, segment) -> float:
        frames = segment.frames.astype(np.float32)
        norms = np.linalg.norm(frames, axis=1)
        similarity = frames @ vector / np.maximum(norms, 1e-12)
        return float(segment.times[int(np.argmax(similarity))])


def open_collection(folder: str | Path, adapter: str | Path | None = None, *, backbone=None,
                    device: torch.device | str = "cpu") -> Collection:
    """Open index ``folder`` with the adapter recorded in it (or ``adapter``, which must be the same one: another
    is refused with both hashes named). ``backbone``: an already loaded backbone to share between collections."""
    from .retriever import DEFAULT_ADAPTER, Retriever

    folder = Path(folder).expanduser()
    with Store(folder / STORE_NAME) as store:
        identity = store.get_meta("identity") or {}
    recorded = identity.get("adapter", DEFAULT_ADAPTER)
    if adapter is None:
        if recorded != DEFAULT_ADAPTER and not Path(recorded).exists():
            raise FileNotFoundError(f"{folder}: built with the adapter at {recorded}, which no longer exists; pass "
                                    "the adapter folder it was built with (--adapter)")
        adapter = recorded
    retriever = Retriever.from_adapter(adapter, backbone=backbone, device=device)
    return Collection.open(folder, retriever)
