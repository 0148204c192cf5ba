"""The editing run end to end on a tiny long-video world: warm-up, rounds, the teacher taken over only on
improvement, two methods through one code path, resume in the middle of the rounds, the files a run writes."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from petvr.editing import read_clip_rounds
from petvr.editing import run as editing_run
from petvr.editing.run import EditingRun
from petvr.synthetic.editing_world import cutaway_frames, generate_editing_world, render_with_cutaways
from petvr.training.recipe import load_recipe


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
    """Validation gives these t2v R@1 values in turn (one per epoch: each stage trains one epoch here)."""
    calls = iter(scores)

    def evaluate(self, model):
        value = next(calls)
        return {"t2v": {"R@1": value}, "v2t": {"R@1": value}}

    monkeypatch.setattr(EditingRun, "evaluate", evaluate)


def weights(folder):
    return load_file(str(folder / "adapter.safetensors"))


def test_the_world_cuts_away_between_events_and_its_initial_clips_miss(editing_world):
    from petvr.data.readers import read_activitynet
    from petvr.synthetic.videos import VideoSpec

    folder, _ = editing_world
    specs = json.loads((folder / "events.json").read_text())
    spec = VideoSpec.from_json(next(iter(specs.values())))
    frames = render_with_cutaways(spec)
    outside = cutaway_frames(spec)
    assert len(outside) > 0 and len(outside) + sum(e.end - e.start + 1 for e in spec.events) == spec.num_frames
    event = spec.events[0]
    assert not (frames[event.start] == frames[outside[0]]).all()
    split = read_activitynet(folder, folder / "videos", split="train", mode="sentence", timestamps="uniform")
    assert all(len(video.captions) >= 2 and video.caption_timestamps for video in split.videos)


def test_the_teacher_takes_the_students_weights_only_when_validation_improves(editing_world, tmp_path, monkeypatch):
    scripted_scores(monkeypatch, [10.0, 20.0, 15.0])  # warm-up, round 1 (better), round 2 (worse: stop)
    state = run(editing_world, tmp_path / "run", "editing.rounds=3")
    assert [entry["teacher_updated"] for entry in state["rounds"]] == [True, False]
    assert state["teacher"] == {"stage": "round-01", "score": 20.0}
    assert state["stopped"] == "no improvement in 1 round(s)"
    teacher, better, worse = (weights(tmp_path / "run" / name) for name in ("adapter", "round-01/adapter",
                                                                          "round-02/adapter"))
    assert all(torch.equal(teacher[key], better[key]) for key in teacher)
    assert any(not torch.equal(teacher[key], worse[key]) for key in teacher)
    rounds = read_clip_rounds(tmp_path / "run" / "clips.jsonl")
    assert sorted(rounds) == [0, 1, 2] and len(rounds[0]) == len(rounds[2])
    for row in rounds[2].values():
        assert row["start"] <= row["timestamp"] <= row["end"] and row["reference"] is not None


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


def test_a_run_resumed_in_the_middle_of_the_rounds_continues_from_the_same_clips(editing_world, tmp_path,
                                                                               monkeypatch):
    scripted_scores(monkeypatch, [10.0, 20.0, 30.0, 40.0])
    original = EditingRun.train_stage

    def interrupted(self, name, clips, epochs, start_from):
        if name == "round-02":
            raise KeyboardInterrupt
        return original(self, name, clips, epochs, start_from)

    monkeypatch.setattr(EditingRun, "train_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(editing_world, tmp_path / "run", "editing.rounds=2")
    written = (tmp_path / "run" / "clips.jsonl").read_text()
    assert sorted(read_clip_rounds(tmp_path / "run" / "clips.jsonl")) == [0, 1, 2]

    trained = []

    def recorded(self, name, clips, epochs, start_from):
        trained.append((name, [clip.span for clip in clips], start_from))
        return original(self, name, clips, epochs, start_from)

    monkeypatch.setattr(EditingRun, "train_stage", recorded)
    monkeypatch.setattr(editing_run, "edit_clips", lambda *args: pytest.fail("round 2's clips were edited again"))
    state = run(editing_world, tmp_path / "run", "editing.rounds=2")
    assert (tmp_path / "run" / "clips.jsonl").read_text() == written
    rows = read_clip_rounds(tmp_path / "run" / "clips.jsonl")[2]
    assert [name for name, _, _ in trained] == ["round-02"]
    assert trained[0][1] == [(row["start"], row["end"]) for row in rows.values()]
    assert trained[0][2] == tmp_path / "run" / "round-01" / "adapter"
    assert [entry["round"] for entry in state["rounds"]] == [1, 2] and state["teacher"]["stage"] == "round-02"
    assert state["stopped"] == "2 rounds done"
