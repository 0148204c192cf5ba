"""petvr.search: the Retriever API, the index (faiss + SQLite: resumable, incremental, segments, re-ranking, refusal
of another adapter), the CLI and torchrun sharding, on the synthetic world's videos with the bundled default."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest

from petvr.search import IndexMismatch, Retriever
from petvr.search.collection import Collection, open_collection
from petvr.search.store import STORE_NAME, Store

REPO = Path(__file__).resolve().parent.parent


def _captions(msrvtt: Path) -> dict[str, list[str]]:
    data = json.loads((msrvtt / "MSRVTT_data.json").read_text())
    captions: dict[str, list[str]] = {}
    for sentence in data["sentences"]:
        captions.setdefault(sentence["video_id"], []).append(sentence["caption"])
    return captions


@pytest.fixture(scope="module")
def msrvtt(world) -> Path:
    return world / "world" / "studio" / "msrvtt"


@pytest.fixture(scope="module")
def retriever() -> Retriever:
    return Retriever.from_adapter()


@pytest.fixture
def videos(msrvtt, tmp_path) -> Path:
    """A private copy of 10 of the collection's videos (the tests change it)."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for path in sorted((msrvtt / "videos").glob("*.mp4"))[:10]:
        shutil.copy2(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def built(msrvtt, retriever, tmp_path_factory):
    """The whole test collection (18 videos) indexed once."""
    out = tmp_path_factory.mktemp("index") / "index"
    report = retriever.index(msrvtt / "videos", out, progress=False)
    return out, report


def test_embeddings_are_normalised_arrays(retriever, msrvtt, tmp_path):
    texts = retriever.embed_texts(["a red circle moves left", "a blue square grows"])
    paths = sorted((msrvtt / "videos").glob("*.mp4"))[:2]
    videos = retriever.embed_videos(paths)
    with av.open(str(paths[0])) as container:
        frame = next(container.decode(video=0)).to_image()
    frame.save(tmp_path / "frame.png")
    images = retriever.embed_images([tmp_path / "frame.png"])
    for array, rows in ((texts, 2), (videos, 2), (images, 1)):
        assert isinstance(array, np.ndarray) and array.dtype == np.float32
        assert array.shape == (rows, retriever.dim)
        np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(videos[0], videos[1])
    with pytest.raises(ValueError, match="empty"):
        retriever.embed_texts(["  "])


def test_own_caption_finds_the_video_in_the_top_5(built, retriever, msrvtt):
    out, report = built
    assert report.videos == 18 and report.segments == 18 and report.embedded == 18 and not report.failed
    assert report.vector_kind == "flat"
    collection = retriever.open(out)
    captions = _captions(msrvtt)
    found = []
    for video_id, sentences in captions.items():
        result = collection.search(sentences[0], k=5)
        assert len(result) == 5 and [hit.rank for hit in result] == [1, 2, 3, 4, 5]
        assert all(a.score >= b.score for a, b in zip(result.hits, result.hits[1:]))
        found.append(any(hit.path == f"{video_id}.mp4" for hit in result))
    assert np.mean(found) >= 0.75, f"own caption in the top 5 for only {sum(found)} of {len(found)} videos"
    hit = collection.search("a red circle moves left", k=1)[0]
    assert 0.0 <= hit.start <= hit.time <= hit.end <= hit.duration + 1e-6
    assert Path(hit.file).is_file()


def test_query_by_clip_and_by_image(built, retriever, msrvtt, tmp_path):
    collection = retriever.open(built[0])
    clip = msrvtt / "videos" / "video5.mp4"
    result = collection.search(clip, k=3)
    assert result.kind == "video" and result[0].path == "video5.mp4" and result[0].score > 0.99
    with av.open(str(clip)) as container:
        frames = [frame.to_image() for frame in container.decode(video=0)]
    frames[len(frames) // 2].save(tmp_path / "still.png")
    result = retriever.search(image=tmp_path / "still.png", k=5)
    assert result.kind == "image" and "video5.mp4" in [hit.path for hit in result]


def test_a_query_over_the_word_limit_is_truncated_and_says_so(built, retriever):
    collection = retriever.open(built[0])
    short = collection.search("a red circle moves left", k=3)
    assert short.note is None
    long_query = "a red circle moves left " + "and then it turns blue " * 10
    result = collection.search(long_query, k=3)
    assert result.note is not None and "truncated" in result.note
    cut = retriever.tokenizer.max_words - 2
    assert f"reads {cut}" in result.note
    with pytest.raises(ValueError, match="empty"):
        collection.search("", k=3)


def test_incremental_reindex_after_adding_changing_deleting_and_touching(retriever, videos, tmp_path):
    out = tmp_path / "index"
    first = retriever.index(videos, out, progress=False, batch_videos=4)
    assert (first.embedded, first.videos) == (10, 10)
    names = sorted(path.name for path in videos.glob("*.mp4"))
    (videos / "sub").mkdir()
    shutil.copy2(videos / names[0], videos / "sub" / "added.mp4")       # added (in a sub-folder)
    shutil.copyfile(videos / names[2], videos / names[1])                 # changed: now holds another video
    (videos / names[3]).unlink()                                           # deleted
    os.utime(videos / names[4], ns=(time.time_ns(), time.time_ns() + 10 ** 9))  # touched, content unchanged
    (videos / "notes.txt").write_text("not a video")                       # ignored: not a video suffix
    second = retriever.index(videos, out, progress=False)
    assert (second.embedded, second.deleted, second.touched, second.unchanged) == (2, 1, 1, 7)
    assert second.videos == 10 and second.segments == 10
    paths = {row for row in Store(out / STORE_NAME).videos()}
    assert "sub/added.mp4" in paths and names[3] not in paths
    by_path = {hit.path: hit.score for hit in retriever.search(videos / names[2], k=10)}
    assert by_path[names[1]] == pytest.approx(by_path[names[2]], abs=1e-4)  # re-embedded with its new content
    third = retriever.index(videos, out, progress=False)
    assert (third.embedded, third.unchanged) == (0, 10)


def test_above_the_size_threshold_the_index_is_approximate(retriever, videos, tmp_path, msrvtt):
    from petvr.search.vectors import VECTORS_DIRNAME

    report = retriever.index(videos, tmp_path / "index", approximate_above=5, progress=False)
    assert report.vector_kind == "sq8"  # pq4, the approximate default, needs 1,000 vectors to train
    info = json.loads((tmp_path / "index" / VECTORS_DIRNAME / "info.json").read_text())
    assert info == {"kind": "sq8", "generation": Store(tmp_path / "index" / STORE_NAME).generation, "count": 10}
    for path in sorted(videos.glob("*.mp4"))[:3]:
        assert retriever.search(path, k=1)[0].path == path.name
    hnsw = retriever.index(videos, tmp_path / "hnsw", vector_kind="hnsw", progress=False)
    assert hnsw.vector_kind == "hnsw" and retriever.collection.kind == "hnsw"
    assert len(retriever.search("a red circle moves left", k=10)) == 10


def test_the_pq4_index_finds_the_exact_neighbours_and_survives_a_round_trip(tmp_path):
    from petvr.search.vectors import (PQ_MIN_VECTORS, VectorIndex, choose_kind, make_index, read_vectors,
                                      train_and_add, write_vectors)

    assert choose_kind(200_001) == "pq4" and choose_kind(200_000) == "flat"
    assert choose_kind(PQ_MIN_VECTORS - 1, "pq4") == "sq8"
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((4000, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = vectors[:50] + 0.3 * rng.standard_normal((50, 128)).astype(np.float32)
    ids = np.arange(4000) * 3 + 7
    exact, approximate = make_index("flat", 128), make_index("pq4", 128)
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # k-means on a machine shared with other jobs: one thread is 30x faster there
    try:
        train_and_add(exact, vectors)
        train_and_add(approximate, vectors)
    finally:
        faiss.omp_set_num_threads(threads)
    write_vectors(tmp_path, VectorIndex(approximate, ids, "pq4"), generation=5)
    assert read_vectors(tmp_path, generation=6) is None  # stale: rebuilt from the store
    loaded = read_vectors(tmp_path, generation=5)
    _, truth = VectorIndex(exact, ids, "flat").search(queries, 10)
    scores, found = loaded.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
    assert loaded.kind == "pq4" and recall >= 0.9 and set(found[:, 0]) <= set(ids)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_unreadable_files_are_reported_and_never_stop_the_run(retriever, videos, tmp_path):
    (videos / "broken.mp4").write_bytes(b"\x00\x01 this is not a video " * 100)
    (videos / "empty.mkv").write_bytes(b"")
    out = tmp_path / "index"
    report = retriever.index(videos, out, progress=False, batch_videos=3)
    assert report.embedded == 10 and report.videos == 10
    assert sorted(path for path, _ in report.failed) == ["broken.mp4", "empty.mkv"]
    assert all(problem for _, problem in report.failed)
    assert "broken.mp4" in report.summary()
    again = retriever.index(videos, out, progress=False)
    assert again.embedded == 0 and len(again.failed) == 2  # reported again, not decoded again
    (videos / "broken.mp4").unlink()
    shutil.copy2(videos / "video0.mp4", videos / "empty.mkv")  # repaired
    repaired = retriever.index(videos, out, progress=False)
    assert repaired.embedded == 1 and repaired.failed == [] and repaired.videos == 11


def _write_concatenation(first: Path, second: Path, out: Path) -> tuple[int, int]:
    """``first`` then ``second`` in one file, the shorter padded with its last frame so both halves are equally
    long; returns the frame counts of the two halves."""
    def frames(path):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)], stream.average_rate
    a, rate = frames(first)
    b, _ = frames(second)
    length = max(len(a), len(b))
    a += [a[-1]] * (length - len(a))
    b += [b[-1]] * (length - len(b))
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.height, stream.width = a[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for image in a + b:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return length, float(rate)


def test_long_videos_are_indexed_in_segments_and_a_hit_has_its_time(retriever, msrvtt, tmp_path):
    captions = _captions(msrvtt)
    folder = tmp_path / "long"
    folder.mkdir()
    length, fps = _write_concatenation(msrvtt / "videos" / "video2.mp4", msrvtt / "videos" / "video7.mp4",
                                       folder / "both.mp4")
    half = length / fps
    report = retriever.index(folder, tmp_path / "index", segment_seconds=half * 1.01, progress=False)
    assert report.videos == 1 and report.segments == 2
    first = retriever.search(captions["video2"][0], k=1)[0]
    second = retriever.search(captions["video7"][0], k=1)[0]
    assert (first.start, second.start) == (0.0, pytest.approx(half, abs=0.2))
    assert first.start <= first.time <= first.end and second.start <= second.time <= second.end


@pytest.mark.parametrize("method, options", [("zero_shot", {"sim_header": "query_scoring"}), ("rap", {})],
                         ids=["query_scoring", "rap"])
def test_query_dependent_methods_rerank_a_shortlist_from_stored_frame_features(msrvtt, videos, tmp_path, method,
                                                                               options):
    """Query scoring gives per-frame features; RAP (untrained here) a dict of per-video tensors for its pairwise
    part: both are stored and given back to the method's own ``similarity``."""
    import torch

    from petvr.backbone.checkpoints import load_backbone
    from petvr.methods import RetrievalModel

    loose = Retriever.from_adapter()
    torch.manual_seed(0)
    model = RetrievalModel(load_backbone("petvr-tiny"), method, **options).eval()
    pairwise = Retriever(model, loose.sampling, adapter=f"{method} test")
    assert pairwise.pairwise and not loose.pairwise
    folder = msrvtt / "videos" if method == "zero_shot" else videos
    report = pairwise.index(folder, tmp_path / "index", progress=False)
    captions = _captions(msrvtt)
    query = captions["video1"][0]
    result = pairwise.search(query, k=5)
    assert result.reranked and len(result) == 5
    # The re-ranked scores are the method's own scores of the whole (text, video) pair.
    for hit in result.hits[:2]:
        frames = pairwise.frames.load(folder / hit.path, None, None, None)
        with torch.no_grad():
            logits = model.similarity(pairwise.text_features([query]), model.encode_video(frames.frames[None],
                                      frames.frame_mask[None]), frames.frame_mask[None])
        assert hit.score == pytest.approx(float(logits[0, 0] / model.logit_scale), abs=2e-3)
    if method == "zero_shot":  # a trained-free method that ranks: its own captions find the videos
        found = [any(hit.path == f"{video}.mp4" for hit in pairwise.search(sentences[0], k=5))
                 for video, sentences in captions.items()]
        assert report.segments == 18 and np.mean(found) >= 0.75


def test_an_index_built_with_another_adapter_is_refused_naming_both_hashes(built, tmp_path, capsys):
    from petvr.cli import main

    adapter = _other_adapter(tmp_path / "other-adapter")
    other = Retriever.from_adapter(adapter)
    default_hash = Retriever.from_adapter().adapter_hash
    assert other.adapter_hash != default_hash
    with pytest.raises(IndexMismatch) as refused:
        Collection.open(built[0], other)
    assert other.adapter_hash in str(refused.value) and default_hash in str(refused.value)
    with pytest.raises(IndexMismatch):
        build_from = built[1].index
        other.index(Path(Store(build_from / STORE_NAME).get_meta("root")), build_from, progress=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["search", str(built[0]), "a red circle", "--adapter", str(adapter)])
    message = str(exit_info.value)
    assert message.startswith("petvr: error:") and other.adapter_hash in message and default_hash in message


def _other_adapter(folder: Path) -> Path:
    """A linear-probe adapter on the bundled backbone (projections changed, so its vectors differ), with the
    default's recipe (same frame sampling)."""
    import torch

    from petvr.backbone.checkpoints import load_backbone
    from petvr.methods import RetrievalModel
    from petvr.training.recipe import load_recipe, shipped_recipes_dir

    model = RetrievalModel(load_backbone("petvr-tiny"), "linear_probe")
    with torch.no_grad():
        model.backbone.text.text_projection.mul_(1.5)
        model.backbone.visual.proj.mul_(-1.0)
    return model.save_adapter(folder, recipe=load_recipe(shipped_recipes_dir() / "synthetic" / "zero_shot.toml"))


def test_a_new_adapter_reindexes_from_the_frame_cache_without_decoding(videos, tmp_path, monkeypatch):
    import petvr.data.video

    cache = tmp_path / "frames"
    first = Retriever.from_adapter(frame_cache=cache)
    assert first.index(videos, tmp_path / "default", progress=False).embedded == 10
    second = Retriever.from_adapter(_other_adapter(tmp_path / "adapter"), frame_cache=cache)
    assert second.sampling == first.sampling and second.adapter_hash != first.adapter_hash

    def no_decoding(*args, **kwargs):
        raise AssertionError("a video was decoded again")

    monkeypatch.setattr(petvr.data.video, "decode_grid", no_decoding)
    monkeypatch.setattr(petvr.data.video, "decode_frames", no_decoding)
    report = second.index(videos, tmp_path / "other", progress=False)
    assert report.embedded == 10 and not report.failed
    ours = {hit.path: hit.score for hit in second.search("a red circle moves left", k=10)}
    theirs = {hit.path: hit.score for hit in first.search("a red circle moves left", k=10)}
    assert ours.keys() == theirs.keys() and not np.allclose(list(ours.values()), [theirs[p] for p in ours])


def test_cli_index_and_search(videos, tmp_path, capsys, msrvtt):
    from petvr.cli import main

    out = tmp_path / "index"
    main(["index", str(videos), "--out", str(out), "--workers", "0"])
    assert "10 videos, 10 segments" in capsys.readouterr().out
    caption = _captions(msrvtt)["video1"][0]
    main(["search", str(out), caption, "-k", "3", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "text" and len(result["hits"]) == 3
    assert {"rank", "path", "score", "start", "end", "time"} <= set(result["hits"][0])
    main(["search", str(out), caption, "-k", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].lstrip().startswith("1.") and "best at" in lines[0]
    with pytest.raises(SystemExit, match="petvr: error: .*empty"):
        main(["search", str(out), ""])
    with pytest.raises(SystemExit, match="petvr: error: .*no index store"):
        main(["search", str(tmp_path / "nowhere"), "a query"])


def _python() -> list[str]:
    return [sys.executable]


def test_a_killed_indexing_run_resumes_without_embedding_anything_twice(retriever, videos, tmp_path):
    out = tmp_path / "index"
    command = _python() + ["-m", "petvr.cli", "index", str(videos), "--out", str(out), "--batch-videos", "1",
                           "--workers", "0"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store_path = out / STORE_NAME
    deadline = time.time() + 180
    committed = 0
    try:
        while time.time() < deadline and process.poll() is None:
            if store_path.is_file():
                try:
                    with sqlite3.connect(store_path, timeout=1) as connection:
                        committed = connection.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
                except sqlite3.OperationalError:
                    committed = 0
                if committed >= 2:
                    break
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    with Store(store_path) as store:
        kept = store.count("videos")
    assert 2 <= kept < 10, f"the run was not killed in the middle ({kept} of 10 videos committed)"
    # The index is usable as the crash left it (its faiss file is rebuilt from the store).
    partial = retriever.open(out)
    assert len(partial.search("a red circle moves left", k=20)) == kept
    resumed = retriever.index(videos, out, progress=False)
    assert (resumed.unchanged, resumed.embedded, resumed.videos) == (kept, 10 - kept, 10)


@pytest.mark.slow  # two fresh interpreters under torchrun: about 25 s on 2 cores
def test_torchrun_two_processes_shard_and_merge(retriever, videos, tmp_path):
    single = retriever.index(videos, tmp_path / "single", progress=False)
    out = tmp_path / "sharded"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = _python() + ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "petvr.cli", "index", str(videos), "--out", str(out), "--workers", "0"]
    finished = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "10 videos, 10 segments" in finished.stdout
    assert "(rank 1/2)" in finished.stderr  # both processes embedded a share
    assert not list((out / "shards").glob("*.sqlite"))
    with Store(tmp_path / "single" / STORE_NAME) as one, Store(out / STORE_NAME) as two:
        assert set(one.videos()) == set(two.videos())
        vectors_one = {one.video(segment.video_id).path: segment.vector
                       for segment in one.segments(range(1, 100), retriever.dim).values()}
        vectors_two = {two.video(segment.video_id).path: segment.vector
                       for segment in two.segments(range(1, 100), retriever.dim).values()}
    for path, vector in vectors_one.items():
        np.testing.assert_allclose(vectors_two[path], vector, atol=1e-4)
    sharded = open_collection(out)
    assert [hit.path for hit in sharded.search("a red circle moves left", k=5)] == \
        [hit.path for hit in retriever.open(tmp_path / "single").search("a red circle moves left", k=5)]
    assert single.videos == 10
