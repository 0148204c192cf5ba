"""Timestamp supervision and clip editing without training: timestamps from the readers, initial clips, candidates,
the editing decision with a stub teacher, span reads from the whole-video frame cache, the teacher's fast path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from petvr.data.cache import FrameCache
from petvr.data.readers import read_activitynet, read_custom, read_didemo, read_youcook2
from petvr.data.video import SamplingConfig
from petvr.editing import Clip, EditingConfig, candidate_spans, edit_clips, initial_clips, mean_iou, temporal_iou
from petvr.errors import DataError, RecipeError


def touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


@pytest.fixture
def annotations(tmp_path):
    """ActivityNet Captions, YouCook2 and DiDeMo annotations of the same two videos (three and one captions)."""
    videos = touch(tmp_path / "videos", "v_a.mp4", "v_b.mp4", "a.mp4", "b.mp4", "a.mov", "b.mov")
    spans = {"a": [[0.0, 4.0], [6.0, 18.5], [20.0, 29.0]], "b": [[3.0, 9.0]]}
    (tmp_path / "train.json").write_text(json.dumps({f"v_{key}": {"duration": 30.0, "timestamps": value,
                                                                  "sentences": [f"{key} {n}" for n in range(len(value))]}
                                                     for key, value in spans.items()}))
    (tmp_path / "train_ids.json").write_text(json.dumps(["v_a", "v_b"]))
    database = {key: {"duration": 30.0, "subset": "training", "recipe_type": "101",
                      "annotations": [{"segment": span, "id": n, "sentence": f"{key} {n}"} for n, span in enumerate(value)]}
                for key, value in spans.items()}
    (tmp_path / "youcookii_annotations_trainval.json").write_text(json.dumps({"database": database}))
    moments = [{"video": f"{key}.mov", "description": f"{key} {n}", "times": [[n, n + 1]] * 4}
               for key, value in spans.items() for n in range(len(value))]
    (tmp_path / "train_data.json").write_text(json.dumps(moments))
    (tmp_path / "train_list.txt").write_text("a.mov\nb.mov\n")
    return tmp_path, videos


def read_all(folder, videos, **options):
    return {"activitynet": read_activitynet(folder, videos, split="train", mode="sentence", **options),
            "youcook2": read_youcook2(folder, videos, split="train", mode="sentence", **options),
            "didemo": read_didemo(folder, videos, split="train", mode="sentence", **options)}


@pytest.mark.parametrize("rule", ["uniform", "normal", "centre"])
def test_timestamps_lie_inside_their_spans_and_are_reproducible_from_the_seed(annotations, rule):
    spans = read_all(*annotations)
    first, again = read_all(*annotations, timestamps=rule), read_all(*annotations, timestamps=rule)
    other = read_all(*annotations, timestamps=rule, timestamp_seed=1)
    for name, split in first.items():
        for record, plain, repeat, reseeded in zip(split.videos, spans[name].videos, again[name].videos,
                                                   other[name].videos):
            assert record.caption_times is None  # no training path can read a span
            assert record.reference_times == plain.caption_times
            assert record.caption_timestamps == repeat.caption_timestamps
            for time, (start, end) in zip(record.caption_timestamps, record.reference_times):
                assert start <= time <= end
                if rule == "centre":
                    assert time == (start + end) / 2
            if rule != "centre":
                assert record.caption_timestamps != reseeded.caption_timestamps
    assert first["didemo"].videos[0].duration == 30.0


def test_timestamps_need_sentence_mode_and_a_known_rule(annotations):
    folder, videos = annotations
    with pytest.raises(ValueError, match="needs mode=\"sentence\""):
        read_activitynet(folder, videos, split="train", mode="paragraph", timestamps="uniform")
    with pytest.raises(ValueError, match="timestamps must be one of"):
        read_youcook2(folder, videos, split="train", timestamps="click")


def test_a_users_file_gives_timestamps_with_or_without_spans(tmp_path):
    videos = touch(tmp_path / "clips", "tom.mp4", "rex.mp4")
    rows = tmp_path / "rows.csv"
    rows.write_text("video,timestamp,caption,start,end\ntom,3.5,a cat jumps,2,5\ntom,9,the cat sleeps,8,12\n"
                    "rex,1,a dog barks,0,2\n")
    split = read_custom(rows, videos)
    tom = split.videos[0]
    assert (tom.caption_timestamps, tom.reference_times, tom.caption_times) == ([3.5, 9.0], [(2.0, 5.0), (8.0, 12.0)],
                                                                                None)
    lines = tmp_path / "rows.jsonl"
    lines.write_text('{"video": "tom.mp4", "timestamp": 4, "caption": "a cat jumps"}\n')
    record = read_custom(lines, videos).videos[0]
    assert (record.caption_timestamps, record.reference_times) == ([4.0], None)
    lines.write_text('{"video": "tom", "timestamp": 4, "caption": "a"}\n{"video": "tom", "caption": "b"}\n')
    with pytest.raises(DataError, match="rows with and without a timestamp"):
        read_custom(lines, videos)
    lines.write_text('{"video": "tom", "timestamp": 7, "caption": "a", "start": 1, "end": 2}\n')
    with pytest.raises(DataError, match="outside its span"):
        read_custom(lines, videos)
    lines.write_text('{"video": "tom", "timestamp": "soon", "caption": "a"}\n')
    with pytest.raises(DataError, match="timestamp is not a number"):
        read_custom(lines, videos)


# --- initial clips ----------------------------------------------------------------------------------------------------

def video(timestamps, duration=30.0, references=None, video_id="v"):
    return (video_id, Path(f"{video_id}.mp4"), duration, [f"caption {n}" for n in range(len(timestamps))],
            list(timestamps), references)


def test_midpoint_clips_at_the_first_and_last_timestamp_and_out_of_order_captions():
    config = EditingConfig(min_length=1.0, max_length=100.0)
    clips = initial_clips([video([10.0, 2.0, 20.0])], config)  # captions not in time order
    assert [clip.span for clip in clips] == [(6.0, 15.0), (0.0, 6.0), (15.0, 30.0)]
    capped = initial_clips([video([10.0, 2.0, 20.0])], EditingConfig(min_length=1.0, max_length=8.0))
    assert [clip.span for clip in capped] == [(6.0, 14.0), (0.0, 6.0), (16.0, 24.0)]


def test_a_single_caption_video_and_the_length_limits():
    whole = initial_clips([video([12.0])], EditingConfig(min_length=1.0, max_length=100.0))
    assert whole[0].span == (0.0, 30.0)
    capped = initial_clips([video([3.0])], EditingConfig(min_length=1.0, max_length=10.0))
    assert capped[0].span == (0.0, 8.0)  # cut to max_length around the timestamp, then to the video
    close = initial_clips([video([5.0, 5.4], duration=5.6)], EditingConfig(min_length=2.0, max_length=10.0))
    assert [value for clip in close for value in clip.span] == pytest.approx([0.0, 5.2, 3.6, 5.6])  # grown, shifted in
    short_video = initial_clips([video([0.5], duration=1.0)], EditingConfig(min_length=2.0))
    assert short_video[0].span == (0.0, 1.0)


def test_fixed_width_clips_stay_inside_the_video():
    config = EditingConfig(initial="fixed", fixed_width=6.0, min_length=1.0)
    clips = initial_clips([video([1.0, 15.0, 29.0])], config)
    assert [clip.span for clip in clips] == [(0.0, 6.0), (12.0, 18.0), (24.0, 30.0)]


# --- candidates and editing -------------------------------------------------------------------------------------------

def test_every_candidate_contains_the_timestamp_and_keeps_the_limits():
    config = EditingConfig(min_length=2.0, max_length=10.0, step=1.0, num_steps=3)
    rng = np.random.default_rng(0)
    for _ in range(200):
        duration = float(rng.uniform(3, 40))
        time = float(rng.uniform(0, duration))
        start = float(rng.uniform(max(0.0, time - 5), time))
        end = float(min(duration, max(start + 2.0, rng.uniform(time, time + 5))))
        clip = Clip("v", Path("v.mp4"), 0, "c", time, duration, start, end)
        spans = candidate_spans(clip, config)
        assert spans[0] == clip.span and len(set(spans)) == len(spans)
        for span_start, span_end in spans[1:]:
            assert 0 <= span_start <= time <= span_end <= duration
            assert 2.0 - 1e-6 <= span_end - span_start <= 10.0 + 1e-6
    clip = Clip("v", Path("v.mp4"), 0, "c", 10.0, 30.0, 8.0, 12.0)
    spans = candidate_spans(clip, config)
    assert {(7.0, 12.0), (9.0, 12.0), (8.0, 11.0), (8.0, 13.0), (7.0, 13.0), (9.0, 11.0), (5.0, 12.0)} <= set(spans)
    assert (11.0, 12.0) not in spans  # would leave out the timestamp... and be too short


def reference_scorer(clips, candidates):
    """A stub teacher that knows the ground truth: a candidate's score is its IoU with the reference span."""
    return [[temporal_iou(span, clip.reference) for span in spans] for clip, spans in zip(clips, candidates)]


