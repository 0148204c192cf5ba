"""Adapter checkpoints (a folder: ``adapter.safetensors`` with the trained weights only, ``adapter.json`` with the
method, its config, the backbone name and weight hash, recipe, metrics and petvr version) and atomic writes.

Every write goes through ``petvr.atomic``: a process killed half-way leaves the previous file or folder loadable.
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
    folder = _resolve_adapter_folder(Path(folder))
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


def _resolve_adapter_folder(folder: Path) -> Path:
    if (folder / ADAPTER_CONFIG).is_file():
        return folder
    aside = folder.with_name(f".{folder.name}.old")  # a replacement was cut between its two renames
    if not folder.exists() and (aside / ADAPTER_CONFIG).is_file():
        return aside
    raise FileNotFoundError(f"{folder}: no {ADAPTER_CONFIG} here; an adapter folder holds {ADAPTER_WEIGHTS} and {ADAPTER_CONFIG}")


def load_adapter(folder: str | Path, backbone=None, check_backbone: bool = True, device: str | None = None):
    """Rebuild a ``RetrievalModel`` from an adapter folder; returns ``(model, description)``.

    Without ``backbone`` the backbone named in ``adapter.json`` is loaded (from the checkpoint its recipe names, if
    any, else looked up by name). The backbone's weight hash must match the one the adapter was trained on, unless
    ``check_backbone=False``.
    """
    from .backbone.checkpoints import load_backbone
    from .methods import RetrievalModel

    folder = _resolve_adapter_folder(Path(folder))
    description = read_adapter_description(folder)
    expected = description["backbone"]
    if backbone is None:
        recorded = description.get("recipe", {}).get("backbone", {}).get("checkpoint") or None
        backbone = load_backbone(expected["name"], recorded)
    model = RetrievalModel(backbone, description["method"], **description["method_config"])
    if check_backbone and model.backbone_hash != expected.get("weight_hash"):
        raise ValueError(
            f"{folder}: this adapter was trained on backbone {expected.get('name')!r} with weight hash "
            f"{expected.get('weight_hash')}, but the given backbone has hash {model.backbone_hash}; load the backbone "
            "it was trained on (or pass check_backbone=False if you know what you are doing)")
    load_adapter_weights(model, folder)
    return (model.to(device) if device else model), description


def load_adapter_weights(model, folder: str | Path) -> None:
    """Copy ``folder/adapter.safetensors`` into ``model``'s trainable weights (names and shapes must match)."""
    weights_path = Path(folder) / ADAPTER_WEIGHTS
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_path}: cannot read adapter weights ({error})") from error
    model.load_trainable_state_dict(weights, source=str(weights_path))
