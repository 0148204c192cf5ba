"""Typed configs from plain dicts (TOML tables, JSON files): one helper that builds a dataclass and refuses typos."""
from __future__ import annotations

import difflib
import types
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


def dataclass_from_dict(cls: type[T], data: dict[str, Any], where: str) -> T:
    """``cls(**data)``, refusing keys that are not fields of ``cls``.

    ``where`` names the source in the error, e.g. ``"[train]"`` (a recipe table) or ``"method 'clip4clip'"``:
    ``[train] has unknown key(s) ['learning_rate'] (did you mean 'lr'?); known: [...]``. A field whose type is itself
    a dataclass is built from its sub-dict the same way (``where`` becomes ``"<where>: <field>"``). Missing keys take
    the dataclass's defaults. A value of the wrong basic type (a string where the field is a float, a float where it
    is an int) is refused naming the key: ``[train] lr: must be a number, found str 'fast'``; the dataclass
    checks the values' ranges.
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
    annotations = _field_types(cls)
    for key, value in data.items():
        annotation = annotations[key]
        if isinstance(value, dict) and isinstance(annotation, type) and is_dataclass(annotation):
            values[key] = dataclass_from_dict(annotation, value, f"{where}: {key}")
        elif not value_fits(value, annotation):
            raise ValueError(f"{where} {key}: must be {describe_type(annotation)}, found {type(value).__name__} "
                             f"{value!r}")
    return cls(**values)


_BASIC = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def value_fits(value: Any, annotation: Any) -> bool:
    """Whether ``value`` (from TOML or JSON) fits a basic annotation: ``bool``, ``int`` (not a bool), ``float`` (an int
    too), ``str``, ``None``, unions of those, ``list``/``tuple`` of them. Anything else is not checked here."""
    if annotation is Any or isinstance(annotation, str):
        return True
    if annotation is type(None) or annotation is None:
        return value is None
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(value_fits(value, option) for option in get_args(annotation))
    if origin in (list, tuple) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        items = [item for item in get_args(annotation) if item is not Ellipsis]
        return len(items) != 1 or all(value_fits(item, items[0]) for item in value)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    return True


def describe_type(annotation: Any) -> str:
    """``float`` -> ``"a number"``, ``str | None`` -> ``"a string or none"``, ``tuple[float, float]`` -> ``"a list"``."""
    if annotation is type(None) or annotation is None:
        return "none"
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        return " or ".join(describe_type(option) for option in get_args(annotation))
    if origin in (list, tuple) or annotation in (list, tuple):
        return "a list"
    return _BASIC.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _field_types(cls: type) -> dict[str, Any]:
    """The fields' types, resolved where they can be (string annotations under ``from __future__ import annotations``
    name their types; one that cannot be resolved here is left as its string, and is never a nested dataclass)."""
    try:
        return get_type_hints(cls)
    except NameError:
        return {field.name: field.type for field in fields(cls)}
