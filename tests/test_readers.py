"""Benchmark annotation readers: each test writes tiny annotation files in the real format plus empty placeholder
videos named as the datasets name them, then checks records, splits, captions, times, and every kind of bad input."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from petvr.errors import DataError, DataWarning
from petvr.data.readers import (read_activitynet, read_dataset, read_didemo, read_lsmdc, read_msrvtt, read_msvd,
                                read_vatex, read_youcook2)
from petvr.data.readers.didemo import consensus_segments


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


# ---------------------------------------------------------------- MSR-VTT

@pytest.fixture
def msrvtt(tmp_path):
    annotations, videos = tmp_path / "msrvtt_data", tmp_path / "videos"
    touch(videos, "video0.mp4", "video1.webm", "video2.mp4", "video2.webm", "video9.mp4")
    sentences = [("video0", "a man is singing"), ("video1", "a cat jumps"), ("video0", "someone sings a song"),
                 ("video2", "cars race"), ("video9", "a dog runs"), ("video2", "a race on a track")]
    write_json(annotations / "MSRVTT_data.json", {
        "info": {"year": 2016},
        "videos": [{"video_id": f"video{i}", "url": "https://www.youtube.com/watch?v=x", "category": 9,
                    "split": "train", "id": i} for i in (0, 1, 2, 9)],
        "sentences": [{"video_id": video, "caption": caption, "sen_id": number}
                      for number, (video, caption) in enumerate(sentences)],
    })
    (annotations / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\nvideo2\n")
    (annotations / "MSRVTT_train.7k.csv").write_text("video_id\nvideo2\n")
    (annotations / "MSRVTT_JSFUSION_test.csv").write_text(
        'key,vid_key,video_id,sentence\nret0,msr9,video9,"a dog runs, fast"\n')
    return annotations, videos


def test_msrvtt_train_groups_all_captions_and_prefers_mp4(msrvtt):
    annotations, videos = msrvtt
    split = read_msrvtt(annotations, videos, split="train")
    assert [v.video_id for v in split.videos] == ["video0", "video1", "video2"]
    assert split.videos[0].captions == ["a man is singing", "someone sings a song"]
    assert split.videos[1].path == videos / "video1.webm"
    assert split.videos[2].path == videos / "video2.mp4"
    assert {v.split for v in split.videos} == {"train"} and len(split.skipped) == 0
    assert [v.video_id for v in read_msrvtt(annotations, videos, split="train", train_size="7k").videos] == ["video2"]


def test_msrvtt_training_samples_expand_or_random_caption(msrvtt):
    split = read_msrvtt(*msrvtt, split="train")
    expanded = split.training_samples(expand_sentences=True)
    assert len(expanded) == 5
    assert [expanded[i].caption for i in range(2)] == ["a man is singing", "someone sings a song"]
    per_video = split.training_samples(expand_sentences=False, seed=3)
    assert len(per_video) == 3
    seen = set()
    for epoch in range(30):
        per_video.set_epoch(epoch)
        first = per_video[0]
        assert first == per_video[0]  # deterministic within an epoch
        seen.add(first.caption)
    assert seen == {"a man is singing", "someone sings a song"}
    with pytest.raises(IndexError):
        per_video[3]


def test_msrvtt_test_split_reads_the_jsfusion_pairs(msrvtt):
    split = read_msrvtt(*msrvtt, split="test")
    assert split.queries() == [("a dog runs, fast", 0)]
    assert split.videos[0].path.name == "video9.mp4" and not split.multi_caption
    assert read_dataset("msrvtt", annotation_dir=msrvtt[0], video_dir=msrvtt[1], split="test").queries() == \
        split.queries()


def test_msrvtt_unknown_video_raises_or_is_reported(msrvtt, tmp_path):
    annotations, videos = msrvtt
    (annotations / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo1\nvideo2\nvideo5\n")
    data = json.loads((annotations / "MSRVTT_data.json").read_text())
    data["sentences"].append({"video_id": "video5", "caption": "no file for this one", "sen_id": 99})
    write_json(annotations / "MSRVTT_data.json", data)
    with pytest.raises(DataError, match=r"MSRVTT_train\.9k\.csv: row 5: no video file named 'video5'"):
        read_msrvtt(annotations, videos)
    split = read_msrvtt(annotations, videos, skip_unreadable=True)
    assert len(split) == 3
    assert [(Path(i.path).name, i.row) for i in split.skipped.items] == [("MSRVTT_train.9k.csv", 5)]
    report = split.skipped.write(tmp_path / "skipped.jsonl")
    assert json.loads(report.read_text().splitlines()[0])["row"] == 5


def test_msrvtt_caption_not_a_string_and_missing_key(msrvtt):
    annotations, videos = msrvtt
    data = json.loads((annotations / "MSRVTT_data.json").read_text())
    data["sentences"][2]["caption"] = 17
    del data["sentences"][3]["caption"]
    write_json(annotations / "MSRVTT_data.json", data)
    with pytest.raises(DataError, match=r"MSRVTT_data\.json: row sentences\[2\]: caption is not a string"):
        read_msrvtt(annotations, videos)
    split = read_msrvtt(annotations, videos, skip_unreadable=True)
    assert split.videos[0].captions == ["a man is singing"]
    assert split.videos[2].captions == ["a race on a track"]
    assert [item.row for item in split.skipped.items] == ["sentences[2]", "sentences[3]"]
    assert 'missing key "caption"' in split.skipped.items[1].problem


def test_msrvtt_malformed_json_names_the_line(msrvtt):
    annotations, videos = msrvtt
    (annotations / "MSRVTT_data.json").write_text('{\n "sentences": [\n  {"video_id": "video0",, }\n]}\n')
    with pytest.raises(DataError, match=r"MSRVTT_data\.json: row 3: malformed JSON"):
        read_msrvtt(annotations, videos, skip_unreadable=True)  # a file that cannot be parsed is never skipped


def test_msrvtt_missing_file_missing_column_and_short_row(msrvtt):
    annotations, videos = msrvtt
    (annotations / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id\nret0,msr9,video9\n")
    with pytest.raises(DataError, match=r"MSRVTT_JSFUSION_test\.csv: row 1: missing column\(s\) sentence"):
        read_msrvtt(annotations, videos, split="test")
    (annotations / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\nret0,msr9,video9\nret1,msr9,video9,a dog\n")
    with pytest.raises(DataError, match=r"MSRVTT_JSFUSION_test\.csv: row 2: expected 4 fields"):
        read_msrvtt(annotations, videos, split="test")
    assert read_msrvtt(annotations, videos, split="test", skip_unreadable=True).queries() == [("a dog", 0)]
    (annotations / "MSRVTT_JSFUSION_test.csv").unlink()
    with pytest.raises(DataError, match=r"MSRVTT_JSFUSION_test\.csv: annotation file not found"):
        read_msrvtt(annotations, videos, split="test")
    with pytest.raises(DataError, match="video folder not found"):
        read_msrvtt(annotations, videos / "missing", split="train")


# ---------------------------------------------------------------- MSVD

class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


@pytest.fixture
def msvd(tmp_path):
    annotations, videos = tmp_path / "msvd_data", tmp_path / "YouTubeClips"
    captions = {
        "-4wsuPCjDBc_5_15": [["a", "man", "is", "cooking"], ["someone", "cooks"], ["a", "chef", "cooks", "food"]],
        "1dfR0A_BXjw_590_600": [["a", "cat", "plays"], ["a", "kitten", "is", "playing"]],
        "zzit5b_-ukg_5_20": [["a", "woman", "dances"]],
    }
    annotations.mkdir()
    (annotations / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    (annotations / "train_list.txt").write_text("zzit5b_-ukg_5_20\n")
    (annotations / "val_list.txt").write_text("")
    (annotations / "test_list.txt").write_text("-4wsuPCjDBc_5_15\n1dfR0A_BXjw_590_600\n\n")
    touch(videos, "-4wsuPCjDBc_5_15.avi", "more/1dfR0A_BXjw_590_600.mp4", "zzit5b_-ukg_5_20.avi")
    return annotations, videos


def test_msvd_multi_caption_queries_grouped_per_video(msvd):
    split = read_msvd(*msvd, split="test")
    assert [v.video_id for v in split.videos] == ["-4wsuPCjDBc_5_15", "1dfR0A_BXjw_590_600"]
    assert split.videos[0].captions[0] == "a man is cooking"
    assert split.videos[1].path.name == "1dfR0A_BXjw_590_600.mp4"
    assert split.multi_caption
    assert [index for _, index in split.queries()] == [0, 0, 0, 1, 1]
    assert len(read_msvd(*msvd, split="train")) == 1
    with pytest.raises(DataError, match=r"val_list\.txt, .*raw-captions\.pkl: msvd split 'val' has no videos$"):
        read_msvd(*msvd, split="val")


def test_msvd_refuses_a_pickle_that_names_a_global(msvd, tmp_path):
    annotations, videos = msvd
    marker = tmp_path / "pwned"
    (annotations / "raw-captions.pkl").write_bytes(pickle.dumps({"x": RunsCode(marker)}))
    with pytest.raises(DataError, match=r"raw-captions\.pkl: refusing to load builtins\.exec"):
        read_msvd(annotations, videos, skip_unreadable=True)
    assert not marker.exists()
    (annotations / "raw-captions.pkl").write_bytes(pickle.dumps({"x": Path("/etc")}))
    with pytest.raises(DataError, match=r"refusing to load pathlib"):
        read_msvd(annotations, videos)
    (annotations / "raw-captions.pkl").write_bytes(pickle.dumps({"x": [["a"]]})[:-5])
    with pytest.raises(DataError, match="unreadable pickle"):
        read_msvd(annotations, videos)


def test_msvd_bad_token_and_unlisted_video(msvd):
    annotations, videos = msvd
    captions = pickle.loads((annotations / "raw-captions.pkl").read_bytes())
    captions["-4wsuPCjDBc_5_15"][1] = ["someone", 3]
    (annotations / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    (annotations / "test_list.txt").write_text("-4wsuPCjDBc_5_15\nnot_in_pickle\n1dfR0A_BXjw_590_600\n")
    with pytest.raises(DataError, match=r"raw-captions\.pkl: row -4wsuPCjDBc_5_15\[1\]: caption token"):
        read_msvd(annotations, videos)
    split = read_msvd(annotations, videos, skip_unreadable=True)
    assert [len(v.captions) for v in split.videos] == [2, 2]
    assert [(Path(i.path).name, i.row) for i in split.skipped.items] == [
        ("raw-captions.pkl", "-4wsuPCjDBc_5_15[1]"), ("test_list.txt", 2)]


# ---------------------------------------------------------------- LSMDC

LSMDC_CLIPS = ["0001_American_Beauty_00.00.51.926-00.00.54.129", "0001_American_Beauty_00.00.56.224-00.01.00.038",
               "1004_Juno_00.00.32.849-00.00.35.800"]


@pytest.fixture
def lsmdc(tmp_path):
    annotations, videos = tmp_path / "lsmdc", tmp_path / "avi"
    annotations.mkdir()
    rows = [f"{clip}\t00.00.51.926\t00.00.54.129\t00.00.51.000\t00.00.55.000\tSOMEONE looks \"up\" at {number}"
            for number, clip in enumerate(LSMDC_CLIPS)]
    (annotations / "LSMDC16_annos_training.csv").write_text("\n".join(rows[:2]) + "\n")
    (annotations / "LSMDC16_annos_val.csv").write_text(rows[2] + "\n")
    (annotations / "LSMDC16_challenge_1000_publictect.csv").write_text("\n".join(rows) + "\n")
    touch(videos, *(f"{clip.rsplit('_', 1)[0]}/{clip}.avi" for clip in LSMDC_CLIPS))
    return annotations, videos


def test_lsmdc_finds_clips_in_movie_folders(lsmdc):
    split = read_lsmdc(*lsmdc, split="test")
    assert [v.video_id for v in split.videos] == LSMDC_CLIPS
    assert split.videos[2].path.parent.name == "1004_Juno"
    assert split.videos[0].captions == ['SOMEONE looks "up" at 0']
    assert [len(read_lsmdc(*lsmdc, split=s)) for s in ("train", "val")] == [2, 1]


def test_lsmdc_short_row_and_missing_clip(lsmdc):
    annotations, videos = lsmdc
    path = annotations / "LSMDC16_annos_training.csv"
    path.write_text(path.read_text() + "0002_As_Good_As_It_Gets_00.00.01.000-00.00.02.000\tonly two fields\n"
                    + "0003_CASABLANCA_00.01.00.000-00.01.02.000\ta\tb\tc\td\tSomeone plays piano\n")
    with pytest.raises(DataError, match=r"LSMDC16_annos_training\.csv: row 3: expected 6 fields"):
        read_lsmdc(annotations, videos, split="train")
    split = read_lsmdc(annotations, videos, split="train", skip_unreadable=True)
    assert len(split) == 2
    assert [item.row for item in split.skipped.items] == [3, 4]
    assert "no video file named '0003_CASABLANCA" in split.skipped.items[1].problem


# ---------------------------------------------------------------- ActivityNet Captions

@pytest.fixture
def activitynet(tmp_path):
    annotations, videos = tmp_path / "anet", tmp_path / "videos"
    write_json(annotations / "val_1.json", {
        "v_uqiMw7tQ1Cc": {"duration": 55.15, "timestamps": [[0.28, 55.15], [13.79, 54.32]],
                          "sentences": ["A weight lifting tutorial is given.", "  The coach helps the guy."]},
        "v_bXdq2zI1Ms0": {"duration": 73.1, "timestamps": [[0, 10.5], [9.0, 80.0], [20.0, 30.0]],
                          "sentences": ["Three men are standing.", "They play.", "One leaves."]},
    })
    write_json(annotations / "val_ids.json", ["v_uqiMw7tQ1Cc", "v_bXdq2zI1Ms0"])
    write_json(annotations / "train.json", {"v_train0000001": {"duration": 5.0, "timestamps": [[0, 5]],
                                                                "sentences": ["A train sentence."]}})
    write_json(annotations / "train_ids.json", ["v_train0000001"])
    touch(videos, "uqiMw7tQ1Cc.mp4", "v_bXdq2zI1Ms0.mkv", "train0000001.mp4")
    return annotations, videos


def test_activitynet_paragraph_mode_handles_v_prefix_both_ways(activitynet):
    split = read_activitynet(*activitynet, split="val")
    first, second = split.videos
    assert (first.video_id, first.path.name) == ("v_uqiMw7tQ1Cc", "uqiMw7tQ1Cc.mp4")
    assert second.path.name == "v_bXdq2zI1Ms0.mkv"
    assert first.captions == ["A weight lifting tutorial is given. The coach helps the guy."]
    assert (first.start, first.end, first.duration) == (0.0, 55.15, 55.15)
    assert split.queries() == [(first.captions[0], 0), (second.captions[0], 1)]
    assert len(read_activitynet(*activitynet, split="train")) == 1


def test_activitynet_sentence_mode_times_and_clips(activitynet):
    split = read_activitynet(*activitynet, split="val", mode="sentence")
    second = split.videos[1]
    assert second.captions == ["Three men are standing.", "They play.", "One leaves."]
    assert second.caption_times == [(0.0, 10.5), (9.0, 73.1), (20.0, 30.0)]  # end clipped to the duration
    pairs = second.pairs()
    assert (pairs[1].start, pairs[1].end, pairs[1].caption) == (9.0, 73.1, "They play.")
    clips = split.clips()
    assert len(clips) == 5 and all(len(v.captions) == 1 for v in clips.videos)
    assert (clips.videos[3].video_id, clips.videos[3].start, clips.videos[3].end) == ("v_bXdq2zI1Ms0#1", 9.0, 73.1)


def test_activitynet_ids_without_prefix_and_bad_entries(activitynet):
    annotations, videos = activitynet
    write_json(annotations / "val_ids.json", ["uqiMw7tQ1Cc", "v_missing0001", "v_bXdq2zI1Ms0"])
    data = json.loads((annotations / "val_1.json").read_text())
    data["v_bXdq2zI1Ms0"]["timestamps"][2] = [30.0, 20.0]
    data["v_uqiMw7tQ1Cc"]["timestamps"][1] = [60.0, 70.0]
    write_json(annotations / "val_1.json", data)
    with pytest.raises(DataError, match=r"val_ids\.json: row \[1\]: video 'v_missing0001' has no entry in val_1\.json"):
        read_activitynet(annotations, videos, mode="paragraph")  # paragraphs do not read the timestamps
    split = read_activitynet(annotations, videos, mode="sentence", skip_unreadable=True)
    assert [v.video_id for v in split.videos] == ["v_uqiMw7tQ1Cc", "v_bXdq2zI1Ms0"]
    assert split.videos[0].captions == ["A weight lifting tutorial is given."]
    assert split.videos[1].captions == ["Three men are standing.", "They play."]
    assert [item.row for item in split.skipped.items] == ["v_uqiMw7tQ1Cc sentence 1", "[1]",
                                                          "v_bXdq2zI1Ms0 sentence 2"]
    assert "starts at or after the end of the 55.15 s video" in split.skipped.items[0].problem
    assert "starts after it ends" in split.skipped.items[2].problem
    data["v_uqiMw7tQ1Cc"]["sentences"].append("an extra sentence without a timestamp")
    write_json(annotations / "val_1.json", data)
    with pytest.raises(DataError, match=r"val_1\.json: row v_uqiMw7tQ1Cc: 3 sentences but 2 timestamps"):
        read_activitynet(annotations, videos, mode="sentence")


# ---------------------------------------------------------------- DiDeMo

DIDEMO_A = "10015567@N08_3655084291_d8b58466fa.mov"
DIDEMO_B = "12090392@N02_13482799053_87ef417396.avi"


@pytest.fixture
def didemo(tmp_path):
    annotations, videos = tmp_path / "didemo", tmp_path / "videos"
    moments = [
        {"annotation_id": 1, "video": DIDEMO_A, "description": "the dog jumps", "num_segments": 6,
         "times": [[2, 2], [2, 3], [2, 2], [1, 2]], "dl_link": "https://example.org"},
        {"annotation_id": 2, "video": DIDEMO_B, "description": "a car passes", "times": [[0, 5], [0, 5], [0, 4]]},
        {"annotation_id": 3, "video": DIDEMO_A, "description": "the dog sits down",
         "times": [[0, 0], [0, 2], [2, 2]]},
        {"annotation_id": 4, "video": "not_in_this_list.mp4", "description": "ignored", "times": [[0, 0]]},
    ]
    write_json(annotations / "test_data.json", moments)
    (annotations / "test_list.txt").write_text(f"{DIDEMO_A}\n{DIDEMO_B}\n")
    touch(videos, "10015567@N08_3655084291_d8b58466fa.mp4", DIDEMO_B)
    return annotations, videos


def test_didemo_consensus_rule():
    assert consensus_segments([(2, 2), (2, 3), (2, 2), (1, 2)]) == (2, 2)  # most votes
    assert consensus_segments([(0, 0), (0, 2), (2, 2)]) == (0, 2)  # one vote each: largest summed IoU
    assert consensus_segments([(1, 2), (0, 1), (0, 1), (1, 2)]) == (0, 1)  # full tie: earliest


def test_didemo_paragraph_and_sentence_modes(didemo):
    paragraphs = read_didemo(*didemo, split="test")
    assert [v.video_id for v in paragraphs.videos] == [DIDEMO_A, DIDEMO_B]
    assert paragraphs.videos[0].path.name == "10015567@N08_3655084291_d8b58466fa.mp4"
    assert paragraphs.videos[1].path.name == DIDEMO_B
    assert paragraphs.videos[0].captions == ["the dog jumps the dog sits down"]
    assert (paragraphs.videos[0].start, paragraphs.videos[0].end) == (0.0, 30.0)
    moments = read_didemo(*didemo, split="test", mode="sentence")
    assert moments.videos[0].caption_times == [(10.0, 15.0), (0.0, 15.0)]
    assert moments.videos[1].caption_times == [(0.0, 30.0)]
    assert [index for _, index in moments.queries()] == [0, 0, 1]


def test_didemo_bad_times_and_video_without_moments(didemo):
    annotations, videos = didemo
    moments = json.loads((annotations / "test_data.json").read_text())
    moments[2]["times"] = [[0, 6]]
    write_json(annotations / "test_data.json", moments)
    (annotations / "test_list.txt").write_text(f"{DIDEMO_A}\n{DIDEMO_B}\nnobody_annotated.mp4\n")
    with pytest.raises(DataError, match=r"test_data\.json: row \[2\]: times entry \[0, 6\]"):
        read_didemo(annotations, videos, mode="sentence")
    split = read_didemo(annotations, videos, mode="sentence", skip_unreadable=True)
    assert split.videos[0].captions == ["the dog jumps"]
    assert [(Path(i.path).name, i.row) for i in split.skipped.items] == [("test_data.json", "[2]"),
                                                                        ("test_list.txt", 3)]


# ---------------------------------------------------------------- VATEX

@pytest.fixture
def vatex(tmp_path):
    annotations, videos = tmp_path / "vatex", tmp_path / "videos"
    validation = [
        {"videoID": "Ptf_2VRj-V0_000122_000132", "enCap": [f"a person cooks {i}" for i in range(10)],
         "chCap": ["一个人在做饭"] * 10},
        {"videoID": "--07WQ2iBlw_000001_000011", "enCap": [f"a band plays {i}" for i in range(10)],
         "chCap": ["乐队演奏"] * 10},
    ]
    write_json(annotations / "vatex_validation_v1.0.json", validation)
    write_json(annotations / "vatex_training_v1.0.json",
               [{"videoID": "abcdefghijk_000010_000020", "enCap": ["a kid runs"] * 10, "chCap": []}])
    (annotations / "test_list.txt").write_text("Ptf_2VRj-V0_000122_000132\n--07WQ2iBlw_000001_000011\n")
    (annotations / "train_list.txt").write_text("abcdefghijk_000010_000020\n")
    touch(videos, "Ptf_2VRj-V0_000122_000132.mp4", "--07WQ2iBlw_000001_000011.mp4", "abcdefghijk_000010_000020.mp4")
    return annotations, videos


def test_vatex_ten_captions_per_video(vatex):
    split = read_vatex(*vatex, split="test")
    assert [len(v.captions) for v in split.videos] == [10, 10]
    assert split.videos[1].captions[3] == "a band plays 3"
    assert len(split.queries()) == 20 and split.queries()[10] == ("a band plays 0", 1)
    with pytest.warns(DataWarning, match=r"vatex_training_v1\.0\.json: 9 repeated \(video, caption\) pair\(s\) in "
                                         r"vatex split 'train', kept .*'a kid runs' at caption 0, caption 1"):
        assert read_vatex(*vatex, split="train").videos[0].captions == ["a kid runs"] * 10


def test_vatex_reads_hgr_dictionary_captions(vatex):
    annotations, videos = vatex
    write_json(annotations / "ref_captions.json", {"Ptf_2VRj-V0_000122_000132": ["one", "two"]})
    (annotations / "one.txt").write_text("Ptf_2VRj-V0_000122_000132\n")
    split = read_vatex(annotations, videos, split="test", caption_files=("ref_captions.json",), split_file="one.txt")
    assert split.videos[0].captions == ["one", "two"]


def test_vatex_bad_caption_is_skipped_alone(vatex):
    annotations, videos = vatex
    data = json.loads((annotations / "vatex_validation_v1.0.json").read_text())
    data[0]["enCap"][4] = None
    write_json(annotations / "vatex_validation_v1.0.json", data)
    with pytest.raises(DataError, match=r"vatex_validation_v1\.0\.json: row \[0\] caption 4: caption is not a string"):
        read_vatex(annotations, videos)
    split = read_vatex(annotations, videos, skip_unreadable=True)
    assert [len(v.captions) for v in split.videos] == [9, 10]


# ---------------------------------------------------------------- YouCook2

@pytest.fixture
def youcook2(tmp_path):
    annotations, videos = tmp_path / "youcook2", tmp_path / "raw_videos"
    write_json(annotations / "youcookii_annotations_trainval.json", {"database": {
        "GLd3aX16zBg": {"duration": 241.62, "subset": "training", "recipe_type": "113",
                        "video_url": "https://www.youtube.com/watch?v=GLd3aX16zBg",
                        "annotations": [{"segment": [90, 102], "id": 0, "sentence": "spread margarine on bread"},
                                        {"segment": [114, 127], "id": 1, "sentence": "place a slice of cheese"}]},
        "xHr8X2Wpmno": {"duration": 89.0, "subset": "validation", "recipe_type": "101",
                        "annotations": [{"segment": [10, 20], "id": 0, "sentence": "crack the eggs"},
                                        {"segment": [25, 95], "id": 1, "sentence": "whisk them"}]},
    }})
    touch(videos, "training/113/GLd3aX16zBg.mp4", "xHr8X2Wpmno.webm")
    return annotations, videos


def test_youcook2_segments_by_subset(youcook2):
    train = read_youcook2(*youcook2, split="train")
    assert [v.video_id for v in train.videos] == ["GLd3aX16zBg"]
    assert train.videos[0].caption_times == [(90.0, 102.0), (114.0, 127.0)]
    assert train.videos[0].path.parts[-3:] == ("training", "113", "GLd3aX16zBg.mp4")
    val = read_youcook2(*youcook2, split="val")
    assert val.videos[0].caption_times == [(10.0, 20.0), (25.0, 89.0)]
    paragraph = read_youcook2(*youcook2, split="val", mode="paragraph")
    assert paragraph.videos[0].captions == ["crack the eggs whisk them"]
    assert paragraph.videos[0].end == 89.0


def test_youcook2_missing_segment_and_missing_video(youcook2):
    annotations, videos = youcook2
    path = annotations / "youcookii_annotations_trainval.json"
    data = json.loads(path.read_text())
    del data["database"]["GLd3aX16zBg"]["annotations"][1]["segment"]
    write_json(path, data)
    (videos / "xHr8X2Wpmno.webm").unlink()
    with pytest.raises(DataError, match=r'row GLd3aX16zBg annotation 1: missing key "segment"'):
        read_youcook2(annotations, videos, split="train")
    with pytest.raises(DataError, match=r"youcookii_annotations_trainval\.json: row xHr8X2Wpmno: no video file"):
        read_youcook2(annotations, videos, split="val")
    with pytest.raises(DataError, match=r"youcook2 split 'val' has no videos \(1 unreadable item\(s\) skipped; the "
                                        r"first: .*row xHr8X2Wpmno: no video file"):
        read_youcook2(annotations, videos, split="val", skip_unreadable=True)
    assert read_youcook2(annotations, videos, split="train", skip_unreadable=True).videos[0].captions == \
        ["spread margarine on bread"]
