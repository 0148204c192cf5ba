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


class RecipeError(ValueError):
    """A recipe that cannot run: ``"runs/my.toml: [train] lr must be a number, found str 'fast'"`` (the file, the
    table, the key, and what is allowed)."""
