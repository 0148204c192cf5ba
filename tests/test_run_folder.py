"""A run folder shows what the run learned and survives any fault: metrics.jsonl, curves.png, TensorBoard, the
per-epoch line; resuming past damaged checkpoints and killed writes; finished and extended runs; SIGKILL at chosen
points (this file is also the killed child: ``python tests/test_run_folder.py RUN_DIR DATA KILL``)."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from petvr.backbone import create_backbone
from petvr.evaluation.metrics import retrieval_metrics
from petvr.methods import RetrievalModel
from petvr.training.trainer import TrainConfig, Trainer

SETTINGS = {"epochs": 2, "batch_size": 4, "lr": 1e-3, "coef_lr": 1.0, "warmup": 0.25, "seed": 1, "optimizer": "adamw",
            "checkpoint_every_steps": 1}  # 8 items: 2 steps per epoch, a checkpoint after every step


def evaluate_items(items):
    def evaluate(model):
        token_ids = torch.stack([item["token_ids"] for item in items])
        frames, mask = torch.stack([item["frames"] for item in items]), torch.stack([item["frame_mask"] for item in items])
        with torch.no_grad():
            logits = model.similarity(model.encode_text(token_ids, token_ids != 0), model.encode_video(frames, mask), mask)
        return retrieval_metrics(logits)
    return evaluate


def make_trainer(run_dir, items, **overrides):
    torch.manual_seed(0)
    model = RetrievalModel(create_backbone("petvr-tiny"), "clip4clip", freeze_layer_num=3)
    return Trainer(model, items, TrainConfig(**{**SETTINGS, **overrides}), run_dir, evaluate=evaluate_items(items))


@pytest.fixture(scope="module")
def items(pattern_videos):
    data = pattern_videos(num_classes=4, samples_per_class=2)
    return [data[index] for index in range(len(data))]


@pytest.fixture(scope="module")
def stopped_run(items, tmp_path_factory):
    """A run stopped at step 3 (mid epoch 2): checkpoints step-2 and step-3."""
    run_dir = tmp_path_factory.mktemp("stopped") / "run"
    make_trainer(run_dir, items).train(stop_after_steps=3)
    return run_dir


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- what a run learned ------------------------------------------------------------------------------------------------

def test_metrics_curves_and_epoch_lines_are_written_and_stay_consistent_over_resume(items, stopped_run, tmp_path, capsys):
    run_dir = shutil.copytree(stopped_run, tmp_path / "run")
    with open(run_dir / "metrics.jsonl", "a") as file:  # lines a killed process wrote after its last checkpoint
        file.write(json.dumps({"step": 4, "epoch": 2, "loss": 9.0}) + "\n" + '{"step": 5, "ep')
    trainer = make_trainer(run_dir, items)
    assert trainer.resume() and trainer.step == 3
    result = trainer.train()
    lines = read_metrics(run_dir)
    assert lines == json.loads(json.dumps(result["history"]))
    steps = [line["step"] for line in lines if "loss" in line]
    assert steps == [1, 2, 3, 4]
    assert all(set(line["lr"]) == {"backbone"} for line in lines if "loss" in line)  # meanP: backbone weights only
    assert lines[0]["lr"]["backbone"] == 0.0 and lines[1]["lr"]["backbone"] > 0  # AdamW's warmup starts at zero
    assert [line["epoch"] for line in lines if "eval" in line] == [1, 2]
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(run_dir.glob(".*"))
    out = capsys.readouterr().out
    r1 = lines[-1]["eval"]["t2v"]["R@1"]
    assert f"epoch 2/2: loss {(lines[3]['loss'] + lines[4]['loss']) / 2:.4f}, t2v R@1 {r1:.1f}, v2t R@1" in out


def test_tensorboard_gets_the_loss_lr_and_recall(items, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_trainer(tmp_path / "run", items, epochs=1).train()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "lr/backbone", "eval/t2v/R@1"} <= set(tags)
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2]


# -- resuming through faults -------------------------------------------------------------------------------------------

def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    "training_state.safetensors": lambda run: _truncate(run / "checkpoints/step-00000003/training_state.safetensors"),
    "training_state.json": lambda run: _truncate(run / "checkpoints/step-00000003/training_state.json"),
    "adapter.safetensors": lambda run: _truncate(run / "checkpoints/step-00000003/adapter.safetensors"),
    "adapter.json": lambda run: (run / "checkpoints/step-00000003/adapter.json").unlink(),
    "latest.json": lambda run: (shutil.rmtree(run / "checkpoints/step-00000003"), _truncate(run / "latest.json")),
    "names nothing": lambda run: shutil.rmtree(run / "checkpoints/step-00000003"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_complete_one(items, stopped_run, tmp_path, capsys, damage):
    run_dir = shutil.copytree(stopped_run, tmp_path / "run")
    DAMAGE[damage](run_dir)
    trainer = make_trainer(run_dir, items)
    assert trainer.resume() and trainer.step == 2
    out = capsys.readouterr().out
    assert "step-00000002 (step 2), the newest complete checkpoint, because:" in out
    assert (damage if damage != "names nothing" else "names step-00000003, which does not exist") in out
    assert json.loads((run_dir / "latest.json").read_text())["checkpoint"] == "step-00000002"
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == (
        ["damaged-step-00000003", "step-00000002"] if (run_dir / "checkpoints/damaged-step-00000003").exists()
        else ["step-00000002"])


def test_no_complete_checkpoint_is_an_error_naming_each_problem(items, stopped_run, tmp_path):
    run_dir = shutil.copytree(stopped_run, tmp_path / "run")
    for step in (2, 3):
        _truncate(run_dir / f"checkpoints/step-0000000{step}/training_state.json")
    with pytest.raises(ValueError, match=r"no complete checkpoint.*step-00000003/training_state.json.*"
                                         r"step-00000002/training_state.json"):
        make_trainer(run_dir, items).resume()


def test_killed_writes_are_cleaned_up_on_the_next_start(items, stopped_run, tmp_path, capsys):
    run_dir = shutil.copytree(stopped_run, tmp_path / "run")
    (run_dir / "checkpoints/.step-00000004.k2j4h5g6.tmp").mkdir()
    (run_dir / ".latest.json.a1b2c3d4.tmp").write_text("{")
    shutil.copytree(run_dir / "best", run_dir / ".best.old")  # a finished swap: best/ is in place
    shutil.move(run_dir / "checkpoints/step-00000002", run_dir / ".adapter.old")  # a cut swap: adapter/ is missing
    trainer = make_trainer(run_dir, items)
    assert trainer.resume() and trainer.step == 3
    assert sorted(path.name for path in run_dir.glob(".*")) == []
    assert not list((run_dir / "checkpoints").glob(".*"))
    assert (run_dir / "adapter" / "adapter.json").exists()
    assert "restored" in capsys.readouterr().out


def test_the_previous_checkpoint_is_kept_until_the_new_one_is_complete(items, stopped_run, tmp_path, monkeypatch):
    run_dir = shutil.copytree(stopped_run, tmp_path / "run")
    trainer = make_trainer(run_dir, items, keep_checkpoints=1)
    assert trainer.resume()
    monkeypatch.setattr("petvr.training.trainer.atomic_write_json", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    trainer.step += 1
    with pytest.raises(KeyboardInterrupt):  # killed after the new folder, before latest.json moved to it
        trainer.save_checkpoint()
    monkeypatch.undo()
    assert {"step-00000003", "step-00000004"} <= {path.name for path in (run_dir / "checkpoints").iterdir()}
    trainer.save_checkpoint()
    assert [path.name for path in (run_dir / "checkpoints").iterdir()] == ["step-00000004"]


# -- finished and extended runs ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(items, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    trainer = make_trainer(run_dir, items, epochs=1)
    trainer.train()
    return run_dir, trainer.model.trainable_state_dict()


def test_a_finished_run_says_so_and_trains_nothing(items, finished_run, tmp_path, capsys):
    run_dir = shutil.copytree(finished_run[0], tmp_path / "run")
    trainer = make_trainer(run_dir, items, epochs=1)
    assert trainer.resume() and trainer.step == 2
    result = trainer.train()
    assert "run already finished at epoch 1/1; nothing to do — raise train.epochs to extend it" in capsys.readouterr().out
    assert trainer.step == 2 and len([h for h in result["history"] if "loss" in h]) == 2
    for name, weight in load_file(run_dir / "adapter" / "adapter.safetensors").items():
        assert torch.equal(weight, finished_run[1][name]), name


def test_extending_a_finished_run_recomputes_the_schedule_over_the_new_total(items, finished_run, tmp_path, capsys):
    run_dir = shutil.copytree(finished_run[0], tmp_path / "run")
    with pytest.raises(ValueError, match=r"lr: 0.001 -> 0.002\); a run can be extended to more epochs, nothing else"):
        make_trainer(run_dir, items, epochs=2, lr=2e-3).resume()
    extended = make_trainer(run_dir, items, epochs=2)
    assert extended.resume() and extended.step == 2
    assert "extending the run from 1 to 2 epochs at step 2" in capsys.readouterr().out
    planned = make_trainer(tmp_path / "planned", items, epochs=2)  # the schedule of a run planned 2 epochs long
    assert extended._learning_rates()["backbone"] == pytest.approx(1e-3 * planned.scheduler.lr_lambdas[0](2))
    assert extended._learning_rates()["backbone"] > 0  # the 1-epoch schedule had decayed to zero here
    extended.train()
    lines = read_metrics(run_dir)
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4]
    assert lines[-1]["epoch"] == 2 and "eval" in lines[-1]


def test_a_run_cannot_be_shortened(items, finished_run, tmp_path):
    run_dir = shutil.copytree(finished_run[0], tmp_path / "run")
    (run_dir / "checkpoints" / "step-00000002" / "training_state.json").write_text(
        (run_dir / "checkpoints" / "step-00000002" / "training_state.json").read_text().replace('"epochs": 1', '"epochs": 3'))
    with pytest.raises(ValueError, match=r"epochs: 3 -> 1"):
        make_trainer(run_dir, items, epochs=1).resume()


# -- SIGKILL at chosen points ------------------------------------------------------------------------------------------

def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(trainer, kill):
    """Make this process SIGKILL itself at ``kill``: ``step:N`` (after the N-th update, before its checkpoint),
    ``state:N`` (in checkpoint N's write, after the adapter files and the state's tensors, before its JSON),
    ``pointer:N`` (checkpoint N complete, latest.json not yet moved to it), ``prune:N`` (half-way through deleting an
    old checkpoint after checkpoint N), ``rename:NAME`` (a complete temporary folder about to become NAME)."""
    import petvr.training.trainer as trainer_module
    from petvr.training.state import split_state

    where, _, at = kill.partition(":")
    if where == "step":
        trainer.optimizer.register_step_post_hook(lambda *_: trainer.step + 1 == int(at) and _die())
    elif where == "state":
        real_save_state = trainer_module.save_state

        def save_state(state, folder, name):
            if state["step"] == int(at):
                save_file(split_state(state)[0], str(Path(folder) / f"{name}.safetensors"))
                _die()
            real_save_state(state, folder, name)

        trainer_module.save_state = save_state
    elif where == "pointer":
        real_write_json = trainer_module.atomic_write_json
        trainer_module.atomic_write_json = lambda path, data: (
            _die() if data.get("step") == int(at) else real_write_json(path, data))
    elif where == "prune":
        real_rmtree = shutil.rmtree

        def rmtree(path, *args, **kwargs):
            if trainer.step == int(at) and Path(path).name.startswith("step-"):
                next(Path(path).iterdir()).unlink()
                _die()
            real_rmtree(path, *args, **kwargs)

        shutil.rmtree = rmtree
    elif where == "rename":
        real_replace = os.replace

        def replace(source, target):
            if Path(target).name == at and Path(source).name.endswith(".tmp"):
                _die()
            real_replace(source, target)

        os.replace = replace


def _child(run_dir, data_path, kill):
    torch.set_num_threads(1)
    tensors = load_file(data_path)
    items = [{"video_id": f"video{index}", "token_ids": token_ids, "token_mask": token_ids != 0,
              "frames": tensors["frames"][index], "frame_mask": torch.ones(2, dtype=torch.bool)}
             for index, token_ids in enumerate(tensors["token_ids"])]
    trainer = make_trainer(run_dir, items)
    if kill != "none":
        _arm(trainer, kill)
    if trainer.resume():
        print(f"resumed from step {trainer.step}")
    trainer.train()


@pytest.fixture(scope="module")
def kill_setup(items, tmp_path_factory):
    """``(run(run_dir, kill) -> CompletedProcess, final weights of the uninterrupted run)``."""
    folder = tmp_path_factory.mktemp("kill")
    data_path = folder / "data.safetensors"
    save_file({"token_ids": torch.stack([item["token_ids"] for item in items]),
               "frames": torch.stack([item["frames"] for item in items])}, data_path)

    def run(run_dir, kill="none"):
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
        return subprocess.run([sys.executable, __file__, str(run_dir), str(data_path), kill], capture_output=True,
                              text=True, env=environment, timeout=300)

    reference = run(folder / "uninterrupted")
    assert reference.returncode == 0, reference.stderr
    return run, load_file(folder / "uninterrupted" / "adapter" / "adapter.safetensors")


def _killed_then_resumed_equals_uninterrupted(kill_setup, run_dir, kills):
    run, expected = kill_setup
    for kill in kills:
        killed = run(run_dir, kill)
        assert killed.returncode == -signal.SIGKILL, (kill, killed.returncode, killed.stderr[-2000:])
    finished = run(run_dir)
    assert finished.returncode == 0, finished.stderr[-2000:]
    weights = load_file(run_dir / "adapter" / "adapter.safetensors")
    assert weights.keys() == expected.keys()
    for name, weight in expected.items():
        assert torch.equal(weights[name], weight), name
    lines = read_metrics(run_dir)
    assert [line["step"] for line in lines if "loss" in line] == [1, 2, 3, 4]
    assert not list(run_dir.glob(".*")) and not list((run_dir / "checkpoints").glob(".*"))
    return finished.stdout


def test_killed_inside_a_checkpoint_write_and_mid_epoch_resumes_to_the_same_weights(kill_setup, tmp_path):
    out = _killed_then_resumed_equals_uninterrupted(kill_setup, tmp_path / "run", ["state:2", "step:3"])
    assert "resumed from step 2" in out


@pytest.mark.slow
@pytest.mark.parametrize("kills", [["pointer:1", "prune:3"], ["rename:step-00000003", "step:4"],
                                   ["rename:adapter"], ["state:4", "pointer:4"]])
def test_killed_anywhere_resumes_to_the_same_weights(kill_setup, tmp_path, kills):
    _killed_then_resumed_equals_uninterrupted(kill_setup, tmp_path / "run", kills)


if __name__ == "__main__":
    _child(*sys.argv[1:4])
