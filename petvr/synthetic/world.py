"""The synthetic world on disk: datasets in the real MSR-VTT and ActivityNet Captions formats, a hard "temporal" test
split of time-reversed pairs, for several visual collections (``STYLES``), with a manifest; see ``generate_world``."""
from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import DataError
from .captions import event_sentences, video_captions
from .drawing import STYLE_NAMES, get_style, seeded_rng
from .videos import (EVENT_KINDS, VIDEO_FPS, VIDEO_FRAME_SIZE, ClipLayout, VideoSpec, render_video,
                     sample_temporal_pair, sample_video_spec, write_mp4)

WORLD_FORMAT_VERSION = 1


def _render_and_write(job: tuple[VideoSpec, str]) -> None:
    spec, path = job
    write_mp4(path, render_video(spec), spec.fps)


def _parallel_map(function, items: list, workers: int, description: str, unit: str, chunksize: int = 1) -> list:
    """``[function(item) for item in items]`` in ``workers`` processes (forked where the platform allows, so a script
    run from stdin or a notebook works too), with a progress bar; results do not depend on the number of workers."""
    if workers <= 1:
        return [function(item) for item in tqdm(items, desc=description, unit=unit)]
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        return list(tqdm(pool.imap(function, items, chunksize), total=len(items), desc=description, unit=unit))


# ---------------------------------------------------------------------------------------------------------------------
# Sizes, datasets in the MSR-VTT and ActivityNet Captions formats, manifest

@dataclass(frozen=True)
class WorldSize:
    """How many videos each collection gets, and the clip layouts of short (MSR-VTT style) and long videos."""

    msrvtt_train: int
    msrvtt_test: int
    temporal_pairs: int
    activitynet_train: int
    activitynet_val: int
    short_clips: ClipLayout
    long_clips: ClipLayout


_SHORT = ClipLayout(num_events=(2, 3), event_frames=(6, 10), gap_frames=(2, 5), edge_frames=(1, 4))
_LONG = ClipLayout(num_events=(4, 6), event_frames=(12, 18), gap_frames=(5, 10), edge_frames=(3, 6))
WORLD_SIZES = {
    "tiny": WorldSize(12, 6, 4, 3, 2, short_clips=ClipLayout((2, 3), (4, 6), (1, 2), (1, 2)),
                      long_clips=ClipLayout((3, 3), (6, 8), (3, 5), (2, 3))),
    "small": WorldSize(1500, 300, 150, 100, 30, _SHORT, _LONG),
    "medium": WorldSize(6000, 1000, 500, 400, 100, _SHORT, _LONG),
}


@dataclass(frozen=True)
class _CsvTable:
    columns: tuple[str, ...]
    rows: list[dict[str, str]]


@dataclass
class _Dataset:
    """Annotations of one dataset folder in memory, and the videos still to render into it."""

    relative: str
    files: dict[str, object] = field(default_factory=dict)
    jobs: list[tuple[VideoSpec, str]] = field(default_factory=list)
    summary: dict[str, object] = field(default_factory=dict)


def _msrvtt_dataset(relative: str, collection: str, seed: int, train: list[VideoSpec], test: list[VideoSpec],
                    groups: list[list[int]] | None) -> _Dataset:
    """MSR-VTT layout: ``MSRVTT_data.json``, ``MSRVTT_train.9k.csv`` (if any train), ``MSRVTT_JSFUSION_test.csv``."""
    dataset = _Dataset(relative)
    videos, sentences, events, test_rows = [], [], {}, []
    for number, spec in enumerate(train + test):
        video_id, split = f"video{number}", "train" if number < len(train) else "test"
        captions = video_captions(spec, seeded_rng(seed, relative, "captions", number))
        videos.append({"category": EVENT_KINDS.index(spec.events[0].kind), "url": f"synthetic://{relative}/{video_id}",
                       "video_id": video_id, "start time": 0.0, "end time": round(spec.duration, 3), "split": split,
                       "id": number})
        sentences += [{"caption": caption, "video_id": video_id, "sen_id": len(sentences) + k}
                      for k, caption in enumerate(captions)]
        events[video_id] = spec.to_json()
        dataset.jobs.append((spec, f"videos/{video_id}.mp4"))
        if split == "test":
            test_rows.append({"key": f"ret{len(test_rows)}", "vid_key": f"msr{number}", "video_id": video_id,
                              "sentence": captions[0]})
    dataset.files["MSRVTT_data.json"] = {
        "info": {"contributor": "petvr synthetic world", "description": f"{collection} collection, procedural",
                 "version": str(WORLD_FORMAT_VERSION)},
        "videos": videos, "sentences": sentences}
    if train:
        dataset.files["MSRVTT_train.9k.csv"] = _CsvTable(("video_id",), [{"video_id": f"video{n}"}
                                                                         for n in range(len(train))])
    dataset.files["MSRVTT_JSFUSION_test.csv"] = _CsvTable(("key", "vid_key", "video_id", "sentence"), test_rows)
    dataset.files["events.json"] = events
    dataset.summary = {"format": "msrvtt", "train_videos": len(train), "test_videos": len(test),
                       "captions": len(sentences)}
    if groups is not None:
        offset = len(train)
        dataset.files["groups.json"] = {"groups": [[f"video{offset + i}" for i in group] for group in groups]}
        dataset.summary["groups"] = len(groups)
    return dataset


