"""Record types, custom collections (caption files, bare folders) and the reader registry."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from petvr.errors import DataError
from petvr.data.readers import READERS, list_datasets, read_custom, read_dataset, read_video_folder
from petvr.data.records import RetrievalSplit, VideoRecord


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


@pytest.fixture
def collection(tmp_path):
    videos = tmp_path / "clips"
    touch(videos, "cats/tom.mp4", "cats/felix.mov", "dogs/rex.mkv", "notes.txt", ".hidden.mp4")
    return videos


def test_video_record_and_split_views():
    with pytest.raises(ValueError, match="2 captions but 1 spans"):
        VideoRecord("v", Path("v.mp4"), "test", ["a", "b"], caption_times=[(0.0, 1.0)])
    timed = VideoRecord("v", Path("v.mp4"), "test", ["a", "b"], caption_times=[(0.0, 1.0), (2.0, 3.0)])
    whole = VideoRecord("w", Path("w.mp4"), "test", ["c"], start=1.0, end=4.0)
    split = RetrievalSplit("toy", "test", [timed, whole])
    assert split.queries() == [("a", 0), ("b", 0), ("c", 1)]
    assert [(p.caption, p.start, p.end) for p in split.pairs()] == [("a", 0.0, 1.0), ("b", 2.0, 3.0), ("c", 1.0, 4.0)]
    clips = split.clips()
    assert [(v.video_id, v.start, v.end, v.captions) for v in clips.videos] == [
        ("v#0", 0.0, 1.0, ["a"]), ("v#1", 2.0, 3.0, ["b"]), ("w", 1.0, 4.0, ["c"])]
    assert not clips.multi_caption and split.multi_caption
    samples = split.training_samples(expand_sentences=False)
    assert len(samples) == 2 and samples[1].caption == "c" and samples[0].caption in {"a", "b"}


def test_custom_csv_paths_stems_and_times(collection, tmp_path):
    captions = tmp_path / "captions.csv"
    captions.write_text("video,caption,start,end\n"
                        "cats/tom.mp4,a grey cat chases a mouse,0,4.5\n"
                        "felix,a black cat sleeps,,\n"
                        "tom.mp4,the cat catches it,4.5,9\n"
                        "dogs/rex.mkv,\"a dog barks, loudly\",,\n")
    split = read_custom(captions, collection)
    assert [v.video_id for v in split.videos] == ["cats/tom.mp4", "cats/felix.mov", "dogs/rex.mkv"]
    tom = split.videos[0]
    assert tom.captions == ["a grey cat chases a mouse", "the cat catches it"]
    assert tom.caption_times == [(0.0, 4.5), (4.5, 9.0)]
    assert split.videos[1].caption_times is None
    assert split.videos[2].captions == ["a dog barks, loudly"]
    assert split.videos[0].path == collection / "cats" / "tom.mp4"


def test_custom_jsonl(collection, tmp_path):
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"video": "rex", "caption": "a dog runs", "start": 1, "end": 2}) + "\n\n"
                        + json.dumps({"video": "cats/felix.mov", "caption": "a cat", "start": None}) + "\n")
    split = read_dataset("custom", annotations=captions, video_dir=collection)
    assert [(v.video_id, v.captions, v.caption_times) for v in split.videos] == [
        ("dogs/rex.mkv", ["a dog runs"], [(1.0, 2.0)]), ("cats/felix.mov", ["a cat"], None)]


def test_custom_bad_rows_raise_or_are_reported(collection, tmp_path):
    captions = tmp_path / "captions.jsonl"
    lines = [
        json.dumps({"video": "rex", "caption": "fine"}),
        '{"video": "tom", "caption": "broken",',
        json.dumps({"video": "garfield", "caption": "no such file"}),
        json.dumps({"video": "felix", "caption": ["not", "a", "string"]}),
        json.dumps({"video": "felix", "caption": "only a start", "start": 3}),
        json.dumps({"video": "rex", "caption": "timed, but rex had an untimed row", "start": 0, "end": 1}),
        json.dumps({"video": "../outside.mp4", "caption": "escapes"}),
        json.dumps({"caption": "no video key"}),
        json.dumps({"video": "tom", "caption": "backwards", "start": 5, "end": 1}),
    ]
    captions.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"captions\.jsonl: row 2: malformed JSON"):
        read_custom(captions, collection)
    split = read_custom(captions, collection, skip_unreadable=True)
    assert [(v.video_id, v.captions) for v in split.videos] == [("dogs/rex.mkv", ["fine"])]
    rows = {item.row: item.problem for item in split.skipped.items}
    assert sorted(rows) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert "no video file named 'garfield'" in rows[3]
    assert "caption is not a string" in rows[4]
    assert "both start and end" in rows[5]
    assert "with and without start/end" in rows[6]
    assert "not a path inside the video folder" in rows[7]
    assert 'missing key "video"' in rows[8]
    assert "starts after it ends" in rows[9]
    assert "captions.jsonl row 3" in split.skipped.summary()


def test_custom_file_level_errors(collection, tmp_path):
    with pytest.raises(DataError, match=r"missing\.csv: annotation file not found"):
        read_custom(tmp_path / "missing.csv", collection)
    (tmp_path / "captions.txt").write_text("tom a cat\n")
    with pytest.raises(DataError, match="unsupported caption file type"):
        read_custom(tmp_path / "captions.txt", collection)
    (tmp_path / "captions.csv").write_text("file,text\ntom,a cat\n")
    with pytest.raises(DataError, match=r"captions\.csv: row 1: missing column\(s\) video, caption"):
        read_custom(tmp_path / "captions.csv", collection, skip_unreadable=True)


def test_video_folder_walks_recursively(collection, tmp_path):
    split = read_video_folder(collection)
    assert [v.video_id for v in split.videos] == ["cats/felix.mov", "cats/tom.mp4", "dogs/rex.mkv"]
    assert all(v.captions == [] for v in split.videos) and split.queries() == []
    assert [v.video_id for v in read_video_folder(collection, extensions=(".mkv",)).videos] == ["dogs/rex.mkv"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no video files found"):
        read_video_folder(tmp_path / "empty")


def test_registry_names_every_reader():
    assert list_datasets() == sorted(["msrvtt", "msvd", "lsmdc", "activitynet", "didemo", "vatex", "youcook2",
                                      "custom", "folder"])
    assert all(callable(reader) for reader in READERS.values())
    with pytest.raises(ValueError, match="unknown dataset 'kinetics'; known: activitynet"):
        read_dataset("kinetics")


def test_video_folder_follows_symlinks_without_looping(collection):
    (collection / "cats" / "loop").symlink_to(collection, target_is_directory=True)
    assert [v.video_id for v in read_video_folder(collection).videos] == [
        "cats/felix.mov", "cats/tom.mp4", "dogs/rex.mkv"]
