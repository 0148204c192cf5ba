"""Recipes: a TOML file holding a whole experiment (backbone, data, method, training), read with ``tomllib``.

``load_recipe("msrvtt/clip4clip", overrides=["train.lr=1e-5", "method.sim_header=\\"seqTransf\\""])`` returns a
plain dict (``petvr.training.run.run_recipe`` trains and evaluates it). A recipe is a file path or the name of a recipe
shipped in ``petvr/recipes/`` (``<dataset>/<method>``). Relative data paths resolve against ``data.root`` (default
``$PETVR_DATA_DIR``, else ``data``), so one recipe serves every machine.

    base        optional: a recipe this one builds on (a path relative to this file, or a shipped recipe's name);
                its tables are merged key by key under this file's, bases of bases too
    [backbone]  name, checkpoint (optional)
    [method]    name plus the method's config fields
    [data]      dataset, root, expand_sentences, max_words, cache_dir, num_workers, batch_size_val, skip_unreadable,
                ties (the metrics' tie rule: "stable", "pessimistic" or "official", CLIP4Clip's numbers)
    [data.sampling]   SamplingConfig fields (image_size defaults to the backbone's)
    [data.train] / [data.test]   keyword arguments of the dataset's reader (see ``petvr.data.readers``)
    [train]     TrainConfig fields plus output_dir
"""
from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from ..backbone.checkpoints import find_checkpoint
from ..data.video import SamplingConfig
from ..typed_config import dataclass_from_dict

DATA_DIR_ENV = "PETVR_DATA_DIR"
PATH_KEYS = ("annotation_dir", "video_dir", "annotations")  # other file arguments are relative to annotation_dir
BASE_KEY = "base"
BASE_ONLY_FOLDER = "base"  # shipped recipes in petvr/recipes/base/ are bases, not experiments of their own


def _parse_value(text: str) -> Any:
    """A TOML value (``1e-5``, ``true``, ``"seqTransf"``, ``[1, 2]``); bare words are taken as strings."""
    try:
        return tomllib.loads(f"value = {text}")["value"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(recipe: dict, assignment: str) -> None:
    """``"train.lr=1e-5"`` -> ``recipe["train"]["lr"] = 1e-5`` (creating tables as needed)."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} is not of the form section.key=value")
    dotted, text = assignment.split("=", 1)
    *tables, key = dotted.strip().split(".")
    node = recipe
    for table in tables:
        node = node.setdefault(table, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {assignment!r}: {table!r} is not a table")
    node[key] = _parse_value(text.strip())


def shipped_recipes_dir() -> Path:
    """The recipes installed with petvr: ``petvr/recipes/<dataset>/<method>.toml``."""
    return Path(str(resources.files("petvr") / "recipes"))


def list_recipes() -> list[str]:
    """Names of the shipped experiments, e.g. ``["activitynet/clip4clip", ..., "synthetic/clip4clip_meanP"]``."""
    folder = shipped_recipes_dir()
    return sorted(f"{path.parent.name}/{path.stem}" for path in folder.glob("*/*.toml")
                  if path.parent.name != BASE_ONLY_FOLDER)


def find_recipe(reference: str | Path, relative_to: Path | None = None) -> Path:
    """A recipe file: ``reference`` as a path (relative to ``relative_to``, default the working directory), else the
    shipped recipe of that name (``msrvtt/clip4clip``, with or without ``.toml``)."""
    reference = Path(reference).expanduser()
    candidate = (relative_to or Path.cwd()) / reference
    if candidate.is_file():
        return candidate
    shipped = shipped_recipes_dir() / reference.with_suffix(".toml")
    if shipped.is_file():
        return shipped
    raise FileNotFoundError(f"{reference}: recipe not found (no file {candidate}, and no shipped recipe by that name; "
                            f"shipped: {', '.join(list_recipes())})")


def merge_tables(base: dict, override: dict) -> dict:
    """``override`` over a copy of ``base``: tables are merged key by key, anything else in ``override`` wins.

    A table naming another ``name`` than its base's (a ``[method]`` with another method) replaces the base's table
    whole: the base's options belong to the base's method."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        inherited = merged.get(key)
        if (isinstance(value, dict) and isinstance(inherited, dict)
                and value.get("name", inherited.get("name")) == inherited.get("name")):
            merged[key] = merge_tables(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _read_toml(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML ({error})") from error


def _read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The recipe at ``path`` merged over its base, the base over its own, and so on."""
    chain = chain + (path.resolve(),)
    recipe = _read_toml(path)
    base = recipe.pop(BASE_KEY, None)
    if base is None:
        return recipe
    if not isinstance(base, str):
        raise ValueError(f"{path}: base must be a string (a recipe path relative to this file, or a shipped recipe's "
                         f"name), found {base!r}")
    try:
        parent = find_recipe(base, relative_to=path.parent)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{path}: its base {error}") from None
    if parent.resolve() in chain:
        loop = " -> ".join(str(link) for link in chain + (parent.resolve(),))
        raise ValueError(f"{path}: the recipe's bases form a cycle: {loop}")
    return merge_tables(_read_with_bases(parent, chain), recipe)


def load_recipe(reference: str | Path, overrides: list[str] = ()) -> dict:
    """The recipe at ``reference`` (a path or a shipped recipe's name) with its bases merged in, then ``overrides``
    (``"section.key=value"``) applied; ``name`` defaults to the file's stem."""
    path = find_recipe(reference)
    recipe = _read_with_bases(path)
    for assignment in overrides:
        apply_override(recipe, assignment)
    for section in ("backbone", "method", "data", "train"):
        if section not in recipe:
            raise ValueError(f"{path}: the recipe has no [{section}] table")
    recipe.setdefault("name", path.stem)
    return recipe


def reader_arguments(recipe: dict, which: str) -> dict:
    """The ``[data.<which>]`` table as keyword arguments of the dataset's reader, its paths under ``data_root``."""
    arguments = dict(recipe["data"][which])
    for key in PATH_KEYS:
        if isinstance(arguments.get(key), str):
            arguments[key] = data_root(recipe) / arguments[key]
    return arguments


def with_absolute_paths(recipe: dict) -> dict:
    """A copy with ``data.root``, ``data.cache_dir`` and ``backbone.checkpoint`` made absolute (a bare checkpoint
    file name is found where ``load_backbone`` finds it: in the checkpoint folder first)."""
    recipe = copy.deepcopy(recipe)
    recipe["data"]["root"] = str(data_root(recipe).resolve())
    if recipe["data"].get("cache_dir"):
        recipe["data"]["cache_dir"] = str(Path(recipe["data"]["cache_dir"]).expanduser().resolve())
    backbone = recipe["backbone"]
    if backbone.get("checkpoint"):
        backbone["checkpoint"] = str(find_checkpoint(backbone.get("name"), backbone["checkpoint"]).resolve())
    return recipe


def data_root(recipe: dict) -> Path:
    return Path(recipe["data"].get("root") or os.environ.get(DATA_DIR_ENV) or "data").expanduser()


def sampling_config(recipe: dict, backbone, train: bool) -> SamplingConfig:
    table = dict(recipe["data"].get("sampling", {}))
    table.setdefault("image_size", backbone.config.vision.image_size)
    return replace(dataclass_from_dict(SamplingConfig, table, "[data.sampling]"), train=train)
