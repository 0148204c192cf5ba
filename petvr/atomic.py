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


def remove_unfinished_writes(folder: str | Path) -> list[str]:
    """Clean up after writes into ``folder`` that a killed process left half-done; returns what was done, in words.

    A temporary file or folder (``.<name>.<random>.tmp``) is deleted: its write never finished. An aside copy
    (``.<name>.old``) is deleted when ``<name>`` is in place (the swap finished), and renamed back to ``<name>`` when
    not (the swap was cut between its two renames: the aside copy is the last complete version).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    for path in sorted(folder.glob(".*")):
        if path.name.endswith(".tmp") and path.name.count(".") >= 3:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            done.append(f"removed {path} (an unfinished write)")
        elif path.name.endswith(".old") and path.is_dir() and not path.is_symlink():
            target = path.with_name(path.name[1:-len(".old")])
            if target.exists():
                shutil.rmtree(path)
                done.append(f"removed {path} (the copy an interrupted replacement of {target.name} kept)")
            else:
                os.replace(path, target)
                done.append(f"restored {target} from {path.name} (its replacement was interrupted)")
    return done