def test_a_teacher_that_prefers_the_ground_truth_moves_the_clips_towards_it():
    rng = np.random.default_rng(1)
    videos = []
    for number in range(8):
        starts = np.cumsum(rng.uniform(2, 9, size=4))
        references = [(float(s), float(s + rng.uniform(1, 6))) for s in starts]
        stamps = [float(rng.uniform(s, e)) for s, e in references]
        videos.append(video(stamps, duration=references[-1][1] + 3, references=references, video_id=f"v{number}"))
    config = EditingConfig(min_length=1.0, max_length=12.0, step=0.5, num_steps=2)
    clips = initial_clips(videos, config)
    history = [mean_iou(clips)]
    for _ in range(8):
        edits = edit_clips(clips, reference_scorer, config)
        for edit, clip in zip(edits, clips):
            assert edit.clip.start <= clip.timestamp <= edit.clip.end
            assert temporal_iou(edit.clip.span, clip.reference) >= temporal_iou(clip.span, clip.reference)
        clips = [edit.clip for edit in edits]
        history.append(mean_iou(clips))
    assert history[0] < 0.6 and history[-1] > 0.9, history
    assert all(later >= earlier for earlier, later in zip(history, history[1:]))


def test_the_margin_keeps_a_clip_that_is_only_slightly_beaten():
    clip = Clip("v", Path("v.mp4"), 0, "c", 10.0, 30.0, 8.0, 12.0, (8.0, 13.0))
    config = EditingConfig(step=1.0, num_steps=1, margin=0.5)
    assert edit_clips([clip], reference_scorer, config)[0].clip.span == (8.0, 12.0)
    assert edit_clips([clip], reference_scorer, EditingConfig(step=1.0, num_steps=1))[0].clip.span == (8.0, 13.0)