def _activitynet_id(rng: np.random.Generator, taken: set[str]) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
    while True:
        stem = alphabet[rng.integers(52)] + "".join(alphabet[i] for i in rng.integers(len(alphabet), size=10))
        if stem not in taken:
            taken.add(stem)
            return stem


def _event_annotation(spec: VideoSpec, rng: np.random.Generator) -> tuple[list[tuple[int, int]], list[str]]:
    """Each event's first and last frame, and its sentence."""
    return [(event.start, event.end) for event in spec.events], event_sentences(spec, rng)


def _activitynet_dataset(relative: str, seed: int, train: list, val: list, describe=_event_annotation) -> _Dataset:
    """ActivityNet Captions layout: ``train.json``/``val_1.json`` keyed ``v_<id>``, id lists, files ``<id>.mp4``, and
    ``events.json`` with every spec. ``describe(spec, rng)`` gives a video's annotated spans (first and last frame)
    and their sentences: by default one per event of a ``VideoSpec``."""
    dataset, taken, events, id_rng = _Dataset(relative), set(), {}, seeded_rng(seed, relative, "ids")
    count = 0
    for split, specs, captions_name, ids_name in (("train", train, "train.json", "train_ids.json"),
                                                  ("val", val, "val_1.json", "val_ids.json")):
        annotations, ids = {}, []
        for number, spec in enumerate(specs):
            stem = _activitynet_id(id_rng, taken)
            key = "v_" + stem
            spans, sentences = describe(spec, seeded_rng(seed, relative, split, "captions", number))
            annotations[key] = {
                "duration": round(spec.duration, 3),
                "timestamps": [[round(start / spec.fps, 3), round((end + 1) / spec.fps, 3)] for start, end in spans],
                "sentences": sentences}
            count += len(sentences)
            ids.append(key)
            events[key] = spec.to_json()
            dataset.jobs.append((spec, f"videos/{stem}.mp4"))
        dataset.files[captions_name] = annotations
        dataset.files[ids_name] = ids
    dataset.files["events.json"] = events
    dataset.summary = {"format": "activitynet", "train_videos": len(train), "val_videos": len(val), "captions": count}
    return dataset


def _collection_datasets(task: tuple[str, int, WorldSize, int]) -> list[_Dataset]:
    """The three datasets of one collection, annotations complete and videos still to render: ``task`` is
    ``(collection, seed, size, num_train)``."""
    collection, seed, size, num_train = task
    style = get_style(collection)

    def specs(name: str, count: int, layout: ClipLayout) -> list[VideoSpec]:
        return [sample_video_spec(seeded_rng(seed, collection, name, index), style, layout) for index in range(count)]

    short, long = size.short_clips, size.long_clips
    msrvtt = _msrvtt_dataset(f"{collection}/msrvtt", collection, seed, specs("msrvtt train", num_train, short),
                             specs("msrvtt test", size.msrvtt_test, short), groups=None)
    temporal, groups = [], []
    for index in range(size.temporal_pairs):
        rng = seeded_rng(seed, collection, "temporal", index)
        pair = list(sample_temporal_pair(rng, style, short))
        rng.shuffle(pair)  # which of the two is the one sampled forwards must not follow from the numbering
        groups.append([len(temporal), len(temporal) + 1])
        temporal += pair
    temporal_set = _msrvtt_dataset(f"{collection}/temporal", collection, seed, [], temporal, groups=groups)
    activitynet = _activitynet_dataset(f"{collection}/activitynet", seed,
                                       specs("activitynet train", size.activitynet_train, long),
                                       specs("activitynet val", size.activitynet_val, long))
    return [msrvtt, temporal_set, activitynet]


def _write_annotation(path: Path, content) -> None:
    if isinstance(content, _CsvTable):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=content.columns)
            writer.writeheader()
            writer.writerows(content.rows)
    else:
        path.write_text(json.dumps(content, indent=1 if path.name == "manifest.json" else None))


