"""The synthetic world: determinism, captions that match the pixels, the real MSR-VTT / ActivityNet formats, decodable
mp4s, and a temporal split that frame averaging cannot solve. Everything runs on the "tiny" world (about 60 videos)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest

from petvr import synthetic
from petvr.errors import DataError
from petvr.synthetic import (MOVE_WORDS, SHAPE_WORDS, STYLES, VERB_WORDS, SyntheticImageCaptions, VideoSpec,
                             generate_world, render_video)

TIE_TOLERANCE = 1.0
"""Decoded mean frames closer than this (mean absolute difference, 0-255 scale) tie: it bounds the codec noise."""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return generate_world(tmp_path_factory.mktemp("world") / "synthetic", seed=0, size="tiny", workers=2)


def decode(path: Path) -> tuple[np.ndarray, float]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(stream)])
        return frames, float(stream.average_rate)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def changed_pixels(frame: np.ndarray, other: np.ndarray) -> int:
    """Pixels whose colour changed clearly (summed channel difference over 60): an object moved or changed, not codec
    noise."""
    return int((np.abs(frame.astype(int) - other).sum(axis=-1) > 60).sum())


def specs_of(folder: Path) -> dict[str, VideoSpec]:
    return {key: VideoSpec.from_json(value) for key, value in json.loads((folder / "events.json").read_text()).items()}


def nearest_colour(style: str, pixel: np.ndarray) -> str:
    palette = STYLES[style].palette
    return min(palette, key=lambda name: np.linalg.norm(np.asarray(palette[name], float) - pixel))


def solid_point(shape: str, x: float, y: float, radius: float, block: int = 1) -> tuple[int, int]:
    """The pixel nearest the centre that lies inside the shape together with its whole aligned ``block`` x ``block``
    square (2 for decoded yuv420p video, whose chroma is shared by 2x2 pixels): its colour is the object's alone.
    The centre itself is a hole for the ring."""
    mask = synthetic.shape_mask(shape, round(radius * 4) / 4) > 0.99
    half, centre_x, centre_y = mask.shape[0] // 2, round(x), round(y)
    candidates = []
    for row, col in zip(*np.nonzero(mask)):
        pixel_x, pixel_y = centre_x + col - half, centre_y + row - half
        rows = row - pixel_y % block
        cols = col - pixel_x % block
        if rows >= 0 and cols >= 0 and mask[rows: rows + block, cols: cols + block].sum() == block * block:
            candidates.append(((pixel_x - x) ** 2 + (pixel_y - y) ** 2, pixel_x, pixel_y))
    _, pixel_x, pixel_y = min(candidates)
    return pixel_x, pixel_y


def object_extent(image: np.ndarray, x: float, y: float, radius: float, rgb) -> int:
    """Width or height (the larger) in pixels of the region nearer the object's colour than the local background,
    counting rows and columns with at least two such pixels."""
    top, left = max(round(y - 1.6 * radius), 0), max(round(x - 1.6 * radius), 0)
    window = image[top: round(y + 1.6 * radius) + 1, left: round(x + 1.6 * radius) + 1].astype(float)
    border = np.concatenate([window[0], window[-1], window[:, 0], window[:, -1]])
    background = np.median(border, axis=0)
    inside = np.linalg.norm(window - rgb, axis=-1) < np.linalg.norm(window - background, axis=-1)
    rows, cols = np.nonzero(inside.sum(axis=1) >= 2)[0], np.nonzero(inside.sum(axis=0) >= 2)[0]  # no lone speckles
    return int(max(np.ptp(rows), np.ptp(cols)) + 1)


def mention_order(caption: str, relation: str, first, second) -> tuple | None:
    """(subject, object) of ``relation`` in a caption naming two objects, or None if the caption does not use it."""
    if relation not in caption:
        return None
    before, after = caption.split(relation, 1)
    for subject, other in ((first, second), (second, first)):
        if (before.split()[-1] in SHAPE_WORDS[subject.shape][0].split() + [w.split()[-1] for w in
                                                                            SHAPE_WORDS[subject.shape]]
                and subject.colour in before.split()[-3:] and other.colour in after.split()[:3]):
            return subject, other
    raise AssertionError(f"cannot tell which object is which in {caption!r}")


# ------------------------------------------------------------------------------------------------ image-caption pairs

def test_image_pairs_are_a_pure_function_of_seed_and_index():
    first, again = SyntheticImageCaptions(seed=3, num_samples=50), SyntheticImageCaptions(seed=3, num_samples=50)
    other_seed = SyntheticImageCaptions(seed=4, num_samples=50)
    shifted = SyntheticImageCaptions(seed=3, num_samples=10, offset=20)
    for index in (0, 7, 49):
        image, caption = first[index]
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and isinstance(caption, str)
        assert np.array_equal(image, again[index][0]) and caption == again[index][1]
    assert any(not np.array_equal(first[i][0], other_seed[i][0]) for i in range(5))
    assert np.array_equal(shifted[0][0], first[20][0]) and shifted[0][1] == first[20][1]
    assert SyntheticImageCaptions(image_size=96)[0][0].shape == (96, 96, 3)
    with pytest.raises(IndexError):
        first[50]


def test_image_pairs_load_the_same_through_dataloader_workers():
    torch = pytest.importorskip("torch")
    dataset = SyntheticImageCaptions(seed=1, num_samples=12)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)
    images, captions = zip(*[(batch_images, batch_captions) for batch_images, batch_captions in loader])
    assert torch.equal(torch.cat(images), torch.as_tensor(np.stack([dataset[i][0] for i in range(12)])))
    assert [c for batch in captions for c in batch] == [dataset[i][1] for i in range(12)]


def test_image_captions_name_the_colour_shape_size_and_position_that_are_drawn():
    dataset = SyntheticImageCaptions(seed=0, num_samples=120)
    relations = 0
    for index in range(len(dataset)):
        sample = dataset.sample(index)
        image, caption, scene = sample.image, sample.caption, sample.scene
        for obj in scene.objects:
            x, y = solid_point(obj.shape, obj.x, obj.y, obj.radius)
            assert nearest_colour(scene.style, image[y, x].astype(float)) == obj.colour, caption
            assert obj.colour in caption.split()
            assert any(word in caption for word in SHAPE_WORDS[obj.shape]), caption
        if len(scene.objects) == 1:
            obj = scene.objects[0]
            extent = object_extent(image, obj.x, obj.y, obj.radius, obj.rgb)
            assert (extent <= 14) if obj.size == "small" else (extent >= 16), (caption, extent)
            words = caption.split()
            if obj.size == "small":
                assert not {"large", "big"} & set(words), caption
            if "left" in words:
                assert obj.x < 64 / 3, caption
            if "right" in words:
                assert obj.x > 2 * 64 / 3, caption
            if "top" in words:
                assert obj.y < 64 / 3, caption
            if "bottom" in words:
                assert obj.y > 2 * 64 / 3, caption
        else:
            for relation, holds in (("above", lambda a, b: a.y < b.y), ("below", lambda a, b: a.y > b.y),
                                    ("to the left of", lambda a, b: a.x < b.x),
                                    ("to the right of", lambda a, b: a.x > b.x)):
                pair = mention_order(caption, relation, *scene.objects)
                if pair is not None:
                    assert holds(*pair), caption
                    relations += 1
    assert relations > 5


def test_captions_fit_the_32_token_text_context(world):
    from petvr.backbone.tokenizer import Tokenizer

    untruncated = Tokenizer(max_words=64)
    captions = [SyntheticImageCaptions(seed=2, num_samples=200)[i][1] for i in range(200)]
    for folder in world.datasets.values():
        data = folder / "MSRVTT_data.json"
        if data.exists():
            captions += [s["caption"] for s in json.loads(data.read_text())["sentences"]]
    rng = np.random.default_rng(0)
    for _ in range(60):
        spec = synthetic.sample_video_spec(rng, STYLES["studio"], synthetic.WORLD_SIZES["small"].short_clips)
        captions += synthetic.video_captions(spec, rng) + synthetic.event_sentences(spec, rng)
    assert len(captions) > 700
    for caption in captions:
        assert len(untruncated.encode(caption)) <= 32, caption  # SOT + at most 30 tokens + EOT


# ------------------------------------------------------------------------------------------------ videos

def test_world_is_deterministic_and_independent_of_worker_count(world, tmp_path):
    again = generate_world(tmp_path / "again", seed=0, size="tiny", workers=1)
    other = generate_world(tmp_path / "other", seed=1, size="tiny", workers=1)
    files = sorted(p.relative_to(world.root) for p in world.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.root) for p in again.root.rglob("*") if p.is_file())
    for relative in files:
        assert (world.root / relative).read_bytes() == (again.root / relative).read_bytes(), relative
    shared = [r for r in files if r.suffix == ".mp4" and (other.root / r).exists()]  # ActivityNet ids differ by seed
    assert len(shared) >= 50
    assert sum((other.root / r).read_bytes() != (world.root / r).read_bytes() for r in shared) > 0.9 * len(shared)


def test_time_reversal_renders_exactly_the_frames_backwards(world):
    for folder in world.datasets.values():
        for spec in list(specs_of(folder).values())[:4]:
            mirror = spec.reversed()
            assert mirror.reversed() == spec
            assert np.array_equal(render_video(mirror), render_video(spec)[::-1])


def test_msrvtt_folders_are_in_the_real_format(world):
    for kind in ("msrvtt", "temporal"):
        for collection in ("studio", "night"):
            folder = world.dataset(collection, kind)
            data = json.loads((folder / "MSRVTT_data.json").read_text())
            videos = {video["video_id"]: video for video in data["videos"]}
            for video in data["videos"]:
                assert set(video) == {"video_id", "category", "url", "split", "start time", "end time", "id"}
                assert video["split"] in ("train", "test") and video["end time"] > video["start time"] == 0
            captions: dict[str, list[str]] = {}
            for sentence in data["sentences"]:
                assert set(sentence) == {"caption", "video_id", "sen_id"} and sentence["video_id"] in videos
                captions.setdefault(sentence["video_id"], []).append(sentence["caption"])
            assert len({s["sen_id"] for s in data["sentences"]}) == len(data["sentences"])
            assert all(len(set(texts)) == synthetic.CAPTIONS_PER_VIDEO for texts in captions.values())
            columns, test_rows = read_csv(folder / "MSRVTT_JSFUSION_test.csv")
            assert columns == ["key", "vid_key", "video_id", "sentence"]
            assert all(videos[row["video_id"]]["split"] == "test" and row["sentence"] in captions[row["video_id"]]
                       for row in test_rows)
            train_ids = []
            if kind == "msrvtt":
                columns, train_rows = read_csv(folder / "MSRVTT_train.9k.csv")
                assert columns == ["video_id"]
                train_ids = [row["video_id"] for row in train_rows]
                assert train_ids and all(videos[video_id]["split"] == "train" for video_id in train_ids)
            assert sorted(train_ids + [row["video_id"] for row in test_rows]) == sorted(videos)
            assert sorted(p.name for p in (folder / "videos").iterdir()) == sorted(f"{v}.mp4" for v in videos)


def test_every_mp4_decodes_with_the_annotated_length_size_and_content(world):
    for folder in world.datasets.values():
        specs = specs_of(folder)
        for key, spec in specs.items():
            frames, fps = decode(folder / "videos" / f"{key.removeprefix('v_')}.mp4")
            assert frames.shape == (spec.num_frames, 64, 64, 3) and fps == synthetic.VIDEO_FPS
            assert np.abs(frames.astype(float) - render_video(spec)).mean() < 8


def test_decoded_pixels_show_what_each_event_sentence_says(world):
    """For every ActivityNet event: the sentence names the change, and the decoded frames show it at the object."""
    checked = 0
    for collection in ("studio", "night"):
        folder = world.dataset(collection, "activitynet")
        specs = specs_of(folder)
        annotations = {**json.loads((folder / "train.json").read_text()),
                       **json.loads((folder / "val_1.json").read_text())}
        for key, spec in specs.items():
            frames, _ = decode(folder / "videos" / f"{key[2:]}.mp4")
            background = synthetic.video_background(spec)
            objects = list(spec.objects)
            for event, sentence in zip(spec.events, annotations[key]["sentences"]):
                before = objects[event.target]
                after = synthetic.apply_event(before, event.kind, event.after)
                objects[event.target] = after
                x, y = solid_point(after.shape, synthetic.VIDEO_CELL_CENTRES[after.column] * 64,
                                   synthetic.VIDEO_CELL_CENTRES[after.row] * 64,
                                   synthetic.VIDEO_RADIUS[after.size] * 64, block=2)
                pixel = frames[event.end, y, x].astype(float)
                if event.kind == "disappear":
                    assert np.linalg.norm(pixel - background[y, x]) < 40, sentence
                else:
                    assert nearest_colour(collection, pixel) == after.colour, sentence
                text = sentence.lower().rstrip(".")
                named_colours = [word for word in text.split() if word in STYLES[collection].palette]
                assert set(named_colours) <= {before.colour, after.colour}, sentence
                assert any(word in text for word in SHAPE_WORDS[before.shape]), sentence
                if event.kind == "move":
                    assert any(phrase in text for phrase in MOVE_WORDS[event.direction]), sentence
                    start_x, start_y = solid_point(before.shape, synthetic.VIDEO_CELL_CENTRES[before.column] * 64,
                                                   synthetic.VIDEO_CELL_CENTRES[before.row] * 64,
                                                   synthetic.VIDEO_RADIUS[before.size] * 64, block=2)
                    assert nearest_colour(collection, frames[event.start, start_y, start_x].astype(float)) \
                        == before.colour, sentence
                elif event.kind == "recolour":
                    assert named_colours[-1] == event.after, sentence
                else:
                    assert any(phrase in text for phrase in VERB_WORDS[event.kind]), sentence
                checked += 1
    assert checked >= 15


def test_activitynet_folder_is_in_the_real_format_with_consistent_timestamps(world):
    for collection in ("studio", "night"):
        folder = world.dataset(collection, "activitynet")
        stems = sorted(p.stem for p in (folder / "videos").iterdir())
        listed = []
        for captions_name, ids_name in (("train.json", "train_ids.json"), ("val_1.json", "val_ids.json")):
            annotations = json.loads((folder / captions_name).read_text())
            ids = json.loads((folder / ids_name).read_text())
            assert sorted(ids) == sorted(annotations) and all(key.startswith("v_") for key in ids)
            listed += [key[2:] for key in ids]
            for key, entry in annotations.items():
                assert set(entry) == {"duration", "timestamps", "sentences"}
                assert len(entry["timestamps"]) == len(entry["sentences"]) >= 3
                frames, fps = decode(folder / "videos" / f"{key[2:]}.mp4")
                assert entry["duration"] == pytest.approx(len(frames) / fps)
                previous_end = 0.0
                for start, end in entry["timestamps"]:
                    assert previous_end <= start < end <= entry["duration"]
                    first, last = round(start * fps), round(end * fps) - 1
                    assert changed_pixels(frames[first], frames[last]) > 40, (key, start, end)
                    if previous_end > 0:
                        idle = frames[round(previous_end * fps) - 1: first + 1]
                        assert max(changed_pixels(idle[0], frame) for frame in idle) < 5, (key, previous_end, start)
                    previous_end = end
        assert sorted(listed) == stems and not any(stem.startswith("v_") for stem in stems)


def test_collections_look_different(world):
    brightness = {}
    for collection in ("studio", "night"):
        folder = world.dataset(collection, "msrvtt")
        first_frames = [decode(path)[0][0] for path in sorted((folder / "videos").iterdir())]
        brightness[collection] = [frame.mean() for frame in first_frames]
    assert min(brightness["studio"]) > 150 and max(brightness["night"]) < 80
    assert set(STYLES["studio"].palette) != set(STYLES["night"].palette)


# ------------------------------------------------------------------------------------------------ temporal split

def retrieval_r1(distances: np.ndarray, tolerance: float) -> float:
    """Text-to-video R@1 (query i's video is gallery item i) when distances within ``tolerance`` of the best tie and
    ties are broken at random: the expected R@1, so a model that cannot separate k videos scores 1/k on them."""
    best = distances.min(axis=1, keepdims=True)
    tied = distances <= best + tolerance
    hits = tied[np.arange(len(distances)), np.arange(len(distances))]
    return float(np.mean(hits / tied.sum(axis=1)))


def mean_frame(frames: np.ndarray) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 -> ``(H, W, 3)`` mean, from exact integer sums (order of frames cannot matter)."""
    return frames.sum(axis=0, dtype=np.int64) / len(frames)


def frame_mean_oracle(queries: list[np.ndarray], gallery: list[np.ndarray],
                      tolerance: float) -> tuple[float, np.ndarray]:
    """A frame-averaging model at its best: it knows the exact mean frame of each caption's video (query i describes
    gallery video i) and retrieves by the nearest mean frame, ties within ``tolerance`` broken at random.
    Returns its text-to-video R@1 and the (query, video) distances."""
    query_means, gallery_means = [mean_frame(q) for q in queries], [mean_frame(v) for v in gallery]
    distances = np.array([[np.abs(q - v).mean() for v in gallery_means] for q in query_means])
    return retrieval_r1(distances, tolerance), distances


def order_aware_oracle(queries: list[np.ndarray], gallery: list[np.ndarray]) -> float:
    """The same oracle comparing frame sequences in order instead of mean frames: its text-to-video R@1."""
    distances = np.array([[np.abs(q.astype(float) - v).mean() if q.shape == v.shape else np.inf for v in gallery]
                          for q in queries])
    return retrieval_r1(distances, tolerance=0.0)


def test_temporal_split_defeats_frame_averaging_but_not_an_order_aware_model(world):
    """Every test video ties with its time-reversed partner by mean frame, so the frame-mean oracle's R@1 is chance,
    1 / group size, while the order-aware oracle's is perfect. On the rendered frames the tie is exact; in the decoded
    mp4s the partners' mean frames differ by codec noise only, far less than from any other video, and that noise
    bound is the tie tolerance."""
    for collection in ("studio", "night"):
        folder = world.dataset(collection, "temporal")
        specs = specs_of(folder)
        ids = [row["video_id"] for row in read_csv(folder / "MSRVTT_JSFUSION_test.csv")[1]]
        group_of = {video_id: number for number, group in
                    enumerate(json.loads((folder / "groups.json").read_text())["groups"]) for video_id in group}
        same_group = np.array([[group_of[a] == group_of[b] for b in ids] for a in ids])
        chance = float(np.mean(1 / same_group.sum(axis=1)))
        assert chance == pytest.approx(0.5)

        rendered = [render_video(specs[video_id]) for video_id in ids]
        recall, distances = frame_mean_oracle(rendered, rendered, tolerance=0.0)
        assert np.all(distances[same_group] == 0) and distances[~same_group].min() > 5
        assert recall == pytest.approx(chance)

        decoded = [decode(folder / "videos" / f"{video_id}.mp4")[0] for video_id in ids]
        recall, distances = frame_mean_oracle(decoded, decoded, TIE_TOLERANCE)
        assert distances[same_group].max() < TIE_TOLERANCE and distances[~same_group].min() > 5
        assert abs(recall - chance) < 0.05

        assert order_aware_oracle(rendered, decoded) == 1.0


def test_temporal_pairs_share_objects_and_events_but_differ_in_order_or_direction(world):
    for collection in ("studio", "night"):
        folder = world.dataset(collection, "temporal")
        specs = specs_of(folder)
        _, rows = read_csv(folder / "MSRVTT_JSFUSION_test.csv")
        sentence = {row["video_id"]: row["sentence"] for row in rows}
        for first, second in json.loads((folder / "groups.json").read_text())["groups"]:
            a, b = specs[first], specs[second]
            assert b == a.reversed() and a.signature() != b.signature() and sentence[first] != sentence[second]
            assert sorted(o.shape for o in a.objects) == sorted(o.shape for o in b.objects)
            inverse = sorted(synthetic.INVERSE_KIND[e.kind] for e in a.events)
            assert inverse == sorted(e.kind for e in b.events)
            clean_a, clean_b = render_video(a), render_video(b)
            uniform = np.linspace(0, a.num_frames - 1, 12).round().astype(int)
            assert np.abs(clean_a[uniform].mean(0) - clean_b[uniform].mean(0)).mean() < 2.0
            assert np.array_equal(clean_a.mean(0), clean_b.mean(0))


# ------------------------------------------------------------------------------------------------ generate_world

def test_generate_world_is_idempotent_and_replaces_other_settings(tmp_path):
    root = tmp_path / "w"
    paths = generate_world(root, seed=0, size="tiny", collections=("night",), workers=1)
    manifest_time = paths.manifest.stat().st_mtime_ns
    assert generate_world(root, seed=0, size="tiny", collections=("night",), workers=1) == paths
    assert paths.manifest.stat().st_mtime_ns == manifest_time
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["num_videos"] == sum(1 for _ in root.rglob("*.mp4"))
    assert manifest["num_files"] == sum(1 for p in root.rglob("*") if p.is_file())
    replaced = generate_world(root, seed=0, size="tiny", num_videos=3, collections=("night",), workers=1)
    assert json.loads(replaced.manifest.read_text())["settings"]["msrvtt_train"] == 3
    assert len(read_csv(replaced.dataset("night", "msrvtt") / "MSRVTT_train.9k.csv")[1]) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["w"]
    with pytest.raises(KeyError, match="studio/msrvtt"):
        replaced.dataset("studio", "msrvtt")


def test_an_interrupted_run_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    written = []

    def failing_write(path, frames, fps):
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(path)
        Path(path).write_bytes(b"partial")

    monkeypatch.setattr("petvr.synthetic.world.write_mp4", failing_write)  # where generate_world looks it up
    with pytest.raises(KeyboardInterrupt):
        generate_world(tmp_path / "w", size="tiny", collections=("studio",), workers=1)
    assert list(tmp_path.iterdir()) == []


def test_generate_world_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a synthetic world"):
        generate_world(tmp_path / "mine", size="tiny", workers=1)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
