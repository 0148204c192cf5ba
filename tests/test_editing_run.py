"""The editing run end to end on a tiny long-video world: warm-up, rounds, the teacher taken over only on
improvement, two methods through one code path, resume in the middle of the rounds, the files a run writes."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from petvr.editing import read_clip_rounds
from petvr.editing import run as editing_run
from petvr.editing.run import EditingRun, timestamped_videos
from petvr.synthetic.editing_world import LongVideoSpec, cutaway_frames, generate_editing_world, render_long_video
from petvr.training.recipe import load_recipe
from petvr.training.run import build_model


@pytest.fixture(scope="session")
def editing_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("editing")
    return generate_editing_world(root / "world", size="tiny"), root / "cache"


def recipe(editing_world, *overrides, name="editing/clip4clip_meanP"):
    folder, cache = editing_world
    return load_recipe(name, [f'data.root="{folder}"', f'data.cache_dir="{cache}"', "train.batch_size=4",
                              "train.epochs=1", "data.batch_size_val=8", "data.sampling.max_frames=4",
                              "editing.score_batch_size=8", *overrides])


def run(editing_world, run_dir, *overrides, name="editing/clip4clip_meanP", resume=True):
    return EditingRun(recipe(editing_world, *overrides, name=name), run_dir, progress=False).run(resume)


def scripted_scores(monkeypatch, scores):
    """Validation gives these R@K values in turn (one per epoch, each stage training one epoch here, and
    one for the starting weights when they are the first teacher)."""
    calls = iter(scores)

    def evaluate(self, model):
        value = next(calls)
        recalls = {key: value for key in ("R@1", "R@5", "R@10")}
        return {"t2v": recalls, "v2t": recalls}

    monkeypatch.setattr(EditingRun, "evaluate", evaluate)


def weights(folder):
    return load_file(str(folder / "adapter.safetensors"))


def test_the_world_cuts_away_between_scenes_and_its_initial_clips_miss(editing_world):
    from petvr.data.readers import read_activitynet
    from petvr.editing import EditingConfig, initial_clips, mean_iou
    from petvr.synthetic.videos import render_video

    folder, _ = editing_world
    specs = json.loads((folder / "events.json").read_text())
    spec = LongVideoSpec.from_json(next(iter(specs.values())))
    frames = render_long_video(spec)
    outside = cutaway_frames(spec)
    spans = spec.spans()
    assert len(outside) > 0 and len(outside) + sum(end - start + 1 for start, end in spans) == spec.num_frames
    assert all(previous_end < start for (_, previous_end), (start, _) in zip(spans, spans[1:]))
    for scene, (start, end) in zip(spec.scenes, spans):  # each scene is rendered in place, cut-aways elsewhere
        assert (frames[start:end + 1] == render_video(scene)).all()
    assert not (frames[spans[0][0]] == frames[outside[0]]).all()
    annotation = json.loads((folder / "train.json").read_text())
    first = annotation[next(iter(specs))]
    assert first["timestamps"] == [[start / spec.fps, (end + 1) / spec.fps] for start, end in spans]
    assert len(first["sentences"]) == len(spec.scenes)
    split = read_activitynet(folder, folder / "videos", split="train", mode="sentence", timestamps="uniform")
    assert all(len(video.captions) >= 2 and video.caption_timestamps for video in split.videos)
    videos = timestamped_videos(split, "the tiny world's train split")
    assert mean_iou(initial_clips(videos, EditingConfig(min_length=1.0, max_length=12.0))) < 0.8


def test_the_teacher_takes_the_students_weights_only_when_validation_improves(editing_world, tmp_path, monkeypatch):
    scripted_scores(monkeypatch, [10.0, 20.0, 15.0])  # warm-up, round 1 (better), round 2 (worse: stop)
    state = run(editing_world, tmp_path / "run", "editing.rounds=3", 'editing.first_teacher="warmup"')
    assert [entry["teacher_updated"] for entry in state["rounds"]] == [True, False]
    assert state["teacher"] == {"stage": "round-01", "score": 20.0}
    assert state["stopped"] == "no improvement in 1 round(s)"
    teacher, better, worse = (weights(tmp_path / "run" / name) for name in ("adapter", "round-01/adapter",
                                                                          "round-02/adapter"))
    assert all(torch.equal(teacher[key], better[key]) for key in teacher)
    assert any(not torch.equal(teacher[key], worse[key]) for key in teacher)
    # start/ holds the recipe's starting weights (where restarted students begin: the resume test checks that)
    start, warmup = weights(tmp_path / "run" / "start"), weights(tmp_path / "run" / "warmup" / "adapter")
    built = build_model(recipe(editing_world), "cpu").state_dict()
    assert start.keys() == warmup.keys() and all(torch.equal(start[key], built[key]) for key in start)
    assert any(not torch.equal(start[key], warmup[key]) for key in start)
    rounds = read_clip_rounds(tmp_path / "run" / "clips.jsonl")
    assert sorted(rounds) == [0, 1, 2] and len(rounds[0]) == len(rounds[2])
    for row in rounds[2].values():
        assert row["start"] <= row["timestamp"] <= row["end"] and row["reference"] is not None


def test_the_first_teacher_can_be_the_starting_weights(editing_world, tmp_path, monkeypatch):
    scripted_scores(monkeypatch, [10.0, 5.0, 20.0, 15.0])  # warm-up, the starting weights, round 1, round 2
    editors = []
    original = editing_run.edit_clips

    def recorded(clips, scorer, config):
        editors.append({key: value.detach().clone() for key, value in scorer.model.state_dict().items()})
        return original(clips, scorer, config)

    monkeypatch.setattr(editing_run, "edit_clips", recorded)
    state = run(editing_world, tmp_path / "run", "editing.rounds=2", 'editing.first_teacher="start"')
    start, round_one = weights(tmp_path / "run" / "start"), weights(tmp_path / "run" / "round-01" / "adapter")
    assert all(torch.equal(editors[0][key], start[key]) for key in start)  # round 1 edited with the starting weights
    assert all(torch.equal(editors[1][key], round_one[key]) for key in start)  # round 2 with round 1's student
    assert state["start"]["score"] == 5.0 and [entry["teacher_updated"] for entry in state["rounds"]] == [True, False]
    assert state["teacher"] == {"stage": "round-01", "score": 20.0}


@pytest.mark.parametrize("method", ["editing/clip4clip_meanP", "editing/adapter"])
def test_editing_works_for_different_methods_through_one_code_path(editing_world, tmp_path, method, monkeypatch):
    called = []
    original = editing_run.edit_clips
    monkeypatch.setattr(editing_run, "edit_clips", lambda *args: called.append(args[1]) or original(*args))
    if method == "editing/clip4clip_meanP":  # the command line: `petvr train` runs a recipe with [editing] this way
        from petvr.cli import main

        folder, cache = editing_world
        main(["train", method, "--output-dir", str(tmp_path / "run"), "--set", f'data.root="{folder}"',
              "--set", f'data.cache_dir="{cache}"', "--set", "train.batch_size=4", "--set", "train.epochs=1",
              "--set", "data.sampling.max_frames=4", "--set", "editing.rounds=1"])
        state = json.loads((tmp_path / "run" / "editing.json").read_text())
    else:
        state = run(editing_world, tmp_path / "run", "editing.rounds=1", name=method)
    assert len(state["rounds"]) == 1 and state["rounds"][0]["moved"] > 0
    assert state["warmup"]["mean_iou"] is not None and state["rounds"][0]["mean_iou"] is not None
    assert called[0].model.method_name == load_recipe(method)["method"]["name"]
    assert called[0].frames_independent  # both embed frames independently: the fast path, checked on the weights
    description = json.loads((tmp_path / "run" / "adapter" / "adapter.json").read_text())
    assert description["method"] == load_recipe(method)["method"]["name"] and "editing" in description["recipe"]
    assert (tmp_path / "run" / "timeline.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "warmup" / "metrics.jsonl").is_file()


@pytest.mark.parametrize("student, begins_at", [("restart", "start"), ("continue", "round-01/adapter")])
def test_a_run_resumed_in_the_middle_of_the_rounds_continues_from_the_same_clips(editing_world, tmp_path,
                                                                               monkeypatch, student, begins_at):
    scripted_scores(monkeypatch, [10.0, 20.0, 30.0, 40.0])
    original = EditingRun.train_stage

    def interrupted(self, name, clips, epochs, start_from):
        if name == "round-02":
            raise KeyboardInterrupt
        return original(self, name, clips, epochs, start_from)

    monkeypatch.setattr(EditingRun, "train_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(editing_world, tmp_path / "run", "editing.rounds=2", f'editing.student="{student}"')
    written = (tmp_path / "run" / "clips.jsonl").read_text()
    assert sorted(read_clip_rounds(tmp_path / "run" / "clips.jsonl")) == [0, 1, 2]

    trained = []

    def recorded(self, name, clips, epochs, start_from):
        trained.append((name, [clip.span for clip in clips], start_from))
        return original(self, name, clips, epochs, start_from)

    monkeypatch.setattr(EditingRun, "train_stage", recorded)
    monkeypatch.setattr(editing_run, "edit_clips", lambda *args: pytest.fail("round 2's clips were edited again"))
    state = run(editing_world, tmp_path / "run", "editing.rounds=2", f'editing.student="{student}"')
    assert (tmp_path / "run" / "clips.jsonl").read_text() == written
    rows = read_clip_rounds(tmp_path / "run" / "clips.jsonl")[2]
    assert [name for name, _, _ in trained] == ["round-02"]
    assert trained[0][1] == [(row["start"], row["end"]) for row in rows.values()]
    assert trained[0][2] == tmp_path / "run" / begins_at
    assert [entry["round"] for entry in state["rounds"]] == [1, 2] and state["teacher"]["stage"] == "round-02"
    assert state["stopped"] == "2 rounds done"
