"""No code from a file runs on load: a code-running pickle planted in each place petvr reads one is refused.

The planted pickle opens (creates) a marker file when unpickled; every test asserts both the refusal, with an error
naming the file, and that the marker was not created. The run folder's training state is stored without pickle
(safetensors + JSON), and that format keeps every type of the state exactly.
"""
from __future__ import annotations

import json
import pickle
import random
import re
import shutil
import zipfile

import numpy as np
import pytest
import torch

from petvr.backbone import CheckpointError, create_backbone, load_backbone
from petvr.backbone.torchscript import read_torchscript_weights
from petvr.data.cache import FrameCache
from petvr.data.readers.common import read_id_list
from petvr.data.readers.msvd import read_msvd
from petvr.data.video import SamplingConfig
from petvr.errors import DataError
from petvr.methods import RetrievalModel
from petvr.training.state import join_state, split_state
from petvr.training.trainer import TrainConfig, Trainer

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*:FutureWarning")


class CreatesMarker:
    """Unpickling this calls ``open(marker, "w")``: the marker file exists afterwards iff code from the pickle ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "code-from-the-file-ran"


def planted_pickle(marker) -> bytes:
    return pickle.dumps({"weight": CreatesMarker(marker)})


def test_the_planted_pickle_runs_code_when_unpickled(marker):
    """The control: an ordinary unpickler runs the payload, so the refusals below are the loaders' doing."""
    pickle.loads(planted_pickle(marker))
    assert marker.exists()


# -- backbone checkpoints ----------------------------------------------------------------------------------------------

def torchscript_archive(path, data_pkl: bytes):
    """A traced Linear saved by ``torch.jit.save``, its pickled module tree replaced by ``data_pkl``."""
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.randn(1, 2)), str(path))
    replaced = path.with_suffix(".replaced")
    with zipfile.ZipFile(replaced, "w") as out, zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            out.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else archive.read(info))
    return replaced.replace(path)


def hugging_face_folder(folder, payload):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    torch.save(payload, folder / "pytorch_model.bin")
    return folder


CHECKPOINT_PLANTS = {  # kind -> (write(tmp_path, marker) -> path to load, the file the error names)
    "plain pickle": (lambda tmp, m: _write(tmp / "model.pt", planted_pickle(m)), "model.pt"),
    "torch.save": (lambda tmp, m: _save(tmp / "model.pt", {"weight": CreatesMarker(m)}), "model.pt"),
    "torch.save legacy": (lambda tmp, m: _save(tmp / "model.pt", {"weight": CreatesMarker(m)},
                                               _use_new_zipfile_serialization=False), "model.pt"),
    "Hugging Face .bin": (lambda tmp, m: hugging_face_folder(tmp / "hf", {"weight": CreatesMarker(m)}),
                          "pytorch_model.bin"),
    "TorchScript data.pkl": (lambda tmp, m: torchscript_archive(tmp / "ViT-B-32.pt", planted_pickle(m)),
                             "ViT-B-32.pt"),
}


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _save(path, payload, **kwargs):
    torch.save(payload, path, **kwargs)
    return path


@pytest.mark.parametrize("kind", sorted(CHECKPOINT_PLANTS))
def test_a_backbone_checkpoint_that_runs_code_is_refused(tmp_path, marker, kind):
    write, named = CHECKPOINT_PLANTS[kind]
    path = write(tmp_path, marker)
    with pytest.raises(CheckpointError, match=rf"{re.escape(named)}: refused"):
        load_backbone(checkpoint=path)
    assert not marker.exists()


class RunsCodeOnLoad(torch.nn.Module):
    """A TorchScript class whose ``__setstate__`` (TorchScript code kept in the archive) runs in ``torch.jit.load``."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))

    def forward(self, x):
        return x + self.weight

    @torch.jit.export
    def __getstate__(self):
        return self.weight, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]):
        print("CODE FROM THE ARCHIVE RAN")
        self.weight = state[0]
        self.training = state[1]


def test_torchscript_code_in_a_backbone_archive_is_not_run(tmp_path, capfd):
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(RunsCodeOnLoad()), str(path))
    torch.jit.load(str(path))
    assert "CODE FROM THE ARCHIVE RAN" in capfd.readouterr().out  # the control: torch.jit.load runs it
    with pytest.raises(CheckpointError, match=r"ViT-B-32.pt: .*RunsCodeOnLoad restores its state with its own code"):
        load_backbone(checkpoint=path)
    assert "CODE FROM THE ARCHIVE RAN" not in capfd.readouterr().out


def test_a_torchscript_archive_is_read_as_data_with_torch_jit_loads_parameters(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.GELU(), torch.nn.LayerNorm(4))
    model.register_buffer("attn_mask", torch.ones(2))  # a buffer, not a weight
    path = tmp_path / "model.pt"
    torch.jit.save(torch.jit.trace(model, torch.randn(2, 3)), str(path))
    weights = read_torchscript_weights(path)
    expected = dict(torch.jit.load(str(path)).named_parameters())
    assert weights.parameters.keys() == expected.keys() == {"0.weight", "0.bias", "2.weight", "2.bias"}
    for name, tensor in expected.items():
        assert torch.equal(weights.parameters[name], tensor), name
    assert weights.module_classes == {"": "Sequential", "0": "Linear", "1": "GELU", "2": "LayerNorm"}


# -- a training run folder ---------------------------------------------------------------------------------------------

def tiny_trainer(run_dir, optimizer="adamw"):
    torch.manual_seed(0)
    model = RetrievalModel(create_backbone("petvr-tiny"), "clip4clip", freeze_layer_num=3)
    generator = torch.Generator().manual_seed(0)
    dataset = []
    for index in range(4):
        token_ids = torch.tensor([49406, 1000 + index, 49407, 0])
        dataset.append({"video_id": f"v{index}", "token_ids": token_ids, "token_mask": token_ids != 0,
                        "frames": torch.randn(2, 3, 64, 64, generator=generator),
                        "frame_mask": torch.ones(2, dtype=torch.bool)})
    config = TrainConfig(epochs=2, batch_size=4, lr=1e-3, optimizer=optimizer)
    return Trainer(model, dataset, config, run_dir)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A run stopped after its first step (the end of epoch 1): ``(run_dir, RNG states at the stop, trainer)``."""
    run_dir = tmp_path_factory.mktemp("run")
    trainer = tiny_trainer(run_dir)
    trainer.train(stop_after_steps=1)
    return run_dir, (torch.get_rng_state(), np.random.get_state(), random.getstate()), trainer


