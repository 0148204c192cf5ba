"""TorchScript archives (OpenAI's CLIP ``.pt`` files) read as data: their parameters and module classes, no code run.

``torch.jit.load`` compiles an archive's code and runs it: a class's ``__setstate__`` runs while the file loads, and
PyTorch's security policy asks to treat a TorchScript file like a program from its author. An archive is a zip under
one root folder: ``data.pkl`` pickles the module tree (each module an object of a ``__torch__.*`` class whose state
is its attributes), ``data/<key>`` holds each storage's raw bytes, and ``code/`` the classes' source, where a line
``__parameters__ = ["weight", "bias", ]`` says which tensor attributes are parameters. This reader unpickles
``data.pkl`` with an unpickler that knows module records, tensors, storages and TorchScript's typed lists only (any
other global is refused, so nothing named in the file is called) and reads the ``__parameters__`` lines as text.
"""
from __future__ import annotations

import collections
import io
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import DataError

_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}
_TYPED_LISTS = ("build_intlist", "build_doublelist", "build_boollist", "build_tensorlist")
_CLASS_PARAMETERS = re.compile(r"^class (\w+)\(Module\):\n  __parameters__ = \[([^\]]*)\]", re.MULTILINE)


@dataclass
class TorchScriptWeights:
    """``parameters`` named as ``named_parameters()`` names them; ``module_classes`` maps each module's path ("" for
    the root) to its class name as ``original_name`` gives it (``QuickGELU``, ``Linear``)."""

    parameters: dict[str, Tensor]
    module_classes: dict[str, str]


class _ScriptObject:
    """An object of a TorchScript class: its qualified class name and the state its pickle holds."""

    qualified_name = ""
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _rebuild_tensor(storage: tuple[torch.UntypedStorage, torch.dtype], offset: int, size: tuple, stride: tuple,
                    *_: Any) -> Tensor:
    untyped, dtype = storage
    if offset < 0 or any(step < 0 for step in stride) or len(size) != len(stride):
        raise ValueError(f"a tensor with offset {offset}, size {size} and stride {stride}")
    itemsize = torch.empty(0, dtype=dtype).element_size()
    last = offset + sum((length - 1) * step for length, step in zip(size, stride))
    if 0 not in size and (last + 1) * itemsize > untyped.nbytes():
        raise ValueError(f"a tensor of size {size} reaches past the end of its {untyped.nbytes()}-byte storage")
    return torch.empty(0, dtype=dtype).set_(untyped, offset, size, stride)


class _ArchiveUnpickler(pickle.Unpickler):
    def __init__(self, archive: zipfile.ZipFile, root: str, path: str | Path):
        super().__init__(io.BytesIO(archive.read(f"{root}/data.pkl")))
        self.archive = archive
        self.root = root
        self.path = path
        self.classes: dict[str, type[_ScriptObject]] = {}
        self.storages: dict[str, torch.UntypedStorage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "__torch__" or module.startswith("__torch__."):
            qualified = f"{module}.{name}"
            if qualified not in self.classes:
                self.classes[qualified] = type(name, (_ScriptObject,), {"qualified_name": qualified})
            return self.classes[qualified]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "torch.jit._pickle" and name in _TYPED_LISTS:
            return list
        if (module, name) == ("torch.jit._pickle", "restore_type_tag"):
            return lambda value, type_name: value
        raise DataError(self.path, f"refused: its data names {module}.{name}, and petvr reads only modules, tensors "
                                   "and plain values from a TorchScript archive, running none of its code")

    def persistent_load(self, pid: Any) -> tuple[torch.UntypedStorage, torch.dtype]:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], torch.dtype)
                and isinstance(pid[2], str)):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        key, dtype = pid[2], pid[1]
        if key not in self.storages:
            data = self.archive.read(f"{self.root}/data/{key}")
            self.storages[key] = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if data \
                else torch.UntypedStorage(0)
        return self.storages[key], dtype


def _declared_parameters(archive: zipfile.ZipFile, root: str) -> dict[str, set[str]]:
    """Qualified class name -> its ``__parameters__``, read from the source under ``code/`` (not compiled)."""
    declared: dict[str, set[str]] = {}
    prefix = f"{root}/code/"
    for name in archive.namelist():
        if name.startswith(prefix) and name.endswith(".py"):
            module = name[len(prefix):-len(".py")].replace("/", ".")
            for class_name, listed in _CLASS_PARAMETERS.findall(archive.read(name).decode("utf-8", "replace")):
                declared[f"{module}.{class_name}"] = set(re.findall(r'"([^"]*)"', listed))
    return declared


def read_torchscript_weights(path: str | Path) -> TorchScriptWeights:
    """The parameters and module classes of the TorchScript archive at ``path``; raises ``DataError`` naming the file
    when it is not a readable archive or its data names anything but modules, tensors and plain values."""
    try:
        with zipfile.ZipFile(path) as archive:
            root = archive.namelist()[0].split("/")[0]
            byteorder = f"{root}/byteorder"
            if byteorder in archive.namelist() and archive.read(byteorder).decode().strip() != sys.byteorder:
                raise ValueError(f"its tensors are stored {archive.read(byteorder).decode().strip()}-endian")
            tree = _ArchiveUnpickler(archive, root, path).load()
            declared = _declared_parameters(archive, root)
    except DataError:
        raise
    except Exception as error:  # zip, pickle and storage problems raise many kinds of errors
        raise DataError(path, f"unreadable TorchScript archive: {type(error).__name__}: {error}") from None
    if not isinstance(tree, _ScriptObject):
        raise DataError(path, f"a TorchScript archive holds a module, this one a {type(tree).__name__}")
    weights = TorchScriptWeights({}, {})
    pending, seen_modules, seen_tensors = [("", tree)], set(), set()
    while pending:  # modules in named_modules() order; a tensor held twice keeps its first name, as there
        prefix, module = pending.pop()
        if id(module) in seen_modules:
            continue
        seen_modules.add(id(module))
        if not isinstance(module.state, dict):
            raise DataError(path, f"{module.qualified_name} restores its state with its own code (__setstate__), "
                                  "which petvr does not run")
        weights.module_classes[prefix] = module.qualified_name.rsplit(".", 1)[-1]
        parameters = declared.get(module.qualified_name, set())
        children = []
        for name, value in module.state.items():
            key = f"{prefix}.{name}" if prefix else name
            if isinstance(value, _ScriptObject):
                children.append((key, value))
            elif name in parameters and isinstance(value, Tensor) and id(value) not in seen_tensors:
                seen_tensors.add(id(value))
                weights.parameters[key] = value
        pending += reversed(children)
    return weights
