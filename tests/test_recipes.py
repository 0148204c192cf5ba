"""Recipes: inheritance from a base, lookup by name, and every shipped recipe well formed (its tables fit the reader,
the method, the sampling and the trainer)."""
import inspect

import pytest

from petvr.backbone import get_model_config
from petvr.data.readers import READERS
from petvr.data.video import SamplingConfig
from petvr.methods import make_method_config
from petvr.training.recipe import find_recipe, list_recipes, load_recipe, merge_tables, shipped_recipes_dir
from petvr.training.trainer import TrainConfig
from petvr.typed_config import dataclass_from_dict

RECIPES = list_recipes()
SPLIT = {"annotation_dir": "msrvtt", "video_dir": "msrvtt/videos"}
MINIMAL = ('[backbone]\nname = "petvr-tiny"\n[method]\nname = "zero_shot"\n[data]\ndataset = "msrvtt"\n'
           '[data.train]\nannotation_dir = "msrvtt"\nvideo_dir = "msrvtt/videos"\n'
           '[data.test]\nannotation_dir = "msrvtt"\nvideo_dir = "msrvtt/videos"\n[train]\n')


# --- inheritance ------------------------------------------------------------------------------------------------------

def test_merge_tables_merges_tables_key_by_key_and_the_child_wins():
    base = {"data": {"max_words": 32, "sampling": {"max_frames": 12, "subsample": "uniform"}}, "betas": [1, 2]}
    child = {"data": {"sampling": {"max_frames": 64}, "dataset": "didemo"}, "betas": [3]}
    assert merge_tables(base, child) == {
        "data": {"max_words": 32, "sampling": {"max_frames": 64, "subsample": "uniform"}, "dataset": "didemo"},
        "betas": [3]}
    assert base["data"]["sampling"]["max_frames"] == 12  # the base is not changed


def test_a_table_naming_another_method_replaces_the_base_table_whole():
    base = {"method": {"name": "clip4clip", "freeze_layer_num": 6, "sim_header": "meanP"}}
    assert merge_tables(base, {"method": {"name": "zero_shot"}}) == {"method": {"name": "zero_shot"}}
    assert merge_tables(base, {"method": {"name": "clip4clip", "freeze_layer_num": 3}}) == {
        "method": {"name": "clip4clip", "freeze_layer_num": 3, "sim_header": "meanP"}}
    assert merge_tables(base, {"method": {"sim_header": "seqLSTM"}})["method"]["freeze_layer_num"] == 6


def test_a_recipe_builds_on_its_base_chains_included(tmp_path):
    (tmp_path / "shared").mkdir()
    root = MINIMAL + "lr = 1e-4\nepochs = 5\n[data.sampling]\nmax_frames = 12\n"
    (tmp_path / "shared" / "root.toml").write_text(root)
    (tmp_path / "middle.toml").write_text('base = "shared/root.toml"\n[train]\nepochs = 3\n')
    (tmp_path / "leaf").mkdir()
    (tmp_path / "leaf" / "run.toml").write_text('base = "../middle.toml"\n[data.sampling]\nmax_frames = 4\n')
    recipe = load_recipe(tmp_path / "leaf" / "run.toml", ["train.lr=1e-5"])
    assert recipe["train"] == {"lr": 1e-5, "epochs": 3}  # overrides apply after the merge
    assert recipe["data"] == {"dataset": "msrvtt", "sampling": {"max_frames": 4}, "train": SPLIT, "test": SPLIT}
    assert recipe["name"] == "run" and "base" not in recipe


def test_a_missing_base_names_both_files(tmp_path):
    (tmp_path / "child.toml").write_text('base = "../nowhere/parent.toml"\n' + MINIMAL)
    with pytest.raises(FileNotFoundError) as caught:
        load_recipe(tmp_path / "child.toml")
    message = str(caught.value)
    assert str(tmp_path / "child.toml") in message and str(tmp_path / "../nowhere/parent.toml") in message


def test_a_cycle_of_bases_is_refused_naming_the_files(tmp_path):
    (tmp_path / "a.toml").write_text('base = "b.toml"\n' + MINIMAL)
    (tmp_path / "b.toml").write_text('base = "a.toml"\n')
    with pytest.raises(ValueError, match="cycle: .*a.toml -> .*b.toml -> .*a.toml"):
        load_recipe(tmp_path / "a.toml")
    (tmp_path / "self.toml").write_text('base = "self.toml"\n')
    with pytest.raises(ValueError, match="cycle"):
        load_recipe(tmp_path / "self.toml")
    (tmp_path / "number.toml").write_text("base = 3\n")
    with pytest.raises(ValueError, match="number.toml: base must be a string"):
        load_recipe(tmp_path / "number.toml")


def test_a_base_may_be_a_shipped_recipe(tmp_path):
    (tmp_path / "mine.toml").write_text('base = "msrvtt/clip4clip"\n[data]\nroot = "/videos"\n')
    recipe = load_recipe(tmp_path / "mine.toml")
    assert recipe["data"]["root"] == "/videos" and recipe["data"]["dataset"] == "msrvtt"
    assert recipe["train"]["optimizer"] == "bertadam" and recipe["name"] == "mine"


# --- lookup -----------------------------------------------------------------------------------------------------------

