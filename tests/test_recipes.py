"""Every shipped recipe is well formed: its tables fit the reader, the method, the sampling and the trainer."""
import inspect
from dataclasses import fields
from pathlib import Path

import pytest

from petvr.backbone import get_model_config
from petvr.data.readers import READERS
from petvr.data.video import SamplingConfig
from petvr.methods import make_method_config
from petvr.training.recipe import load_recipe
from petvr.training.trainer import TrainConfig

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*/*.toml"))


def test_the_clip4clip_experiments_and_the_demo_have_recipes():
    names = {f"{path.parent.name}/{path.stem}" for path in RECIPES}
    assert {"msrvtt/clip4clip", "msvd/clip4clip", "lsmdc/clip4clip", "activitynet/clip4clip", "didemo/clip4clip",
            "synthetic/clip4clip_meanP"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_recipe_tables_are_accepted_by_what_reads_them(path):
    recipe = load_recipe(path)
    get_model_config(recipe["backbone"]["name"])
    method = dict(recipe["method"])
    make_method_config(method.pop("name"), **method)
    SamplingConfig.from_dict(recipe["data"].get("sampling", {}))
    train = {key: value for key, value in recipe["train"].items() if key != "output_dir"}
    unknown = set(train) - {f.name for f in fields(TrainConfig)}
    assert not unknown, f"{path}: unknown [train] keys {unknown}"
    TrainConfig(**train)
    reader = READERS[recipe["data"]["dataset"]]
    accepted = set(inspect.signature(reader).parameters)
    for which in ("train", "test"):
        unknown = set(recipe["data"][which]) - accepted
        assert not unknown, f"{path}: [data.{which}] keys {unknown} are not arguments of {reader.__name__}"


def test_clip4clip_recipes_carry_the_readme_settings():
    for path in RECIPES:
        if path.stem != "clip4clip":
            continue
        recipe = load_recipe(path)
        train = recipe["train"]
        assert (train["optimizer"], train["lr"], train["coef_lr"], train["batch_size"], train["epochs"]) == (
            "bertadam", 1e-4, 1e-3, 128, 5), path
        long_videos = path.parent.name in ("activitynet", "didemo")
        assert recipe["data"]["max_words"] == (64 if long_videos else 32), path
        assert recipe["data"]["sampling"]["max_frames"] == (64 if long_videos else 12), path
