"""Nested training state on disk without pickle: tensors in ``<name>.safetensors``, everything else in ``<name>.json``.

Reading either file only parses data, so a run folder from someone else cannot run code when it is resumed (unpickling
``torch.save`` output can). The state is a tree of dicts, lists, tuples, str, int, float, bool, None, tensors and numpy
arrays (the optimizer's and scheduler's state dicts, the RNG states, progress), and it comes back with the same types:
a tuple stays a tuple (``random.setstate`` needs one), an int key stays an int (optimizer state is keyed by parameter
index), a numpy array stays a numpy array. In the JSON, a one-key object whose key starts with ``$`` stands for what
JSON lacks: ``{"$tensor": "3"}`` (safetensors key 3), ``{"$ndarray": "4"}``, ``{"$tuple": [...]}`` and
``{"$dict": [[key, value], ...]}`` for a dict with a key that is not a string or starts with ``$``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

_SCALARS = (str, int, float, bool, type(None))


def _is_plain_key(key: Any) -> bool:
    return isinstance(key, str) and not key.startswith("$")


def split_state(state: Any) -> tuple[dict[str, Tensor], Any]:
    """``(tensors, json_tree)``: the tensors and numpy arrays of ``state`` under numbered keys, and a JSON-ready tree
    that refers to them by key."""
    tensors: dict[str, Tensor] = {}

    def encode(value: Any, where: str) -> Any:
        if isinstance(value, Tensor):
            key = str(len(tensors))
            tensors[key] = value.detach().cpu().contiguous().clone()
            return {"$tensor": key}
        if isinstance(value, np.ndarray):
            key = str(len(tensors))
            tensors[key] = torch.from_numpy(np.ascontiguousarray(value).copy())
            return {"$ndarray": key}
        if isinstance(value, _SCALARS):
            return value
        if isinstance(value, tuple):
            return {"$tuple": [encode(item, f"{where}[{index}]") for index, item in enumerate(value)]}
        if isinstance(value, list):
            return [encode(item, f"{where}[{index}]") for index, item in enumerate(value)]
        if isinstance(value, dict):
            if all(_is_plain_key(key) for key in value):
                return {key: encode(item, f"{where}.{key}") for key, item in value.items()}
            return {"$dict": [[encode(key, f"{where} key"), encode(item, f"{where}[{key!r}]")]
                              for key, item in value.items()]}
        raise TypeError(f"training state{where}: cannot store a {type(value).__name__} (only dicts, lists, tuples, "
                        "str, int, float, bool, None, tensors and numpy arrays)")

    return tensors, encode(state, "")


def join_state(tensors: dict[str, Tensor], tree: Any, source: str = "training state") -> Any:
    """The inverse of ``split_state``; ``source`` names the files in errors."""

    def tensor(key: Any) -> Tensor:
        if key not in tensors:
            raise ValueError(f"{source}: refers to tensor {key!r}, which the safetensors file does not hold")
        return tensors[key]

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(item) for item in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (tag, content), = value.items()
            if tag == "$tensor":
                return tensor(content)
            if tag == "$ndarray":
                return tensor(content).numpy()
            if tag == "$tuple":
                return tuple(decode(item) for item in content)
            if tag == "$dict":
                return {decode(key): decode(item) for key, item in content}
        if not all(_is_plain_key(key) for key in value):
            raise ValueError(f"{source}: unknown tag in {sorted(value)}")
        return {key: decode(item) for key, item in value.items()}

    return decode(tree)


def save_state(state: Any, folder: str | Path, name: str) -> None:
    """Write ``folder/<name>.safetensors`` and ``folder/<name>.json`` (call inside an atomic folder write)."""
    tensors, tree = split_state(state)
    folder = Path(folder)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(tree, indent=2) + "\n")


def load_state(folder: str | Path, name: str) -> Any:
    """Read what ``save_state`` wrote; raises ``ValueError`` naming the file when a file is missing or unreadable."""
    json_path, tensors_path = Path(folder) / f"{name}.json", Path(folder) / f"{name}.safetensors"
    try:
        tree = json.loads(json_path.read_text())
    except (OSError, ValueError) as error:  # ValueError: not UTF-8 or not JSON
        raise ValueError(f"{json_path}: cannot read the training state ({error})") from error
    try:
        tensors = load_file(str(tensors_path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{tensors_path}: cannot read the training state's tensors ({error})") from error
    return join_state(tensors, tree, source=str(json_path))
