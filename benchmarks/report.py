"""Parts of one docs page written by different benchmarks: each part sits between ``<!-- NAME:start -->`` and
``<!-- NAME:end -->``, so a script rewrites its own part and keeps the others (``docs/results.md``: the methods table
from ``methods.py``, the clip-editing results from ``editing.py``)."""
from __future__ import annotations


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def section_of(text: str, name: str) -> str | None:
    """The text between ``name``'s markers, or None where the page has none."""
    start, end = markers(name)
    if start not in text or end not in text:
        return None
    return text.split(start, 1)[1].split(end, 1)[0]


def with_section(text: str, name: str, section: str) -> str:
    """``text`` with ``section`` between ``name``'s markers: replacing what was there, else appended at the end."""
    start, end = markers(name)
    body = start + "\n" + section.strip("\n") + "\n" + end
    if section_of(text, name) is None:
        return text.rstrip("\n") + "\n\n" + body + "\n"
    head, rest = text.split(start, 1)
    return head + body + rest.split(end, 1)[1]
