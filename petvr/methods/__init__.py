"""Methods: one file per method, each with its config dataclass and one registry entry."""
from .base import Method, create_method, list_methods, make_method_config, method_config_class, register_method
from . import clip4clip, zero_shot  # noqa: F401  (register the methods)
from .model import RetrievalModel

__all__ = ["Method", "RetrievalModel", "create_method", "list_methods", "make_method_config", "method_config_class", "register_method"]