def test_the_editing_table_is_checked(tmp_path):
    from petvr.training.recipe import load_recipe

    with pytest.raises(RecipeError, match=r"\[editing\].*min_length <= max_length"):
        load_recipe("editing/clip4clip_meanP", ["editing.min_length=20.0"])
    with pytest.raises(RecipeError, match=r"\[editing\] has unknown key.*'steps'.*did you mean 'step'"):
        load_recipe("editing/clip4clip_meanP", ["editing.steps=3"])
    with pytest.raises(RecipeError, match=r"\[editing\].*first_teacher must be one of.*'teacher'"):
        load_recipe("editing/clip4clip_meanP", ['editing.first_teacher="teacher"'])
    with pytest.raises(RecipeError, match=r"\[editing\].*student must be one of.*'fresh'"):
        load_recipe("editing/clip4clip_meanP", ['editing.student="fresh"'])
    with pytest.raises(RecipeError, match=r"\[editing\].*epochs_per_round must be at least 1"):
        load_recipe("editing/clip4clip_meanP", ["editing.epochs_per_round=0"])
    assert load_recipe("editing/adapter")["editing"]["rounds"] == 3


# --- frames -----------------------------------------------------------------------------------------------------------

def test_the_cache_serves_any_span_from_one_decode(write_numbered_video, frame_numbers, tmp_path, monkeypatch):
    from petvr.data import video as video_module

    path = write_numbered_video(tmp_path / "numbers.mp4", 100, fps=10)  # 10 s
    config = SamplingConfig(max_frames=4, feature_framerate=2, image_size=32)
    cache = FrameCache(tmp_path / "cache")
    decodes = []
    original = video_module.decode_grid
    monkeypatch.setattr(video_module, "decode_grid", lambda *args, **kw: decodes.append(args) or original(*args, **kw))
    for start, end in [(0.0, 10.0), (2.0, 4.0), (2.5, 3.5), (7.2, 7.3), (6.0, 9.9)]:
        sample = cache.get_span(path, config, start, end)
        times = sample.timestamps[sample.frame_mask].numpy()
        if end - start >= 0.5:
            assert (times >= start - 1e-6).all() and (times <= end + 1e-6).all()
        else:
            assert times.tolist() == [7.0]  # nearest grid frame to the span's middle
    assert len(decodes) == 1  # the whole video, once


