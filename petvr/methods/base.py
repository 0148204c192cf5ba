"""The method interface and registry (timm style: ``register_method``, ``create_method``, ``list_methods``).

A method is an ``nn.Module`` that owns the few weights it trains. At construction it may change the backbone only
through the backbone's extension points (wrap ``block.attn`` / ``block.mlp`` / ``visual.conv1``, add token hooks);
it encodes text and video (by default, the plain backbone) and scores them with a similarity head.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor, nn

from ..backbone import CLIP

_REGISTRY: dict[str, tuple[type["Method"], type]] = {}


def register_method(name: str, config_class: type) -> Callable[[type["Method"]], type["Method"]]:
    """Class decorator: ``@register_method("clip4clip", CLIP4ClipConfig)``."""

    def decorate(method_class: type["Method"]) -> type["Method"]:
        if name in _REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        method_class.method_name = name
        _REGISTRY[name] = (method_class, config_class)
        return method_class

    return decorate


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_config_class(name: str) -> type:
    _check_known(name)
    return _REGISTRY[name][1]


def make_method_config(name: str, **overrides: Any):
    """The method's config dataclass with the paper's defaults, overridden by ``overrides`` (unknown keys rejected)."""
    config_class = method_config_class(name)
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"method {name!r} has no option(s) {unknown}; its options are {sorted(known)}")
    return config_class(**overrides)


def create_method(name: str, backbone: CLIP, **overrides: Any) -> "Method":
    """Build method ``name`` on ``backbone`` (which it may wrap in place) with its config overridden by ``overrides``.

    The method's modules are created on the backbone's device (the meta device included, for parameter counts).
    """
    config = make_method_config(name, **overrides)
    with torch.device(next(backbone.parameters()).device):
        return _REGISTRY[name][0](backbone, config)


def _check_known(name: str) -> None:
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(list_methods())}")


class Method(nn.Module):
    """Base class. Subclasses set ``self.head`` (a ``SimilarityHead``) and override what they change.

    Trainable parameters are every parameter the method adds (its own modules and anything it wraps into the
    backbone) plus the backbone parameters named by ``backbone_parameters_to_train``; ``RetrievalModel`` sets
    ``requires_grad`` accordingly.
    """

    method_name: str = ""

    def __init__(self, backbone: CLIP, config: Any):
        super().__init__()
        self.config = config

    def backbone_parameters_to_train(self, backbone: CLIP) -> Iterable[str]:
        """Names (in ``backbone.named_parameters()``) of original backbone weights this method trains."""
        return ()

    def encode_text(self, backbone: CLIP, token_ids: Tensor, token_mask: Tensor) -> Tensor:
        """(B, L) -> (B, D)."""
        return backbone.encode_text(token_ids, token_mask)

    def encode_video(self, backbone: CLIP, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """(B, T, 3, H, W), (B, T) -> per-frame embeddings (B, T, D)."""
        return backbone.encode_frames(frames, frame_mask)

    @property
    def pairwise(self) -> bool:
        """True when scoring needs every (text, video) pair together, so evaluation runs block-wise."""
        return self.head.pairwise

    def similarity(self, text_embeddings: Tensor, frame_embeddings: Tensor, frame_mask: Tensor, logit_scale: Tensor) -> Tensor:
        """(Nt, D), (Nv, T, D), (Nv, T), scalar -> logits (Nt, Nv)."""
        return self.head(text_embeddings, frame_embeddings, frame_mask, logit_scale)
