"""Ambiguous data is refused (DataError) or reported (DataWarning), never silently resolved: a video listed twice, one
file under two ids, two files of one stem, a key repeated in a JSON object, an empty split, a repeated (video, caption)
pair, a frame the decoder had to conceal. Every test writes its own tiny files."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from petvr.data.readers import read_custom, read_msrvtt, read_msvd, read_video_folder, read_youcook2
from petvr.data.readers.common import Problems, SplitBuilder
from petvr.data.records import VideoRecord
from petvr.data.video import SamplingConfig, decode_grid
from petvr.errors import DataError, DataWarning


def touch(root: Path, *names: str) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def write_msrvtt(root: Path, train_ids: list[str], sentences: list[tuple[str, str]], test_rows: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": [
        {"video_id": video, "caption": caption, "sen_id": number} for number, (video, caption) in enumerate(sentences)]}))
    (root / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{video}\n" for video in train_ids))
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\n" + test_rows)
    return root


def test_a_video_listed_twice_is_refused_naming_both_rows(tmp_path):
    videos = touch(tmp_path / "videos", "video0.mp4", "video1.mp4")
    annotations = write_msrvtt(tmp_path / "msrvtt", ["video0", "video1", "video0"],
                               [("video0", "a man sings"), ("video1", "a cat jumps")])
    with pytest.raises(DataError, match=r"MSRVTT_train\.9k\.csv: row 4: video 'video0' is listed twice \(also row 2\)"):
        read_msrvtt(annotations, videos)
    split = read_msrvtt(annotations, videos, skip_unreadable=True)
    assert [video.video_id for video in split.videos] == ["video0", "video1"]
    assert [(item.row, "listed twice" in item.problem) for item in split.skipped.items] == [(4, True)]


def test_msvd_list_naming_a_video_twice_is_refused(tmp_path):
    import pickle

    annotations = tmp_path / "msvd"
    annotations.mkdir()
    (annotations / "raw-captions.pkl").write_bytes(pickle.dumps({"a": [["a", "dog"]]}))
    (annotations / "test_list.txt").write_text("a\na\n")
    with pytest.raises(DataError, match=r"test_list\.txt: row 2: video 'a' is listed twice \(also row 1\)"):
        read_msvd(annotations, touch(tmp_path / "videos", "a.avi"))


def test_one_file_under_two_ids_and_two_files_of_one_stem(tmp_path):
    builder = SplitBuilder("toy", "test", [tmp_path / "list.txt"], Problems(skip_unreadable=False))
    builder.add(VideoRecord("x", tmp_path / "a.mp4", "test", ["c"]), tmp_path / "list.txt", 1)
    with pytest.raises(DataError, match=r"list\.txt: row 2: video 'y' is the file .*a\.mp4, already video 'x' \(row 1\)"):
        builder.add(VideoRecord("y", tmp_path / "a.mp4", "test", ["c"]), tmp_path / "list.txt", 2)
    with pytest.raises(DataError, match=r"row 3: video 'z' is .*a\.avi and video 'x' \(row 1\) is .*a\.mp4: two files"):
        builder.add(VideoRecord("z", tmp_path / "a.avi", "test", ["c"]), tmp_path / "list.txt", 3)
    builder.add(VideoRecord("w", tmp_path / "sub" / "a.avi", "test", ["c"]), tmp_path / "list.txt", 4)  # another folder
    assert [video.video_id for video in builder.finish().videos] == ["x", "w"]


def test_bare_folder_with_two_files_of_one_stem_is_refused(tmp_path):
    folder = touch(tmp_path / "clips", "a.mp4", "a.avi", "b.mp4", "more/a.mkv")
    with pytest.raises(DataError, match=r"a\.mp4: video 'a\.mp4' is .*a\.mp4 and video 'a\.avi' \(.*a\.avi\) is "
                                        r".*a\.avi: two files of one stem"):
        read_video_folder(folder)
    (folder / "a.avi").unlink()
    assert [video.video_id for video in read_video_folder(folder).videos] == ["a.mp4", "b.mp4", "more/a.mkv"]


def test_custom_row_naming_an_ambiguous_stem_is_refused(tmp_path):
    folder = touch(tmp_path / "clips", "a.mp4", "a.avi", "cats/tom.mp4", "dogs/tom.mp4")
    captions = tmp_path / "captions.csv"
    captions.write_text("video,caption\na,a cat\n")
    with pytest.raises(DataError, match=r"captions\.csv: row 2: video 'a' is ambiguous: it names .*a\.mp4 and "
                                        r".*a\.avi"):
        read_custom(captions, folder)
    captions.write_text("video,caption\ntom.mp4,a cat\n")
    with pytest.raises(DataError, match=r"'tom\.mp4' is ambiguous: it names .*cats/tom\.mp4 and .*dogs/tom\.mp4"):
        read_custom(captions, folder)
    captions.write_text("video,caption\na.mp4,a cat\na.avi,a cat again\n")
    with pytest.raises(DataError, match=r"row 3: video 'a\.avi' is .*a\.avi and video 'a\.mp4' \(row 2\) is .*a\.mp4"):
        read_custom(captions, folder)
    captions.write_text("video,caption\na.mp4,a cat\ncats/tom.mp4,tom\n")
    assert [video.video_id for video in read_custom(captions, folder).videos] == ["a.mp4", "cats/tom.mp4"]


def test_a_key_repeated_in_a_json_object_is_refused(tmp_path):
    annotations = tmp_path / "youcook2"
    annotations.mkdir()
    entry = '{"duration": 9, "subset": "validation", "annotations": [{"segment": [0, 1], "sentence": "s"}]}'
    (annotations / "youcookii_annotations_trainval.json").write_text(
        '{"database": {"x": ' + entry + ', "x": ' + entry + '}}')
    with pytest.raises(DataError, match=r'youcookii_annotations_trainval\.json: key "x" appears twice in one object'):
        read_youcook2(annotations, touch(tmp_path / "videos", "x.mp4"))


def test_an_empty_split_is_refused_naming_the_files_and_the_split(tmp_path):
    videos = touch(tmp_path / "videos", "video0.mp4")
    annotations = write_msrvtt(tmp_path / "msrvtt", [], [("video0", "a man sings")])
    with pytest.raises(DataError, match=r"MSRVTT_train\.9k\.csv, .*MSRVTT_data\.json: msrvtt split 'train' has no "
                                        r"videos$"):
        read_msrvtt(annotations, videos)
    with pytest.raises(DataError, match=r"MSRVTT_JSFUSION_test\.csv: msrvtt split 'test' has no videos"):
        read_msrvtt(annotations, videos, split="test")
    captions = tmp_path / "captions.csv"
    captions.write_text("video,caption\nmissing,a cat\n")
    with pytest.raises(DataError, match=r"captions\.csv: custom split 'all' has no videos \(1 unreadable item\(s\) "
                                        r"skipped; the first: .*captions\.csv row 2: no video file"):
        read_custom(captions, videos, skip_unreadable=True)


def test_repeated_captions_are_kept_with_a_warning_naming_file_and_rows(tmp_path):
    videos = touch(tmp_path / "videos", "video0.mp4", "video1.mp4")
    annotations = write_msrvtt(tmp_path / "msrvtt", ["video0", "video1"],
                               [("video0", "a man sings"), ("video1", "a cat"), ("video0", "a man  sings"),
                                ("video1", "a dog")])
    with pytest.warns(DataWarning, match=r"MSRVTT_data\.json: 1 repeated \(video, caption\) pair\(s\) in msrvtt split "
                                         r"'train', kept .*video 'video0': 'a man sings' at sentences\[0\], "
                                         r"sentences\[2\]"):
        split = read_msrvtt(annotations, videos)
    assert split.videos[0].captions == ["a man sings", "a man sings"]  # as the official loader keeps them

    captions = tmp_path / "captions.csv"
    captions.write_text("video,caption\nvideo0,a man sings\nvideo1,a cat\nvideo0,a man sings\n")
    with pytest.warns(DataWarning, match=r"captions\.csv: 1 repeated .*video 'video0\.mp4': 'a man sings' at row 2, "
                                         r"row 4"):
        assert read_custom(captions, videos).videos[0].captions == ["a man sings", "a man sings"]


def test_one_caption_at_two_times_is_not_a_repeat(tmp_path):
    videos = touch(tmp_path / "videos", "video0.mp4")
    captions = tmp_path / "captions.csv"
    captions.write_text("video,caption,start,end\nvideo0,stir,0,2\nvideo0,stir,5,7\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_custom(captions, videos).videos[0].caption_times == [(0.0, 2.0), (5.0, 7.0)]
    captions.write_text("video,caption,start,end\nvideo0,stir,0,2\nvideo0,stir,0,2\n")
    with pytest.warns(DataWarning, match="'stir' at row 2, row 3"):
        read_custom(captions, videos)


def test_concealed_decoder_errors_warn_with_the_file_and_time(tmp_path, write_numbered_video):
    path = write_numbered_video(tmp_path / "damaged.mp4", 40, keyframe_interval=10)
    data = bytearray(path.read_bytes())
    mdat = data.find(b"mdat")
    data[mdat + (len(data) - mdat) // 2] ^= 0x5A  # one flipped bit pattern mid-stream: concealed, frames still come
    path.write_bytes(bytes(data))
    config = SamplingConfig(max_frames=4, feature_framerate=10, image_size=32)
    with pytest.warns(DataWarning, match=r"damaged\.mp4: the decoder reported errors in this video, first in the "
                                         r"frame at \d+\.\d{3} s"):
        clip = decode_grid(path, config)
    assert len(clip) == 40 and np.isfinite(clip.timestamps).all()
    clean = write_numbered_video(tmp_path / "clean.mp4", 40, keyframe_interval=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(decode_grid(clean, config)) == 40
