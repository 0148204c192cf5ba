"""The vectors in faiss: exact inner product (flat) for small collections, an approximate index above a size threshold.

Kinds:

- ``flat``: ``IndexFlatIP``, exact. Used up to ``APPROXIMATE_ABOVE`` vectors: below that a query scans the whole
  collection in a few milliseconds on two cores (see docs/search.md).
- ``sq8``: ``IndexScalarQuantizer`` with 8 bits per dimension: still a full scan, but of codes a quarter of the size,
  so it is about 3x faster and a quarter of the memory, with recall@10 against flat of about 0.98 even on random
  vectors (which have no neighbourhood structure and are the worst case for graph and cluster indexes). The default
  above the threshold.
- ``hnsw``: ``IndexHNSWFlat`` (M = 32); sub-linear, but on random vectors it needs ``efSearch`` near 1,000 for recall
  0.95 and takes minutes to build a million vectors on two cores; offered for collections whose embeddings cluster.

Every kind is wrapped in ``IndexIDMap2`` so faiss ids are the store's segment ids. The file is written atomically
(``petvr.atomic``) and records the store generation it was built from; a stale or missing file is rebuilt from the
store, which is the source of truth.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import atomic_write, atomic_write_json
from .store import Store

VECTORS_NAME = "vectors.faiss"
VECTORS_INFO = "vectors.json"
KINDS = ("auto", "flat", "sq8", "hnsw")
APPROXIMATE_ABOVE = 200_000
"""Above this many vectors, ``kind="auto"`` builds the approximate index (``APPROXIMATE_KIND``) instead of flat."""
APPROXIMATE_KIND = "sq8"
HNSW_M = 32
HNSW_EF_SEARCH = 1024
TRAIN_SAMPLE = 100_000


def _faiss():
    import faiss

    return faiss


def choose_kind(count: int, kind: str = "auto", approximate_above: int = APPROXIMATE_ABOVE) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown vector index kind {kind!r}; choose from {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    return APPROXIMATE_KIND if count > approximate_above else "flat"


def make_index(kind: str, dim: int):
    """An empty ``IndexIDMap2`` of ``kind`` (not yet trained)."""
    faiss = _faiss()
    if kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif kind == "sq8":
        inner = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    elif kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = 64
        inner.hnsw.efSearch = HNSW_EF_SEARCH
    else:
        raise ValueError(f"unknown vector index kind {kind!r}")
    return faiss.IndexIDMap2(inner)


def train_and_add(index, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Train ``index`` on (a sample of) ``vectors`` when it needs training, then add them under ``ids``."""
    if not index.is_trained:
        sample = vectors if len(vectors) <= TRAIN_SAMPLE else vectors[
            np.random.default_rng(0).choice(len(vectors), TRAIN_SAMPLE, replace=False)]
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids.astype(np.int64))


def build_from_store(store: Store, dim: int, kind: str = "auto", approximate_above: int = APPROXIMATE_ABOVE):
    """Every segment vector of ``store`` in a new faiss index; returns ``(index, kind)``."""
    kind = choose_kind(store.count("segments"), kind, approximate_above)
    index = make_index(kind, dim)
    chunks = list(store.vectors(dim))
    if chunks:
        ids = np.concatenate([c[0] for c in chunks])
        vectors = np.concatenate([c[1] for c in chunks])
        train_and_add(index, ids, vectors)
    return index, kind


def write_vectors(folder: Path, index, kind: str, generation: int) -> None:
    faiss = _faiss()
    atomic_write(folder / VECTORS_NAME, lambda tmp: faiss.write_index(index, str(tmp)))
    atomic_write_json(folder / VECTORS_INFO, {"kind": kind, "generation": generation, "count": int(index.ntotal)})


def read_vectors(folder: Path, generation: int):
    """The saved index if it was built from store ``generation``, else None (then rebuild)."""
    try:
        info = json.loads((folder / VECTORS_INFO).read_text())
        if info.get("generation") != generation:
            return None
        index = _faiss().read_index(str(folder / VECTORS_NAME))
    except (OSError, ValueError, RuntimeError):
        return None
    if info.get("kind") == "hnsw":
        _faiss().downcast_index(index.index).hnsw.efSearch = HNSW_EF_SEARCH
    return index, info.get("kind")


def refresh_vectors(folder: Path, store: Store, dim: int, kind: str = "auto",
                    approximate_above: int = APPROXIMATE_ABOVE):
    """The faiss index of ``store`` as it is now: the saved one when current, else rebuilt and saved."""
    generation = store.generation
    found = read_vectors(folder, generation)
    if found is not None and (kind == "auto" or found[1] == kind):
        return found
    index, kind = build_from_store(store, dim, kind, approximate_above)
    write_vectors(folder, index, kind, generation)
    return index, kind
