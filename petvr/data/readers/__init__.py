"""Annotation readers, one module per format, all returning a ``RetrievalSplit`` of ``VideoRecord``s.

``read_dataset("msrvtt", annotation_dir=..., video_dir=..., split="test")`` is the way in; ``READERS`` maps each
name to its reader function, whose docstring gives its files and arguments. Every reader takes
``skip_unreadable``: ``False`` raises a ``DataError`` naming the file and row of the first bad item, ``True`` leaves bad
items out and lists them in the split's ``skipped`` report (bare folders have no annotations to skip).
"""
from __future__ import annotations

from typing import Any, Callable

from petvr.data.readers.activitynet import read_activitynet
from petvr.data.readers.custom import read_custom, read_video_folder
from petvr.data.readers.didemo import read_didemo
from petvr.data.readers.lsmdc import read_lsmdc
from petvr.data.readers.msrvtt import read_msrvtt
from petvr.data.readers.msvd import read_msvd
from petvr.data.readers.vatex import read_vatex
from petvr.data.readers.youcook2 import read_youcook2
from petvr.data.records import RetrievalSplit

READERS: dict[str, Callable[..., RetrievalSplit]] = {
    "msrvtt": read_msrvtt,
    "msvd": read_msvd,
    "lsmdc": read_lsmdc,
    "activitynet": read_activitynet,
    "didemo": read_didemo,
    "vatex": read_vatex,
    "youcook2": read_youcook2,
    "custom": read_custom,
    "folder": read_video_folder,
}


def list_datasets() -> list[str]:
    return sorted(READERS)


def read_dataset(name: str, **kwargs: Any) -> RetrievalSplit:
    """Read a dataset split with the reader registered under ``name`` (see ``READERS``)."""
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return READERS[name](**kwargs)


__all__ = ["READERS", "list_datasets", "read_dataset", "read_activitynet", "read_custom", "read_didemo", "read_lsmdc",
           "read_msrvtt", "read_msvd", "read_vatex", "read_video_folder", "read_youcook2"]
