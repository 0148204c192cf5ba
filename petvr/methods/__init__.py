"""Methods: one file per method, each with its config dataclass and one registry entry.

The toolkit a method file builds on: ``Method`` and its config bases ``MethodConfig`` / ``WrappingConfig``
(``base.py``), ``wrap_modules`` and ``Wrapper`` (``wrapping.py``), the similarity heads and ``register_head``
(``heads.py``), and the backbone's two-step ``Attention`` (``project`` / ``attend``) and ``TowerContext``.

Every module of this package is imported here, so a new method file registers itself by being present: adding a
method edits no other file.
"""
import importlib
import pkgutil

from .base import (Method, MethodConfig, WrappingConfig, create_method, list_methods, make_method_config,
                   method_config_class, method_options, method_summary, option, register_method)
from .heads import build_head, list_heads, register_head
from .model import RetrievalModel
from .wrapping import Borrowed, Wrapper, WrapSite, wrap_modules

__all__ = ["Borrowed", "Method", "MethodConfig", "RetrievalModel", "WrapSite", "Wrapper", "WrappingConfig", "build_head",
           "create_method", "list_heads", "list_methods", "make_method_config", "method_config_class",
           "method_options", "method_summary", "option", "register_head", "register_method", "wrap_modules"]

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")  # each method file registers its method (and heads)
