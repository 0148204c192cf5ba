"""Typed configs from plain dicts (TOML tables, JSON files): one helper that builds a dataclass and refuses typos."""
from __future__ import annotations

import difflib
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar, get_type_hints

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """``cls(**data)``, refusing keys that are not fields of ``cls``.

    ``where`` names the source in the error, e.g. ``"[train]"`` (a recipe table) or ``"method 'clip4clip'"``:
    ``[train] has unknown key(s) ['learning_rate'] (did you mean 'lr'?); known: [...]``. A field whose type is itself
    a dataclass is built from its sub-dict the same way (``where`` becomes ``"<where>: <field>"``). Missing keys take
    the dataclass's defaults; the dataclass checks the values.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table of keys and values, found {type(data).__name__} {data!r}")
    known = [field.name for field in fields(cls)]
    unknown = sorted(set(data) - set(known))
    if unknown:
        guesses = sorted({match for key in unknown for match in difflib.get_close_matches(key, known, n=1)})
        hint = f" (did you mean {', '.join(map(repr, guesses))}?)" if guesses else ""
        raise ValueError(f"{where} has unknown key(s) {unknown}{hint}; known: {sorted(known)}")
    values = dict(data)
    tables = [key for key, value in data.items() if isinstance(value, dict)]
    if tables:
        types = _field_types(cls)
        for key in tables:
            if isinstance(types[key], type) and is_dataclass(types[key]):
                values[key] = dataclass_from_dict(types[key], data[key], f"{where}: {key}")
    return cls(**values)


def _field_types(cls: type) -> dict[str, Any]:
    """The fields' types, resolved where they can be (string annotations under ``from __future__ import annotations``
    name their types; one that cannot be resolved here is left as its string, and is never a nested dataclass)."""
    try:
        return get_type_hints(cls)
    except NameError:
        return {field.name: field.type for field in fields(cls)}
