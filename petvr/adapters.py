"""Adapter files: a folder with ``adapter.safetensors`` (the trained weights only) and ``adapter.json`` (method, its
config, the backbone name and weight hash, recipe, metrics, petvr version). One frozen backbone serves many adapters.

This module reads and writes those folders and finds the backbone an adapter was trained on; building the model is
``RetrievalModel.from_adapter`` / ``model.save_adapter``. (The backbone's own checkpoint readers, a different job,
are ``petvr.backbone.checkpoints``.) Every write goes through ``petvr.atomic``: a process killed half-way leaves the
previous folder loadable.
"""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import __version__
from .atomic import atomic_write_folder

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
FORMAT_NAME = "petvr-adapter"


def adapter_description(model, recipe: dict | None = None, metrics: dict | None = None) -> dict:
    """The ``adapter.json`` content for ``model``: method, config, backbone identity, counts, recipe, metrics."""
    return {
        "format": FORMAT_NAME,
        "petvr_version": __version__,
        "method": model.method_name,
        "method_config": model.method_config_dict(),
        "backbone": {
            "name": model.backbone.name,
            "config": model.backbone.config.to_dict(),
            "weight_hash": model.backbone_hash,
        },
        "parameters": model.parameter_report(),
        "recipe": recipe or {},
        "metrics": metrics or {},
    }


def write_adapter_files(model, folder: Path, recipe: dict | None = None, metrics: dict | None = None) -> None:
    """Write ``adapter.safetensors`` and ``adapter.json`` into an existing (temporary) folder."""
    weights = {name: tensor.contiguous().clone() for name, tensor in model.trainable_state_dict().items()}
    save_file(weights, str(folder / ADAPTER_WEIGHTS), metadata={"format": FORMAT_NAME, "method": model.method_name})
    description = adapter_description(model, recipe, metrics)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")


def save_adapter(model, folder: str | Path, recipe: dict | None = None, metrics: dict | None = None) -> Path:
    """Write ``model``'s trained weights and their description to ``folder`` atomically."""
    return atomic_write_folder(folder, lambda tmp: write_adapter_files(model, tmp, recipe, metrics))


def read_adapter_description(folder: str | Path) -> dict:
    """The parsed ``adapter.json`` of an adapter folder, with clear errors for a missing or broken one."""
    folder = resolve_adapter_folder(Path(folder))
    path = folder / ADAPTER_CONFIG
    try:
        description = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if description.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not a petvr adapter description (format {description.get('format')!r})")
    for key in ("method", "method_config", "backbone"):
        if key not in description:
            raise ValueError(f"{path}: missing {key!r}")
    return description


def resolve_adapter_folder(folder: Path) -> Path:
    """The folder holding ``adapter.json``: ``folder`` itself, or its aside copy when a replacement was cut short."""
    if (folder / ADAPTER_CONFIG).is_file():
        return folder
    aside = folder.with_name(f".{folder.name}.old")  # a replacement was cut between its two renames
    if not folder.exists() and (aside / ADAPTER_CONFIG).is_file():
        return aside
    inside = [name for name in ("adapter", "best") if (folder / name / ADAPTER_CONFIG).is_file()]
    hint = (f"; this looks like a run folder: its adapters are {' and '.join(str(folder / n) for n in inside)}"
            if inside else "")
    raise FileNotFoundError(f"{folder}: no {ADAPTER_CONFIG} here; an adapter folder holds {ADAPTER_WEIGHTS} and "
                            f"{ADAPTER_CONFIG}{hint}")


def find_adapter_backbone(description: dict, folder: str | Path = "adapter"):
    """Load the backbone an adapter was trained on: the checkpoint recorded at training time if it still exists,
    else the same file name in ``$PETVR_CHECKPOINT_DIR``, else the backbone's name looked up there (and the bundled
    default). The first candidate whose weight hash matches the recorded one is returned; otherwise a clear error
    lists what was tried."""
    from .backbone.checkpoints import CHECKPOINT_DIR_ENV, backbone_weight_hash, checkpoint_dir, load_backbone

    expected = description["backbone"]
    name, expected_hash = expected.get("name"), expected.get("weight_hash")
    recorded = description.get("recipe", {}).get("backbone", {}).get("checkpoint") or None
    candidates: list[tuple[str, str | None]] = []
    if recorded:
        candidates += [(str(recorded), str(recorded)), (str(checkpoint_dir() / Path(recorded).name), Path(recorded).name)]
    candidates.append((f"{name!r} in {checkpoint_dir()} or bundled", None))
    tried = []
    for label, checkpoint in candidates:
        try:
            backbone = load_backbone(name, checkpoint)
        except (FileNotFoundError, ValueError) as error:
            tried.append(f"{label}: {error}")
            continue
        found_hash = backbone_weight_hash(backbone)
        if found_hash == expected_hash:
            return backbone
        tried.append(f"{label}: weight hash {found_hash}, not {expected_hash}")
    raise FileNotFoundError(f"{folder}: cannot find backbone {name!r} with weight hash {expected_hash} that this "
                            f"adapter was trained on; tried:\n  " + "\n  ".join(tried) +
                            f"\nput its checkpoint in ${CHECKPOINT_DIR_ENV} or pass the backbone explicitly")


def load_adapter_weights(model, folder: str | Path) -> None:
    """Copy ``folder/adapter.safetensors`` into ``model``'s trainable weights (names and shapes must match)."""
    weights_path = Path(folder) / ADAPTER_WEIGHTS
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_path}: cannot read adapter weights ({error})") from error
    model.load_trainable_state_dict(weights, source=str(weights_path))
