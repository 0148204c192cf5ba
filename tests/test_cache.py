"""Frame cache: same samples as on-the-fly decoding, hits without decoding, invalidation, concurrent fills."""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from petvr.data import video
from petvr.data.cache import FrameCache, build_cache
from petvr.errors import DataError
from petvr.data.video import SamplingConfig, load_video

SMALL = SamplingConfig(image_size=48)


@pytest.fixture
def decode_counter(monkeypatch) -> list[str]:
    """Record every grid decode (the only way the cache decodes)."""
    calls: list[str] = []
    original = video.decode_grid

    def counting(path, *args, **kwargs):
        calls.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(video, "decode_grid", counting)
    return calls


@pytest.fixture
def clip(write_numbered_video, tmp_path) -> Path:
    return write_numbered_video(tmp_path / "clip.mp4", 80)


@pytest.mark.parametrize("config", [
    SMALL,
    SamplingConfig(image_size=48, max_frames=3, subsample="tail", frame_order="reverse"),
    SamplingConfig(image_size=48, max_frames=4, sampler="segment", train=True, frame_order="shuffle"),
])
def test_cached_samples_equal_on_the_fly_decoding(tmp_path, clip, config):
    cache = FrameCache(tmp_path / "cache")
    for start, end in [(None, None), (1.5, 6.0)]:
        cached = cache.get(clip, config, start, end, rng=np.random.default_rng(11))
        direct = load_video(clip, config, start, end, rng=np.random.default_rng(11))
        for cached_part, direct_part in zip(cached, direct):
            torch.testing.assert_close(cached_part, direct_part, equal_nan=True)


def test_second_get_reads_the_cache_and_one_entry_serves_every_selection(tmp_path, clip, decode_counter):
    cache = FrameCache(tmp_path / "cache")
    frames, frame_mask, timestamps = cache.get(clip, SMALL)
    assert decode_counter == [str(clip)]
    assert frames.shape == (12, 3, 48, 48) and frame_mask.tolist() == [True] * 8 + [False] * 4
    assert timestamps[:8].tolist() == pytest.approx(list(range(8)))

    again = cache.get(clip, SMALL)
    torch.testing.assert_close(again.frames, frames)
    for config in [SamplingConfig(image_size=48, max_frames=2, subsample="head"),
                   SamplingConfig(image_size=48, max_frames=4, sampler="segment", train=True)]:
        cache.get(clip, config, rng=np.random.default_rng(0))
    assert len(decode_counter) == 1


def test_training_offsets_change_between_draws_without_decoding(write_numbered_video, tmp_path, decode_counter):
    long_clip = write_numbered_video(tmp_path / "long.mp4", 200)
    cache = FrameCache(tmp_path / "cache")
    config = SamplingConfig(image_size=48, max_frames=4, sampler="segment", train=True, feature_framerate=2)
    rng = np.random.default_rng(0)
    draws = {tuple(cache.get(long_clip, config, rng=rng).timestamps.tolist()) for _ in range(6)}
    assert len(draws) > 1 and len(decode_counter) == 1


def test_changed_file_config_or_span_is_decoded_again(write_numbered_video, tmp_path, clip, decode_counter):
    cache = FrameCache(tmp_path / "cache")
    cache.get(clip, SMALL)

    stat = os.stat(clip)
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched
    cache.get(clip, SMALL)
    assert len(decode_counter) == 2

    write_numbered_video(clip, 20)  # rewritten: 2 s instead of 8 s
    _, frame_mask, _ = cache.get(clip, SMALL)
    assert len(decode_counter) == 3 and int(frame_mask.sum()) == 2

    cache.get(clip, SamplingConfig(image_size=32))
    cache.get(clip, SamplingConfig(image_size=48, feature_framerate=2))
    cache.get(clip, SMALL, start=1.0, end=2.0)
    assert len(decode_counter) == 6
    cache.get(clip, SMALL, start=1.0, end=2.0)
    assert len(decode_counter) == 6


def test_damaged_entry_is_decoded_again(tmp_path, clip, decode_counter):
    cache = FrameCache(tmp_path / "cache")
    expected = cache.get(clip, SMALL)
    entry = cache.entry_stem(clip, SMALL).with_suffix(".npy")
    entry.write_bytes(entry.read_bytes()[:1000])
    result = cache.get(clip, SMALL)
    assert len(decode_counter) == 2
    torch.testing.assert_close(result.frames, expected.frames)


def test_missing_video_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        FrameCache(tmp_path / "cache").get(tmp_path / "gone.mp4", SMALL)


def _fill_every_entry(cache_dir: str, config: SamplingConfig, paths: list[str]) -> int:
    cache = FrameCache(cache_dir)
    for path in paths:
        cache.fill(path, config)
    return len(paths)


def test_concurrent_fill_from_several_processes(frame_numbers, write_numbered_video, tmp_path):
    paths = [str(write_numbered_video(tmp_path / f"clip{index}.mp4", 30 + 10 * index)) for index in range(3)]
    cache_dir = tmp_path / "cache"
    context = multiprocessing.get_context("fork")  # the children only decode; no torch in them
    with context.Pool(3) as pool:
        jobs = [(str(cache_dir), SMALL, paths[offset:] + paths[:offset]) for offset in range(3)]
        assert pool.starmap(_fill_every_entry, jobs) == [3, 3, 3]
    cache = FrameCache(cache_dir)
    for index, path in enumerate(paths):
        grid = cache.load_grid(path, SMALL)
        assert grid is not None
        assert frame_numbers(np.asarray(grid.frames)).tolist() == list(range(0, 30 + 10 * index, 10))
    assert len(list(cache_dir.rglob("*.npy"))) == 3
    assert not [path for path in cache_dir.rglob("*") if path.name.endswith(".tmp")]


def test_build_cache_reports_what_it_skipped(tmp_path, clip):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    items = [clip, (clip, 1.0, 3.0), str(clip), tmp_path / "missing.mp4", broken]
    report = build_cache(items, SMALL, tmp_path / "cache")
    assert (report.decoded, report.already_cached) == (2, 0)
    assert sorted(item.path for item in report.skipped.items) == sorted([str(broken), str(tmp_path / "missing.mp4")])
    assert "cannot open" in report.summary() and "not found" in report.summary()

    again = build_cache(items, SMALL, tmp_path / "cache", num_workers=2)
    assert (again.decoded, again.already_cached, len(again.skipped)) == (0, 2, 2)

    with pytest.raises(DataError, match="broken.mp4"):
        build_cache([broken], SMALL, tmp_path / "cache", skip_unreadable=False)
