"""Errors for bad input, and the report of what ``skip_unreadable`` skipped.

Every data error names the file (and the row or item when there is one) and the problem. With ``skip_unreadable``
the same problems are recorded in a ``SkipReport`` instead of raised, and the report is written out so nothing is
lost silently.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


class DataError(ValueError):
    """Bad input data: ``DataError(path, problem, row=None)`` -> ``"path: row 17: problem"``."""

    def __init__(self, path: str | Path, problem: str, row: int | str | None = None):
        self.path = str(path)
        self.problem = problem
        self.row = row
        where = f"{self.path}: row {row}: " if row is not None else f"{self.path}: "
        super().__init__(where + problem)


@dataclass
class SkippedItem:
    path: str
    problem: str
    row: int | str | None = None


@dataclass
class SkipReport:
    """Items skipped under ``skip_unreadable``; ``write`` saves them as JSON lines for the user to inspect."""

    items: list[SkippedItem] = field(default_factory=list)

    def add(self, error: DataError) -> None:
        self.items.append(SkippedItem(error.path, error.problem, error.row))

    def __len__(self) -> int:
        return len(self.items)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            for item in self.items:
                handle.write(json.dumps(asdict(item)) + "\n")
        return path

    def summary(self) -> str:
        if not self.items:
            return "nothing skipped"
        lines = [f"skipped {len(self.items)} item(s):"]
        lines += [f"  {item.path}" + (f" row {item.row}" if item.row is not None else "") + f": {item.problem}"
                  for item in self.items]
        return "\n".join(lines)


class DataWarning(UserWarning):
    """Data that loads but deserves a look (repeated captions, frames the decoder had to conceal): the message names
    the file and where, like a ``DataError``."""


class RecipeError(ValueError):
    """A recipe that cannot run: ``"runs/my.toml: [train] lr: must be a number, found str 'fast'"`` (the file, the
    table, the key, and what is allowed)."""


WORKER_MARK = "petvr-worker-error: "


class WorkerError(Exception):
    """An exception of a DataLoader worker, carried to the main process as its own type and message.

    torch re-raises a worker's exception as ``type(text)``, ``text`` being the worker's traceback, or as a
    ``RuntimeError`` when the type takes other arguments (``DataError`` does): either way the user reads a traceback.
    A dataset raises ``WorkerError.carrying(error)`` in a worker instead; its message describes ``error`` as JSON, and
    torch's ``WorkerError(text)`` rebuilds ``error`` from it (``__new__`` returns the rebuilt exception), so the user
    reads the same error as with ``num_workers = 0``; the worker's traceback is kept as a note (``petvr --debug``)."""

    def __new__(cls, text: str = "", *args):
        rebuilt = _rebuild_worker_error(text) if isinstance(text, str) and WORKER_MARK in text else None
        return rebuilt if rebuilt is not None else super().__new__(cls, text, *args)

    @classmethod
    def carrying(cls, error: Exception) -> "WorkerError":
        described = {"module": type(error).__module__, "type": type(error).__qualname__, "message": str(error)}
        if isinstance(error, DataError):
            described.update(path=error.path, problem=error.problem, row=error.row)
        carrier = Exception.__new__(cls)
        carrier.args = (WORKER_MARK + json.dumps(described),)
        return carrier


def _rebuild_worker_error(text: str) -> BaseException | None:
    """The exception a ``WorkerError.carrying`` described in ``text`` (torch's message: the worker's traceback)."""
    import importlib

    try:
        described = json.loads(text.rpartition(WORKER_MARK)[2].splitlines()[0])
        error_type = getattr(importlib.import_module(described["module"]), described["type"])
    except (ValueError, KeyError, IndexError, ImportError, AttributeError):
        return None
    if not (isinstance(error_type, type) and issubclass(error_type, BaseException)):
        return None
    try:
        rebuilt = (error_type(described["path"], described["problem"], described["row"])
                   if issubclass(error_type, DataError) else error_type(described["message"]))
    except Exception:  # a type that takes other arguments: its message, said as a RuntimeError
        rebuilt = RuntimeError(f"{described['type']}: {described['message']}")
    rebuilt.add_note("raised in a DataLoader worker; " + text.partition(WORKER_MARK)[0].rstrip())
    return rebuilt