def test_the_teachers_gathered_frames_score_as_whole_clips(tmp_path, write_numbered_video):
    from petvr.backbone import create_backbone
    from petvr.backbone.tokenizer import Tokenizer
    from petvr.data.dataset import FrameSource
    from petvr.editing import TeacherScorer
    from petvr.methods import RetrievalModel

    path = write_numbered_video(tmp_path / "numbers.mp4", 120, fps=10, width=64, height=64)
    torch.manual_seed(0)
    model = RetrievalModel(create_backbone("petvr-tiny"), "clip4clip", sim_header="seqTransf").eval()
    frames = FrameSource(SamplingConfig(max_frames=4, feature_framerate=2, image_size=64), tmp_path / "cache",
                         whole_video=True)
    scorer = TeacherScorer(model, frames, Tokenizer(16), batch_size=4, progress=False)
    clips = [Clip("n", path, 0, "a grey square", 5.0, 12.0, 3.0, 7.0), Clip("n", path, 1, "white", 9.0, 12.0, 8.0, 11.5)]
    config = EditingConfig(min_length=1.0, step=0.5, num_steps=2)
    candidates = [candidate_spans(clip, config) for clip in clips]
    fast = scorer(clips, candidates)
    assert scorer.frames_independent
    scorer._check_frames_independent = lambda grid: False
    slow = scorer(clips, candidates)
    assert not scorer.frames_independent
    for fast_scores, slow_scores in zip(fast, slow):
        assert fast_scores == pytest.approx(slow_scores, abs=1e-5)
    assert len({round(value, 6) for value in fast[0]}) > 1  # the candidates differ


def test_the_dataset_recipes_train_from_timestamps_and_validate_on_annotated_clips():
    from petvr.training.recipe import list_recipes, load_recipe

    names = [name for name in list_recipes() if "editing" in name]
    assert {"youcook2/editing_clip4clip", "didemo/editing_clip4clip", "activitynet/editing_clip4clip",
            "editing/clip4clip_meanP", "editing/adapter"} <= set(names)
    for name in names:
        recipe = load_recipe(name)
        train, test = recipe["data"]["train"], recipe["data"]["test"]
        assert train["timestamps"] == "uniform" and train["mode"] == test["mode"] == "sentence", name
        assert "timestamps" not in test and "editing" in recipe, name
    assert not any(name.startswith("synthetic/") for name in names)  # not rows of the methods table
