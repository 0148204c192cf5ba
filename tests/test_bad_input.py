"""Bad input through the `petvr` command, one row per kind: each must end with a non-zero status, no traceback, and a
message naming the offending file or key. Recipes fail in ``validate_recipe`` before any work starts, so the table is
fast (no data is read, no model trained).

The same 62 rows run against petvr before this work (153ca3a; measured, not guessed): of the 45 recipe and --set rows,
16 clear errors, 4 tracebacks (an unknown [data.train] key, 'sampling = 3', 'train = 3', a missing dataset) and 25
accepted (not caught before work starts: the data-free run then stopped on the missing data folder; with data they
train, or fail after caching or after an epoch); 10 adapter and backbone rows could not run there (no
--backbone-checkpoint); the other 7 rows were clear errors. Now all 62 are clear errors; one names the value but not
the file: an adapter.json naming an unknown method (raised in petvr.methods).
"""
import json
import traceback
from pathlib import Path

import pytest
import torch

from petvr.backbone import create_backbone
from petvr.backbone.checkpoints import save_backbone
from petvr.cli import main
from petvr.errors import DataError

OUTCOMES = {"clear error": 62, "traceback": 0, "silently accepted": 0}  # every row below, as the tests check
BASE = 'base = "synthetic/clip4clip_meanP"\n'
WHOLE = ('[backbone]\nname = "petvr-tiny"\n[method]\nname = "zero_shot"\n[data]\ndataset = "msrvtt"\n'
         '[data.train]\nannotation_dir = "msrvtt"\nvideo_dir = "msrvtt/videos"\n'
         '[data.test]\nannotation_dir = "msrvtt"\nvideo_dir = "msrvtt/videos"\n[train]\nepochs = 1\n')


def recipe(text, name="recipe.toml"):
    """A row that trains the recipe ``text`` written to ``name``; the error must name ``name``."""
    return lambda folder: (_write(folder / name, text), ["train", str(folder / name)])[1]


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


def with_set(*assignments):
    """A row that trains the (valid) shipped demo recipe with ``--set`` overrides."""
    return lambda folder: ["train", "synthetic/clip4clip_meanP", *(arg for a in assignments for arg in ("--set", a))]


# (row id, build(folder) -> argv, what the message must contain)
RECIPE_ROWS = [
    ("missing recipe file", lambda folder: ["train", str(folder / "nowhere.toml")], "nowhere.toml"),
    ("unknown shipped recipe", lambda folder: ["train", "msrvtt/clip5clip"], "clip5clip"),
    ("bad TOML", recipe("[train\nlr = 1\n"), "not valid TOML"),
    ("not UTF-8", recipe(b"\xff\xfe[train]\n"), "recipe.toml"),
    ("missing base", recipe('base = "parent.toml"\n' + WHOLE), "parent.toml"),
    ("base cycle", recipe('base = "recipe.toml"\n'), "cycle"),
    ("base not a string", recipe("base = 3\n"), "base must be a string"),
    ("misspelled section", recipe(BASE + "[trian]\nlr = 1\n"), "'trian'"),
    ("misspelled sub-table", recipe(BASE + "[data.sampeling]\nmax_frames = 4\n"), "'sampeling'"),
    ("unknown [data] key", recipe(BASE + "[data]\nbatchsize = 8\n"), "'batchsize'"),
    ("unknown [train] key", recipe(BASE + "[train]\nlearning_rate = 1e-4\n"), "learning_rate"),
    ("unknown [backbone] key", recipe(BASE + "[backbone]\nchekpoint = 'x.pt'\n"), "'chekpoint'"),
    ("unknown [data.sampling] key", recipe(BASE + "[data.sampling]\nmax_frame = 4\n"), "max_frame"),
    ("unknown [data.train] key", recipe(BASE + "[data.train]\nsplitt = 'train'\n"), "'splitt'"),
    ("unknown [data.test] key", recipe(BASE + "[data.test]\nskip_unreadable = true\n"), "[data.test]"),
    ("unknown method option", recipe(BASE + "[method]\nsim_headr = 'meanP'\n"), "sim_headr"),
    ("unknown method", recipe(BASE + "[method]\nname = 'clip5clip'\n"), "clip5clip"),
    ("unknown dataset", recipe(BASE + "[data]\ndataset = 'msrvt'\n"), "msrvt"),
    ("unknown backbone", recipe(BASE + "[backbone]\nname = 'ViT-Z-99'\n"), "ViT-Z-99"),
    ("str for a float", recipe(BASE + "[train]\nlr = 'fast'\n"), "lr"),
    ("str for an int", recipe(BASE + "[data]\nmax_words = 'many'\n"), "max_words"),
    ("str for a bool", recipe(BASE + "[data]\nexpand_sentences = 'yes'\n"), "expand_sentences"),
    ("float for an int option", recipe(BASE + "[method]\nfreeze_layer_num = 1.5\n"), "freeze_layer_num"),
    ("value for a table", recipe(BASE.replace("\n", "") + "\n[data]\nsampling = 3\n"), "sampling"),
    ("section not a table", recipe("train = 3\n" + WHOLE.replace("[train]\nepochs = 1\n", "")), "train: must be a table"),
    ("zero epochs", recipe(BASE + "[train]\nepochs = 0\n"), "epochs"),
    ("negative batch", recipe(BASE + "[train]\nbatch_size = -1\n"), "batch_size"),
    ("zero eval batch", recipe(BASE + "[data]\nbatch_size_val = 0\n"), "batch_size_val"),
    ("zero lr", recipe(BASE + "[train]\nlr = 0\n"), "lr"),
    ("negative workers", recipe(BASE + "[data]\nnum_workers = -1\n"), "num_workers"),
    ("unknown tie rule", recipe(BASE + "[data]\nties = 'random'\n"), "ties"),
    ("zero frames", recipe(BASE + "[data.sampling]\nmax_frames = 0\n"), "max_frames"),
    ("unknown precision", recipe(BASE + "[train]\nprecision = 'fp8'\n"), "precision"),
    ("batch not divisible", recipe(BASE + "[train]\nbatch_size = 10\ngradient_accumulation_steps = 3\n"),
     "gradient_accumulation_steps"),
    ("image size vs backbone", recipe(BASE + "[data.sampling]\nimage_size = 224\n"), "image_size"),
    ("missing [data.test]", recipe(WHOLE.replace('[data.test]\nannotation_dir = "msrvtt"\n'
                                                 'video_dir = "msrvtt/videos"\n', "")), "[data.test]"),
    ("missing [backbone]", recipe(WHOLE.replace('[backbone]\nname = "petvr-tiny"\n', "")), "[backbone]"),
    ("missing dataset", recipe(WHOLE.replace('dataset = "msrvtt"\n', "")), "dataset"),
    ("missing reader argument", recipe(WHOLE.replace('video_dir = "msrvtt/videos"\n[train]', "[train]")), "video_dir"),
    ("--set without '='", with_set("train.lr"), "train.lr"),
    ("--set without a table", with_set("lr=1"), "lr=1"),
    ("--set unknown key", with_set("data.batchsize=8"), "batchsize"),
    ("--set into a value", with_set("train.lr.x=1"), "'lr' is not a table"),
    ("--set wrong type", with_set('train.epochs="two"'), "epochs"),
    ("--set out of range", with_set("data.batch_size_val=0"), "batch_size_val"),
]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A tiny zero-shot adapter folder and its backbone's checkpoint file."""
    from petvr.methods import RetrievalModel

    folder = tmp_path_factory.mktemp("adapter")
    backbone = create_backbone("petvr-tiny")
    checkpoint = save_backbone(backbone, folder / "tiny.safetensors")
    RetrievalModel(backbone, "clip4clip", sim_header="seqTransf").save_adapter(folder / "adapter")
    return folder / "adapter", checkpoint


