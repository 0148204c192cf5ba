"""Atomic writes: a file or folder is written beside its target, then renamed into place, so a process killed
half-way leaves the previous version intact. ``durable=True`` also fsyncs, so the data survives a power loss.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_path(path: Path) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None], durable: bool = True) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it (when ``durable``), then rename it over
    ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
    try:
        write(tmp)
        if durable:
            _fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            _fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


def atomic_write_folder(folder: str | Path, write: Callable[[Path], None]) -> Path:
    """Fill a temporary folder with ``write(tmp_folder)``, then move it to ``folder`` (replacing an old one).

    The old folder is renamed aside before the new one takes its place and deleted only afterwards, so at every
    instant a complete version exists on disk (``RetrievalModel.from_adapter`` also looks at the aside copy if the swap was cut).
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        write(tmp)
        for child in tmp.iterdir():
            _fsync_path(child)
        _fsync_path(tmp)
        aside = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(folder, aside)
        os.replace(tmp, folder)
        _fsync_path(folder.parent)
        if aside.exists():
            shutil.rmtree(aside)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
