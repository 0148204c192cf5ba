"""Recipes: a TOML file holding a whole experiment (backbone, data, method, training), read with ``tomllib``.

``load_recipe("msrvtt/clip4clip", overrides=["train.lr=1e-5", "method.sim_header=\\"seqTransf\\""])`` returns a
plain dict (``petvr.training.run.run_recipe`` trains and evaluates it). A recipe is a file path or the name of a recipe
shipped in ``petvr/recipes/`` (``<dataset>/<method>``). Relative data paths resolve against ``data.root`` (default
``$PETVR_DATA_DIR``, else ``data``), so one recipe serves every machine. A relative ``data.root`` written in a recipe
file is relative to that file's folder (in a shipped recipe, and in a ``--set`` override, to the working directory).

``load_recipe`` checks the whole recipe (``validate_recipe``) before anything runs: unknown tables and keys, types,
ranges, required tables, the reader's arguments and the frame size against the backbone's; each error names the
file, the table and the key.

    base        optional: a recipe this one builds on (a path relative to this file, or a shipped recipe's name);
                its tables are merged key by key under this file's, bases of bases too
    [backbone]  name, checkpoint (optional)
    [method]    name plus the method's config fields
    [data]      dataset, root, expand_sentences, max_words, cache_dir, num_workers, batch_size_val, skip_unreadable,
                ties (the metrics' tie rule: "stable", "pessimistic" or "official", CLIP4Clip's numbers)
    [data.sampling]   SamplingConfig fields (image_size defaults to the backbone's)
    [data.train] / [data.test]   keyword arguments of the dataset's reader (see ``petvr.data.readers``)
    [train]     TrainConfig fields plus output_dir
    [editing]   optional: training from single timestamps with clip editing (``petvr.editing.EditingConfig``)
"""
from __future__ import annotations