@dataclass(frozen=True)
class WorldPaths:
    """Where a generated world lives: ``datasets["studio/msrvtt"]`` -> its folder (also temporal, activitynet)."""

    root: Path
    manifest: Path
    datasets: dict[str, Path]

    def dataset(self, collection: str, kind: str) -> Path:
        key = f"{collection}/{kind}"
        if key not in self.datasets:
            raise KeyError(f"no dataset {key!r} in the world at {self.root}; it has {', '.join(self.datasets)}")
        return self.datasets[key]


def _world_paths(root: Path, manifest: dict) -> WorldPaths:
    return WorldPaths(root, root / "manifest.json", {key: root / key for key in manifest["datasets"]})


def _read_manifest(root: Path) -> dict | None:
    path = root / "manifest.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(path, f"not valid JSON ({error}); delete the folder to regenerate the world") from error


def generate_world(root: str | Path, seed: int = 0, size: str = "small", num_videos: int | None = None,
                   collections: Sequence[str] = STYLE_NAMES, workers: int = 2) -> WorldPaths:
    """Write the synthetic world under ``root`` and return its paths; a no-op if it is already there.

    Layout, per collection (``studio``, ``night``): ``<collection>/msrvtt`` (MSR-VTT format: ``videos/videoN.mp4``,
    ``MSRVTT_data.json``, ``MSRVTT_train.9k.csv``, ``MSRVTT_JSFUSION_test.csv``), ``<collection>/temporal`` (MSR-VTT
    format, test only, time-reversed pairs listed in ``groups.json``), ``<collection>/activitynet`` (ActivityNet
    Captions format: ``train.json``, ``val_1.json``, ``train_ids.json``, ``val_ids.json``, ``videos/<id>.mp4``). Every
    dataset folder also has ``events.json``: the ``VideoSpec`` of each video, so anyone can re-render or check it.
    ``root/manifest.json`` records the settings; a call with the same settings returns at once, other settings replace
    the world. Everything is written to a temporary sibling folder and renamed into place, so an interrupted run
    never leaves a half world behind ``root``. ``num_videos`` overrides the MSR-VTT training videos per collection.
    """
    if size not in WORLD_SIZES:
        raise ValueError(f"unknown world size {size!r}; known: {', '.join(WORLD_SIZES)}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    collections = tuple(get_style(name).name for name in collections)
    if not collections or len(set(collections)) != len(collections):
        raise ValueError(f"collections must name distinct styles, got {collections}")
    world_size = WORLD_SIZES[size]
    num_train = world_size.msrvtt_train if num_videos is None else num_videos
    if num_train < 0:
        raise ValueError(f"num_videos must be non-negative, got {num_videos}")
    settings = {"format_version": WORLD_FORMAT_VERSION, "seed": seed, "size": size, "msrvtt_train": num_train,
                "collections": list(collections), "fps": VIDEO_FPS, "frame_size": VIDEO_FRAME_SIZE}
    root = Path(root)
    existing = _read_manifest(root)
    if existing is not None and existing.get("settings") == settings:
        return _world_paths(root, existing)
    if root.exists() and existing is None and any(root.iterdir()):
        raise DataError(root, "exists and is not a synthetic world (no manifest.json); refusing to overwrite it")

    tasks = [(name, seed, world_size, num_train) for name in collections]
    datasets = [dataset for datasets in _parallel_map(_collection_datasets, tasks, workers, "annotations", "collection")
                for dataset in datasets]
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        jobs = []
        for dataset in datasets:
            folder = staging / dataset.relative
            (folder / "videos").mkdir(parents=True)
            for name, content in dataset.files.items():
                _write_annotation(folder / name, content)
            jobs += [(spec, str(folder / relative)) for spec, relative in dataset.jobs]
        jobs.sort(key=lambda job: -job[0].num_frames)
        _parallel_map(_render_and_write, jobs, workers, f"synthetic world ({size})", "video", chunksize=8)
        manifest = {"format": "petvr synthetic world", "settings": settings,
                    "datasets": {dataset.relative: dataset.summary for dataset in datasets},
                    "num_videos": len(jobs),
                    "num_files": sum(len(d.files) for d in datasets) + len(jobs) + 1}
        _write_annotation(staging / "manifest.json", manifest)
        _replace_folder(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _world_paths(root, manifest)


def _replace_folder(staging: Path, root: Path) -> None:
    """Move the finished world into ``root``; an older world there is moved aside first, then deleted."""
    if not root.exists():
        os.replace(staging, root)
        return
    if not any(root.iterdir()):
        root.rmdir()
        os.replace(staging, root)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    os.replace(root, retired / root.name)
    os.replace(staging, root)
    shutil.rmtree(retired, ignore_errors=True)