def copied_adapter(change):
    """A row that evaluates a copy of the adapter after ``change(copy_folder)``, naming its own backbone file."""
    def build(folder, adapter):
        import shutil

        source, checkpoint = adapter
        shutil.copytree(source, folder / "adapter")
        change(folder / "adapter")
        return ["eval", str(folder / "adapter"), "--backbone-checkpoint", str(checkpoint)]
    return build


def with_backbone(make_file):
    """A row that evaluates the adapter with ``--backbone-checkpoint`` a file ``make_file(path)`` writes."""
    def build(folder, adapter):
        make_file(folder / "backbone.safetensors")
        return ["eval", str(adapter[0]), "--backbone-checkpoint", str(folder / "backbone.safetensors")]
    return build




def _reshaped_backbone(path):
    from safetensors.torch import save_file

    tensors = {key: value.clone() for key, value in create_backbone("petvr-tiny").state_dict().items()}
    key = next(key for key in tensors if key.endswith("attn.in_proj_weight") or key.endswith("mlp.c_fc.weight"))
    tensors[key] = tensors[key][:-1]  # one row short
    save_file(tensors, str(path))


def _edit_json(change):
    def edit(folder):
        description = json.loads((folder / "adapter.json").read_text())
        (folder / "adapter.json").write_text(json.dumps(change(description)))
    return edit


ADAPTER_ROWS = [
    ("missing adapter folder", lambda folder, adapter: ["eval", str(folder / "gone")], "gone"),
    ("folder without adapter.json", lambda folder, adapter: ["eval", str(folder)], "adapter.json"),
    ("broken adapter.json", copied_adapter(lambda f: (f / "adapter.json").write_text("{not json")), "adapter.json"),
    ("adapter.json of another format", copied_adapter(_edit_json(lambda d: {**d, "format": "peft"})), "adapter.json"),
    ("adapter.json without method", copied_adapter(_edit_json(lambda d: {k: v for k, v in d.items() if k != "method"})),
     "method"),
    ("adapter.json of an unknown method", copied_adapter(_edit_json(lambda d: {**d, "method": "clip5clip"})),
     "clip5clip"),
    ("truncated adapter.safetensors", copied_adapter(
        lambda f: (f / "adapter.safetensors").write_bytes((f / "adapter.safetensors").read_bytes()[:100])),
     "adapter.safetensors"),
    ("missing adapter.safetensors", copied_adapter(lambda f: (f / "adapter.safetensors").unlink()),
     "adapter.safetensors"),
    ("adapter without a recipe", copied_adapter(lambda f: None), "--recipe"),
    ("missing backbone checkpoint", lambda folder, adapter: ["eval", str(adapter[0]), "--backbone-checkpoint",
                                                             str(folder / "moved.safetensors")], "moved.safetensors"),
    ("garbage backbone checkpoint", with_backbone(lambda path: path.write_bytes(b"\x00garbage" * 64)),
     "backbone.safetensors"),
    ("backbone of wrong shapes", with_backbone(_reshaped_backbone), "backbone.safetensors"),
]