def test_shipped_recipes_are_found_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_recipe("msrvtt/clip4clip") == shipped_recipes_dir() / "msrvtt" / "clip4clip.toml"
    assert find_recipe("msrvtt/clip4clip.toml") == find_recipe("msrvtt/clip4clip")
    (tmp_path / "msrvtt").mkdir()
    (tmp_path / "msrvtt" / "clip4clip.toml").write_text(MINIMAL)  # a file of that name here comes first
    assert find_recipe("msrvtt/clip4clip.toml") == tmp_path / "msrvtt" / "clip4clip.toml"
    with pytest.raises(FileNotFoundError, match="no shipped recipe by that name; shipped: activitynet/clip4clip"):
        find_recipe("msrvtt/clip5clip")


def test_base_recipes_are_not_listed_as_experiments():
    assert (shipped_recipes_dir() / "base" / "clip4clip.toml").is_file()
    assert not any(name.startswith("base/") for name in RECIPES)


# --- the shipped recipes ----------------------------------------------------------------------------------------------

def test_the_clip4clip_experiments_and_the_demo_have_recipes():
    assert {"msrvtt/clip4clip", "msvd/clip4clip", "lsmdc/clip4clip", "activitynet/clip4clip", "didemo/clip4clip",
            "synthetic/clip4clip_meanP"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_tables_are_accepted_by_what_reads_them(name):
    recipe = load_recipe(name)
    get_model_config(recipe["backbone"]["name"])
    method = dict(recipe["method"])
    make_method_config(method.pop("name"), **method)
    dataclass_from_dict(SamplingConfig, recipe["data"].get("sampling", {}), "[data.sampling]")
    dataclass_from_dict(TrainConfig, {k: v for k, v in recipe["train"].items() if k != "output_dir"}, "[train]")
    reader = READERS[recipe["data"]["dataset"]]
    accepted = set(inspect.signature(reader).parameters)
    for which in ("train", "test"):
        unknown = set(recipe["data"][which]) - accepted
        assert not unknown, f"{name}: [data.{which}] keys {unknown} are not arguments of {reader.__name__}"


def test_clip4clip_recipes_carry_the_readme_settings():
    for name in RECIPES:
        if not name.endswith("/clip4clip"):
            continue
        recipe = load_recipe(name)
        assert recipe["backbone"]["name"] == "ViT-B-32-quickgelu", name  # OpenAI's CLIP, trained with QuickGELU
        assert get_model_config(recipe["backbone"]["name"]).quick_gelu
        assert recipe["method"] == {"name": "clip4clip", "sim_header": "meanP", "freeze_layer_num": 0,
                                    "linear_patch": "2d", "cross_num_hidden_layers": 4}, name
        train = recipe["train"]
        assert (train["optimizer"], train["lr"], train["coef_lr"], train["batch_size"], train["epochs"],
                train["max_grad_norm"]) == ("bertadam", 1e-4, 1e-3, 128, 5, 1.0), name
        long_videos = name.split("/")[0] in ("activitynet", "didemo")
        assert recipe["data"]["max_words"] == (64 if long_videos else 32), name
        assert recipe["data"]["sampling"] == {"max_frames": 64 if long_videos else 12, "feature_framerate": 1,
                                              "subsample": "uniform"}, name


def test_each_dataset_states_its_own_differences():
    """What the datasets' recipes add to the shared base: their reader's tables, and their few own settings."""
    dataset_tables = {
        "msrvtt": ({"split": "train", "train_size": "9k"}, {"split": "test"}),
        "msvd": ({"split": "train"}, {"split": "test"}),
        "lsmdc": ({"split": "train"}, {"split": "test"}),
        "activitynet": ({"split": "train", "mode": "paragraph"}, {"split": "val", "mode": "paragraph"}),
        "didemo": ({"split": "train", "mode": "paragraph"}, {"split": "test", "mode": "paragraph"}),
    }
    for dataset, (train, test) in dataset_tables.items():
        data = load_recipe(f"{dataset}/clip4clip")["data"]
        paths = {"annotation_dir": dataset, "video_dir": f"{dataset}/videos"}
        assert (data["dataset"], data["train"], data["test"]) == (dataset, {**paths, **train}, {**paths, **test})
        assert data["num_workers"] == (2 if dataset == "msvd" else 4)
        assert (data["root"], data["cache_dir"], data["batch_size_val"]) == ("", "cache/frames", 16)


def test_the_demo_recipe_stands_alone():
    recipe = load_recipe("synthetic/clip4clip_meanP")
    assert recipe["backbone"] == {"name": "petvr-tiny"}
    assert recipe["method"] == {"name": "clip4clip", "sim_header": "meanP", "freeze_layer_num": 6}
    assert (recipe["train"]["optimizer"], recipe["train"]["lr"], recipe["data"]["sampling"]["max_frames"]) == (
        "adamw", 1e-3, 8)


def test_every_method_has_a_synthetic_recipe_so_the_results_table_covers_it():
    from petvr.methods import list_methods

    covered = {load_recipe(name)["method"]["name"] for name in RECIPES if name.startswith("synthetic/")}
    assert set(list_methods()) <= covered, sorted(set(list_methods()) - covered)
