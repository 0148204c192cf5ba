"""The vectors in faiss: exact inner product (flat) for small collections, an approximate index above a size threshold.

Kinds (measured in docs/search.md; random unit vectors, the worst case for approximate indexes):

- ``flat``: ``IndexFlatIP``, exact. Used up to ``APPROXIMATE_ABOVE`` (200,000) vectors: up to there one query
  scans the collection in a few milliseconds on one core.
- ``pq4``: the default above the threshold. A 4-bit product quantizer with SIMD "fast scan" (``IndexPQFastScan``,
  dim/2 sub-quantizers: 64 bytes per vector for 128-d) shortlists ``PQ_REFINE_FACTOR`` x k rows, which are re-scored
  exactly (``IndexRefineFlat``, keeping the float vectors). Still a full scan, but of codes an eighth the size of the
  vectors in SIMD registers: about 1 ms per query at a million 128-d vectors on one core, recall@10 ~0.97 against
  flat. Needs ``PQ_MIN_VECTORS`` to train; below that ``sq8`` is used.
- ``sq8``: ``IndexScalarQuantizer``, 8 bits per dimension, a full scan of codes a quarter of the size (recall@10
  ~0.97-0.98, about 3x faster than flat).
- ``hnsw``: ``IndexHNSWFlat`` (M = 32): sub-linear, but on random vectors it needs ``efSearch`` near 1,000 for
  recall 0.95 and minutes to build 100,000 vectors on two busy cores; offered for collections whose embeddings
  cluster.

faiss positions are 0..n-1; ``VectorIndex.ids`` maps them to the store's segment ids (an ``IndexIDMap`` would do the
same but opens an OpenMP region on every search, which costs milliseconds on a busy machine). The folder
``vectors/`` (faiss file, ids, the store generation it was built from) is written atomically (``petvr.atomic``); a
stale or missing one is rebuilt from the store, which is the source of truth.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_folder
from .store import Store

VECTORS_DIRNAME = "vectors"
VECTORS_NAME = "index.faiss"
VECTORS_IDS = "ids.npy"
VECTORS_INFO = "info.json"
KINDS = ("auto", "flat", "pq4", "sq8", "hnsw")
APPROXIMATE_ABOVE = 200_000
"""Above this many vectors, ``kind="auto"`` builds the approximate index (``APPROXIMATE_KIND``) instead of flat."""
APPROXIMATE_KIND = "pq4"
PQ_REFINE_FACTOR = 32
PQ_MIN_VECTORS = 1000
HNSW_M = 32
HNSW_EF_SEARCH = 1024
TRAIN_SAMPLE = 100_000
SEARCH_THREADS = 1


def _faiss():
    import faiss

    return faiss


def choose_kind(count: int, kind: str = "auto", approximate_above: int = APPROXIMATE_ABOVE) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown vector index kind {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "auto":
        kind = APPROXIMATE_KIND if count > approximate_above else "flat"
    if kind == "pq4" and count < PQ_MIN_VECTORS:
        return "sq8"  # too few vectors to train 16 centroids per sub-quantizer
    return kind


class VectorIndex:
    """A faiss index over unit vectors (inner product) and the segment id of each of its rows."""

    def __init__(self, index, ids: np.ndarray, kind: str):
        self.index, self.ids, self.kind = index, np.asarray(ids, dtype=np.int64), kind

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores (n, k), segment ids (n, k))``; -1 where fewer than ``k`` rows exist.

        A few queries run on one thread (``SEARCH_THREADS``): faiss would split one flat query over every core, and
        on a busy machine waiting for the second core costs tens of milliseconds (docs/search.md); concurrent
        requests use the other cores. OpenMP's thread count is per calling thread, so this is safe under a server's
        thread pool and leaves the caller's setting as it was."""
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        previous = faiss.omp_get_max_threads()
        if len(queries) <= 4:
            faiss.omp_set_num_threads(SEARCH_THREADS)
        try:
            scores, positions = self.index.search(queries, k)
        finally:
            faiss.omp_set_num_threads(previous)
        return scores, np.where(positions >= 0, self.ids[np.maximum(positions, 0)], -1)


def make_index(kind: str, dim: int):
    """An empty faiss index of ``kind`` (not yet trained)."""
    faiss = _faiss()
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "pq4":
        if dim % 2:
            raise ValueError(f"the pq4 index needs an even dimension, got {dim}")
        index = faiss.IndexRefineFlat(faiss.IndexPQFastScan(dim, dim // 2, 4, faiss.METRIC_INNER_PRODUCT))
        index.k_factor = PQ_REFINE_FACTOR
        return index
    if kind == "sq8":
        return faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index
    raise ValueError(f"unknown vector index kind {kind!r}")


def train_and_add(index, vectors: np.ndarray) -> None:
    """Train ``index`` on (a sample of) ``vectors`` when it needs training, then add them (rows 0..n-1)."""
    if not index.is_trained:
        sample = vectors if len(vectors) <= TRAIN_SAMPLE else vectors[
            np.random.default_rng(0).choice(len(vectors), TRAIN_SAMPLE, replace=False)]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))


def build_from_store(store: Store, dim: int, kind: str = "auto",
                     approximate_above: int = APPROXIMATE_ABOVE) -> VectorIndex:
    """Every segment vector of ``store`` in a new faiss index."""
    kind = choose_kind(store.count("segments"), kind, approximate_above)
    index = make_index(kind, dim)
    chunks = list(store.vectors(dim))
    ids = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros(0, np.int64)
    if chunks:
        train_and_add(index, np.concatenate([c[1] for c in chunks]))
    return VectorIndex(index, ids, kind)


def write_vectors(folder: Path, vectors: VectorIndex, generation: int) -> None:
    """``folder/vectors/``: the faiss file, the ids and what they were built from, replaced as one."""
    faiss = _faiss()

    def write(tmp: Path) -> None:
        faiss.write_index(vectors.index, str(tmp / VECTORS_NAME))
        np.save(tmp / VECTORS_IDS, vectors.ids)
        (tmp / VECTORS_INFO).write_text(json.dumps({"kind": vectors.kind, "generation": generation,
                                                    "count": vectors.ntotal}))

    atomic_write_folder(folder / VECTORS_DIRNAME, write)


def read_vectors(folder: Path, generation: int) -> VectorIndex | None:
    """The saved index if it was built from store ``generation``, else None (then rebuild)."""
    saved = folder / VECTORS_DIRNAME
    try:
        info = json.loads((saved / VECTORS_INFO).read_text())
        if info.get("generation") != generation:
            return None
        index = _faiss().read_index(str(saved / VECTORS_NAME))
        ids = np.load(saved / VECTORS_IDS)
    except (OSError, ValueError, RuntimeError):
        return None
    if len(ids) != index.ntotal:
        return None
    if info.get("kind") == "hnsw":
        index.hnsw.efSearch = HNSW_EF_SEARCH
    elif info.get("kind") == "pq4":
        index.k_factor = PQ_REFINE_FACTOR  # read_index gives the IndexRefineFlat itself
    return VectorIndex(index, ids, info.get("kind"))


def refresh_vectors(folder: Path, store: Store, dim: int, kind: str = "auto",
                    approximate_above: int = APPROXIMATE_ABOVE) -> VectorIndex:
    """The faiss index of ``store`` as it is now: the saved one when current, else rebuilt and saved."""
    generation = store.generation
    found = read_vectors(folder, generation)
    if found is not None and (kind == "auto" or found.kind == kind):
        return found
    vectors = build_from_store(store, dim, kind, approximate_above)
    write_vectors(folder, vectors, generation)
    return vectors