def copy_run(run_folder, tmp_path):
    return shutil.copytree(run_folder[0], tmp_path / "run")


@pytest.mark.parametrize("planted", ["training_state.json", "training_state.safetensors", "adapter.safetensors",
                                     "training_state.pt"])
def test_a_run_folder_that_runs_code_is_refused_on_resume(run_folder, tmp_path, marker, planted):
    run_dir = copy_run(run_folder, tmp_path)
    (checkpoint,) = (run_dir / "checkpoints").iterdir()
    if planted == "training_state.pt":  # a folder from before the safe format: only the pickle
        for name in ("training_state.json", "training_state.safetensors"):
            (checkpoint / name).unlink()
    (checkpoint / planted).write_bytes(planted_pickle(marker))
    expected = "old pickle format" if planted.endswith(".pt") else "cannot read"
    with pytest.raises(ValueError, match=rf"{re.escape(planted)}: .*{expected}"):
        tiny_trainer(run_dir).resume()
    assert not marker.exists()


def assert_same(actual, expected, where="state"):
    """Equal values of the same types all the way down (a tuple is not a list, an int key not a str key)."""
    assert type(actual) is type(expected), (where, type(actual), type(expected))
    if isinstance(expected, torch.Tensor):
        assert actual.dtype == expected.dtype and torch.equal(actual, expected.cpu()), where
    elif isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype and np.array_equal(actual, expected), where
    elif isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_same(actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), where
        for index, (left, right) in enumerate(zip(actual, expected)):
            assert_same(left, right, f"{where}[{index}]")
    else:
        assert actual == expected, where


def test_resume_restores_adamw_its_schedule_and_the_rngs_exactly(run_folder, tmp_path):
    run_dir, (torch_rng, numpy_rng, python_rng), stopped = run_folder
    resumed = tiny_trainer(copy_run(run_folder, tmp_path))
    assert resumed.resume() and resumed.step == 1
    assert_same(resumed.optimizer.state_dict(), stopped.optimizer.state_dict())
    assert_same(resumed.scheduler.state_dict(), stopped.scheduler.state_dict())
    assert_same((torch.get_rng_state(), np.random.get_state(), random.getstate()), (torch_rng, numpy_rng, python_rng))
    assert not list((run_dir / "checkpoints").glob("*/*.pt"))


def test_the_state_format_keeps_every_type(tmp_path):
    state = {"tuple": (3, (1, 2.5), None), "int keys": {0: {"step": torch.tensor(3.0)}, 7: [True, "x"]},
             "array": np.arange(5, dtype=np.uint32), "$dollar key": {"$tensor": "not a reference"},
             "half": torch.randn(2, 3).half(), "python rng": random.getstate()}
    tensors, tree = split_state(state)
    assert_same(join_state(tensors, json.loads(json.dumps(tree))), state)
    with pytest.raises(TypeError, match=r"training state\.bad: cannot store a set"):
        split_state({"bad": {1}})


# -- data --------------------------------------------------------------------------------------------------------------

def test_an_msvd_captions_pickle_that_runs_code_is_refused(tmp_path, marker):
    annotations, videos = tmp_path / "msvd", tmp_path / "videos"
    annotations.mkdir(), videos.mkdir()
    (annotations / "test_list.txt").write_text("video1\n")
    (annotations / "raw-captions.pkl").write_bytes(planted_pickle(marker))
    with pytest.raises(DataError, match=r"raw-captions.pkl: refusing to load"):
        read_msvd(annotations, videos, "test")
    assert not marker.exists()


def test_an_npy_split_list_holding_pickled_objects_is_refused(tmp_path, marker):
    path = tmp_path / "test_list.npy"
    np.save(path, np.array([CreatesMarker(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"test_list.npy: not a plain array"):
        read_id_list(path)
    assert not marker.exists()


def test_a_frame_cache_entry_holding_pickled_objects_is_not_loaded(tmp_path, marker):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded in this test")
    cache, config = FrameCache(tmp_path / "cache"), SamplingConfig()
    stem = cache.entry_stem(video, config)
    stem.parent.mkdir(parents=True)
    np.save(stem.with_suffix(".npy"), np.array([CreatesMarker(marker)], dtype=object), allow_pickle=True)
    stem.with_suffix(".json").write_text(json.dumps({"format": 1, "timestamps": [0.0], "frame_indices": [0]}))
    assert cache.load_grid(video, config) is None  # treated as a missing entry: decoded again
    assert not marker.exists()
