"""Search benchmark: faiss query latency and recall against index size, and indexing throughput (1 vs 2 processes).

1. Query latency p50 / p99 (one query at a time, with 1 and with 2 faiss threads) at 10k, 100k and 1M random unit vectors
   of the backbone's embedding dimension, for the exact index (flat) and the approximate ones petvr builds
   (``pq4``, the default above ``APPROXIMATE_ABOVE``; ``sq8``; ``hnsw`` up to ``--hnsw-max`` vectors, since building
   it takes minutes per 100,000 vectors on two busy cores). Recall@10 of each against flat on the same queries.
   Uniform random vectors have no neighbourhood structure: they are the worst case for graph and cluster indexes.
2. End-to-end ``Collection.search`` latency of a text query on the synthetic collection (text tower included).
3. Indexing throughput in videos/s on a synthetic collection: one process (two threads, then one), then ``torchrun``
   with two processes (one thread each), timed inside ``build_index`` (decoding, embedding, commits, faiss) and as
   whole commands (interpreter start, imports and model loading included).

    python benchmarks/search.py --out docs/search.json      # about 10 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def unit_rows(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((count, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def latencies(index, queries: np.ndarray, k: int = 10) -> tuple[float, float]:
    """p50 and p99 in ms of one-query searches (after 5 warm-up queries)."""
    for query in queries[:5]:
        index.search(query[None], k)
    times = []
    for query in queries:
        started = time.perf_counter()
        index.search(query[None], k)
        times.append(time.perf_counter() - started)
    return float(np.percentile(times, 50) * 1000), float(np.percentile(times, 99) * 1000)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def vector_benchmark(dim: int, sizes: list[int], num_queries: int, hnsw_max: int, threads: list[int]) -> list[dict]:
    import faiss

    from petvr.search.vectors import make_index, train_and_add

    faiss.omp_set_num_threads(max(threads))
    rng = np.random.default_rng(0)
    queries = unit_rows(rng, num_queries, dim)
    rows = []
    for size in sizes:
        vectors = unit_rows(rng, size, dim)
        truth = None
        for kind in ("flat", "pq4", "sq8", "hnsw"):
            if kind == "hnsw" and size > hnsw_max:
                continue
            index = make_index(kind, dim)
            started = time.perf_counter()
            train_and_add(index, vectors)
            build = time.perf_counter() - started
            _, found = index.search(queries, 10)
            if kind == "flat":
                truth = found
            for count in threads:
                faiss.omp_set_num_threads(count)
                p50, p99 = latencies(index, queries)
                row = {"size": size, "kind": kind, "dim": dim, "threads": count, "p50_ms": round(p50, 3),
                       "p99_ms": round(p99, 3), "recall@10": round(recall_at(found, truth), 4),
                       "build_s": round(build, 2)}
                print(json.dumps(row), flush=True)
                rows.append(row)
            faiss.omp_set_num_threads(max(threads))
            del index
        del vectors
    return rows


def synthetic_collection(workdir: Path, num_videos: int) -> Path:
    from petvr.synthetic import generate_world

    world = generate_world(workdir / "world", size="tiny", num_videos=num_videos, collections=("studio",))
    return world.dataset("studio", "msrvtt") / "videos"


def end_to_end_latency(videos: Path, workdir: Path, num_queries: int = 50) -> dict:
    from petvr.search import Retriever

    retriever = Retriever.from_adapter()
    retriever.index(videos, workdir / "e2e-index", progress=False)
    queries = [f"a {color} {shape} moves {way}" for color in ("red", "blue", "green", "yellow", "black")
               for shape in ("circle", "square", "star", "ring", "triangle") for way in ("left", "up")][:num_queries]
    for query in ("warm up", "the text tower", "and the index"):
        retriever.search(query, k=10)
    times = []
    for query in queries:  # each query once: the text tower runs every time (no cache hits)
        started = time.perf_counter()
        retriever.search(query, k=10)
        times.append(time.perf_counter() - started)
    return {"videos": len(retriever.collection), "queries": len(times),
            "p50_ms": round(float(np.percentile(times, 50) * 1000), 2),
            "p99_ms": round(float(np.percentile(times, 99) * 1000), 2)}


def _run_index(command: list[str], environment: dict) -> tuple[float, float, str]:
    started = time.perf_counter()
    finished = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
    inside = float(re.search(r"\(([\d.]+) s\)", finished.stdout).group(1))
    return inside, wall, finished.stdout.strip().splitlines()[0]


def indexing_throughput(videos: Path, workdir: Path) -> list[dict]:
    count = sum(1 for _ in videos.glob("*.mp4"))
    rows = []
    for processes, threads in ((1, 2), (1, 1), (2, 1)):
        out = workdir / f"index-{processes}-{threads}"
        environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        index = ["-m", "petvr.cli", "index", str(videos), "--out", str(out), "--workers", "0"]
        command = [sys.executable] + (index if processes == 1 else
                                      ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] + index)
        inside, wall, summary = _run_index(command, environment)
        row = {"processes": processes, "threads_per_process": threads, "videos": count,
               "indexing_s": round(inside, 2), "videos_per_s": round(count / inside, 2),
               "command_s": round(wall, 2), "videos_per_s_whole_command": round(count / wall, 2)}
        print(json.dumps(row), "|", summary, flush=True)
        rows.append(row)
    return rows


def markdown(results: dict) -> str:
    lines = ["| vectors | index | faiss threads | p50 ms | p99 ms | recall@10 vs flat | build s |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {row['size']:,} | {row['kind']} | {row['threads']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
              f"{row['recall@10']:.3f} | {row['build_s']:.1f} |" for row in results["vectors"]]
    lines += ["", "| processes | threads each | videos | videos/s (indexing) | videos/s (whole command) |",
              "|---:|---:|---:|---:|---:|"]
    lines += [f"| {row['processes']} | {row['threads_per_process']} | {row['videos']} | {row['videos_per_s']:.2f} | "
              f"{row['videos_per_s_whole_command']:.2f} |" for row in results["indexing"]]
    e2e = results["end_to_end"]
    lines += ["", f"End-to-end text search on {e2e['videos']} videos: p50 {e2e['p50_ms']:.1f} ms, "
                  f"p99 {e2e['p99_ms']:.1f} ms ({e2e['queries']} queries, text tower included)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dim", type=int, default=None, help="default: the bundled backbone's embedding dimension")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="build HNSW only up to this many vectors")
    parser.add_argument("--threads", default="1,2", help="faiss thread counts to measure latency with")
    parser.add_argument("--videos", type=int, default=120, help="synthetic videos for the indexing throughput")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()

    from petvr.backbone import create_backbone

    dim = args.dim or create_backbone("petvr-tiny", device="meta").config.embed_dim
    results = {"cpu_count": os.cpu_count()}
    results["load_average_at_start"] = os.getloadavg()
    results["vectors"] = vector_benchmark(dim, [int(s) for s in args.sizes.split(",")], args.queries, args.hnsw_max,
                                          [int(t) for t in args.threads.split(",")])
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        videos = synthetic_collection(workdir, args.videos)
        results["end_to_end"] = end_to_end_latency(videos, workdir)
        print(json.dumps(results["end_to_end"]), flush=True)
        results["indexing"] = indexing_throughput(videos, workdir)
    results["load_average_at_end"] = os.getloadavg()
    print(markdown(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