import copy
import difflib
import inspect
import os
import tomllib
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from ..backbone.checkpoints import find_checkpoint
from ..data.video import SamplingConfig
from ..errors import RecipeError
from ..typed_config import _field_types, dataclass_from_dict, describe_type, value_fits

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
    dotted, equals, text = assignment.partition("=")
    *tables, key = dotted.strip().split(".")
    if not equals or not tables or not all(part.strip() for part in (*tables, key)):
        raise RecipeError(f"--set {assignment!r} is not of the form section.key=value (e.g. train.lr=1e-5)")
    node = recipe
    for table in tables:
        node = node.setdefault(table, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {assignment!r}: {table!r} is not a table")
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
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RecipeError(f"{path}: not valid TOML ({error})") from error


def _read_with_bases(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The recipe at ``path`` merged over its base, the base over its own, and so on."""
    chain = chain + (path.resolve(),)
    recipe = _read_toml(path)
    data = recipe.get("data")
    if (isinstance(data, dict) and isinstance(data.get("root"), str) and data["root"]
            and not path.resolve().is_relative_to(shipped_recipes_dir().resolve())):
        data["root"] = str(path.parent / Path(data["root"]).expanduser())  # a relative root: beside this file
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
    recipe.setdefault("name", path.stem)
    validate_recipe(recipe, path)
    return recipe


# The keys of the tables that no dataclass describes: name -> type. [method], [data.sampling] and [train] are their
# dataclasses' fields, [data.train] / [data.test] the reader's arguments.
RECIPE_KEYS = {"name": str, "backbone": dict, "method": dict, "data": dict, "train": dict,
               "editing": dict}  # [editing]: timestamp supervision with clip editing (petvr.editing.EditingConfig)
BACKBONE_KEYS = {"name": str, "checkpoint": str}
DATA_KEYS = {"dataset": str, "root": str, "expand_sentences": bool, "max_words": int, "cache_dir": str,
             "num_workers": int, "batch_size_val": int, "skip_unreadable": bool, "ties": str, "sampling": dict,
             "train": dict, "test": dict}
REQUIRED = {"": ("backbone", "method", "data", "train"), "backbone": ("name",), "method": ("name",),
            "data": ("dataset", "train", "test")}
AT_LEAST = {"data": {"max_words": 3, "num_workers": 0, "batch_size_val": 1},  # max_words counts SOT and EOT
            "train": {"epochs": 1, "batch_size": 1, "gradient_accumulation_steps": 1, "checkpoint_every_steps": 0}}
POSITIVE = {"train": ("lr",)}
TIE_RULES = ("stable", "pessimistic", "official")
TRAIN_ONLY_KEYS = {"output_dir": str}  # [train] keys that are not TrainConfig fields


def validate_recipe(recipe: dict, path: str | Path) -> None:
    """Check a whole recipe before anything runs; raise ``RecipeError`` naming ``path``, the table and the key.

    Checked: unknown tables and keys (with the closest known name), basic types, ranges, required tables and keys,
    the dataset's reader arguments (its signature), the method's options (its config), and
    ``data.sampling.image_size`` against the backbone's."""
    from ..backbone import get_model_config
    from ..data.readers import READERS
    from ..methods import list_methods, method_config_class
    from .trainer import TrainConfig

    def fail(where: str, problem: str) -> None:
        raise RecipeError(" ".join(part for part in (f"{path}:", where, problem) if part))

    _check_keys(recipe, RECIPE_KEYS, "the recipe", fail)
    for section, keys in REQUIRED.items():
        table = recipe.get(section, {}) if section else recipe
        for key in keys:
            if key not in table:
                where = f"[{section}]" if section else "the recipe"
                what = f"[{section + '.' if section else ''}{key}] table" if key in ("train", "test") or not section \
                    else f"{key!r} key"
                fail(where, f"has no {what}")
    _check_keys(recipe["backbone"], BACKBONE_KEYS, "[backbone]", fail)
    try:
        backbone_config = get_model_config(recipe["backbone"]["name"])
    except (ValueError, OSError) as error:
        fail("[backbone] name:", str(error))

    method = dict(recipe["method"])
    name = method.pop("name")
    if name not in list_methods():
        fail("[method] name:", f"unknown method {name!r}; known: {', '.join(list_methods())}")
    _checked(lambda: dataclass_from_dict(method_config_class(name), method, "[method]"), "[method]", fail)

    data = recipe["data"]
    _check_keys(data, DATA_KEYS, "[data]", fail)
    if data["dataset"] not in READERS:
        fail("[data] dataset:", f"unknown dataset {data['dataset']!r}; known: {', '.join(sorted(READERS))}")
    if data.get("ties", "stable") not in TIE_RULES:
        fail("[data] ties:", f"must be one of {TIE_RULES}, found {data['ties']!r}")
    _check_ranges(data, "data", fail)
    sampling = _checked(lambda: dataclass_from_dict(SamplingConfig, data.get("sampling", {}), "[data.sampling]"),
                        "[data.sampling]", fail)
    expected_size = backbone_config.vision.image_size
    if "image_size" in data.get("sampling", {}) and sampling.image_size != expected_size:
        fail("[data.sampling] image_size:", f"{sampling.image_size} contradicts the backbone "
             f"{recipe['backbone']['name']!r}, whose images are {expected_size} px (leave image_size out to use it)")
    reader = READERS[data["dataset"]]
    parameters = {key: parameter for key, parameter in inspect.signature(reader).parameters.items()
                  if key != "skip_unreadable" and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)}
    annotations = _field_types(reader)
    for which in ("train", "test"):
        where = f"[data.{which}]"
        table = data[which]
        _check_keys(table, {key: annotations.get(key, object) for key in parameters}, where, fail,
                    f" (arguments of the {data['dataset']!r} reader; data.skip_unreadable is set in [data])")
        missing = [key for key, parameter in parameters.items() if parameter.default is parameter.empty
                   and key not in table]
        if missing:
            fail(where, f"lacks {missing}, required by the {data['dataset']!r} reader")

    train = dict(recipe["train"])
    _check_keys({key: train.pop(key) for key in TRAIN_ONLY_KEYS if key in train}, TRAIN_ONLY_KEYS, "[train]", fail)
    _checked(lambda: dataclass_from_dict(TrainConfig, train, "[train]"), "[train]", fail)
    _check_ranges(recipe["train"], "train", fail)
    if "editing" in recipe:
        from ..editing.clips import EditingConfig

        _checked(lambda: EditingConfig.from_recipe(recipe), "[editing]", fail)


def _check_keys(table: Any, known: dict[str, Any], where: str, fail, hint: str = "") -> None:
    """Unknown keys (with the closest known one) and basic types of a table's keys."""
    if not isinstance(table, dict):
        fail(where, f"must be a table of keys and values, found {type(table).__name__} {table!r}")
    for key, value in table.items():
        if key not in known:
            guess = difflib.get_close_matches(key, list(known), n=1)
            fail(where, f"has unknown key {key!r}" + (f" (did you mean {guess[0]!r}?)" if guess else "")
                 + f"; known: {sorted(known)}{hint}")
        annotation = known[key]
        fits = isinstance(value, dict) if annotation is dict else value_fits(value, annotation)
        if not fits:
            kind = "a table" if annotation is dict else describe_type(annotation)
            fail(f"{where} {key}:", f"must be {kind}, found {type(value).__name__} {value!r}")


def _check_ranges(table: dict, section: str, fail) -> None:
    for key, minimum in AT_LEAST.get(section, {}).items():
        value = table.get(key)
        if isinstance(value, (int, float)) and value < minimum:
            fail(f"[{section}] {key}:", f"must be at least {minimum}, found {value!r}")
    for key in POSITIVE.get(section, ()):
        value = table.get(key)
        if isinstance(value, (int, float)) and not value > 0:
            fail(f"[{section}] {key}:", f"must be positive, found {value!r}")


def _checked(build, where: str, fail):
    """``build()``, its ValueError (unknown key, wrong type, a value its dataclass refuses) said as the recipe's."""
    try:
        return build()
    except RecipeError:
        raise
    except (ValueError, TypeError) as error:
        message = str(error)
        fail("" if message.startswith(where.split(" ")[0]) else where + ":", message)


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