DATA_ROWS = [
    ("preview of a missing video", lambda folder: ["data", "preview", str(folder / "clip.mp4")], "clip.mp4"),
    ("preview of a file that is no video", lambda folder: ["data", "preview", str(_write(folder / "clip.mp4", "no"))],
     "clip.mp4"),
    ("data.root that does not exist", lambda folder: [
        "cache", "synthetic/clip4clip_meanP", "--set", f'data.root="{folder / "no-data"}"'], "no-data"),
    ("cache without cache_dir", lambda folder: ["cache", "synthetic/clip4clip_meanP", "--set", 'data.cache_dir=""'],
     "cache_dir"),
    ("compare --split not JSON", lambda folder: ["compare", "synthetic/zero_shot", "--split", "temporal={bad"],
     "--split"),
]


def run_cli(argv, capsys):
    """``(status, everything printed)``; an exception escaping ``main`` counts as a traceback."""
    try:
        main(argv)
        status, message = 0, ""
    except SystemExit as exit:
        status, message = (exit.code, "") if isinstance(exit.code, int) else (1, str(exit.code))
    except BaseException:  # noqa: BLE001 - what the user would see
        status, message = 1, traceback.format_exc()
    printed = capsys.readouterr()
    return status, printed.out + printed.err + message


def check(argv, expected, capsys):
    status, output = run_cli(argv, capsys)
    assert status != 0, f"accepted silently: {argv}\n{output}"
    assert "Traceback" not in output, output
    assert output.startswith("petvr: error: ") or "\npetvr: error: " in output, output
    assert expected in output, f"{expected!r} not in: {output}"


@pytest.mark.parametrize("build, expected", [row[1:] for row in RECIPE_ROWS], ids=[row[0] for row in RECIPE_ROWS])
def test_bad_recipe(build, expected, tmp_path, capsys):
    check(build(tmp_path), expected, capsys)


@pytest.mark.parametrize("build, expected", [row[1:] for row in ADAPTER_ROWS], ids=[row[0] for row in ADAPTER_ROWS])
def test_bad_adapter_or_backbone(build, expected, adapter, tmp_path, capsys):
    check(build(tmp_path, adapter), expected, capsys)


@pytest.mark.parametrize("build, expected", [row[1:] for row in DATA_ROWS], ids=[row[0] for row in DATA_ROWS])
def test_bad_data(build, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check(build(tmp_path), expected, capsys)


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="trian"):
        main(["--debug", "train", str(_write(tmp_path / "r.toml", BASE + "[trian]\nlr = 1\n"))])


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys):
    import petvr.training.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(petvr.training.run, "run_recipe", interrupted)
    with pytest.raises(SystemExit) as exit:
        main(["train", "synthetic/zero_shot"])
    assert exit.value.code == 130
    message = capsys.readouterr().err
    assert "interrupted" in message and "same command" in message and "--no-resume" in message


def test_a_worker_error_reaches_the_user_as_with_no_workers():
    from torch.utils.data import DataLoader, Dataset

    from petvr.data.dataset import errors_leave_workers_whole

    class Broken(Dataset):
        def __len__(self):
            return 2

        @errors_leave_workers_whole
        def __getitem__(self, index):
            if index == 1:
                raise DataError("videos/video3.mp4", "cannot decode", row=3)
            return torch.zeros(1)

    for workers in (0, 1):
        with pytest.raises(DataError) as caught:
            list(DataLoader(Broken(), batch_size=1, num_workers=workers))
        assert str(caught.value) == "videos/video3.mp4: row 3: cannot decode"
        assert caught.value.path == "videos/video3.mp4" and caught.value.row == 3


def test_a_relative_data_root_is_beside_the_recipe(tmp_path, monkeypatch):
    from petvr.training.recipe import data_root, load_recipe

    _write(tmp_path / "recipes" / "mine.toml", BASE + '[data]\nroot = "videos"\n')
    monkeypatch.chdir(tmp_path)
    assert data_root(load_recipe("recipes/mine.toml")) == tmp_path / "recipes" / "videos"
    monkeypatch.setenv("PETVR_DATA_DIR", str(tmp_path / "env"))
    assert data_root(load_recipe("synthetic/clip4clip_meanP", ['data.root=""'])) == tmp_path / "env"
    assert data_root(load_recipe("synthetic/clip4clip_meanP")) == Path("demo-run/world/studio")  # shipped: here
