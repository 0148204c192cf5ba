"""The method interface and registry (timm style: ``register_method``, ``create_method``, ``list_methods``).

A method is an ``nn.Module`` that owns the few weights it trains. At construction it may change the backbone only
through the backbone's extension points (wrap ``block.attn`` / ``block.mlp`` / ``visual.conv1``, add token hooks);
it encodes text and video (by default, the plain backbone) and scores them with a similarity head.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from ..backbone import CLIP
from ..backbone.blocks import cast_matrix_weights
from ..typed_config import dataclass_from_dict
from .heads import list_heads
from .wrapping import TOWERS

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
    return dataclass_from_dict(method_config_class(name), overrides, f"method {name!r}")


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


def option(default: Any, help: str, allowed: Any = None) -> Any:
    """A config field with its meaning ``help`` and, where constrained, its ``allowed`` values: a tuple of the choices,
    a function listing them (``list_heads``), or a phrase (``"[0, 1)"``). ``petvr methods`` prints both. Every field
    of a method config is declared this way (``tests/test_methods_cli.py`` checks it)."""
    return field(default=default, metadata={"help": help, "allowed": allowed})


@dataclass(frozen=True)
class OptionDescription:
    """One config field as ``petvr methods`` shows it; ``allowed`` is "" where any value of the type is accepted."""

    name: str
    type: str
    default: Any
    help: str
    allowed: str


def method_summary(name: str) -> str:
    """The first paragraph of the method's module docstring, on one line."""
    _check_known(name)
    docstring = sys.modules[_REGISTRY[name][0].__module__].__doc__ or ""
    return " ".join(docstring.strip().split("\n\n")[0].split())


def method_options(name: str) -> list[OptionDescription]:
    """Every field of method ``name``'s config: type, default, meaning and allowed values (from ``option``)."""
    return [OptionDescription(item.name, str(item.type), item.default, item.metadata.get("help", ""),
                              _describe_allowed(item.metadata.get("allowed")))
            for item in fields(method_config_class(name))]


def _describe_allowed(allowed: Any) -> str:
    if callable(allowed):
        allowed = tuple(allowed())
    if isinstance(allowed, tuple):
        return ", ".join(repr(choice) for choice in allowed)
    return allowed or ""


TOWERS_ALLOWED = f"a non-empty subset of {tuple(TOWERS)}"

VideoFeatures = Tensor | dict[str, Tensor]
"""What ``encode_video`` gives for a batch of B videos: per-frame embeddings (B, T, D), or a dict of per-video
tensors (each with B rows along dim 0) holding them under ``"frames"`` beside whatever else the method's pairwise
scoring reads (e.g. per-frame patch features). Evaluation encodes each video once and keeps all of it, then scores
block by block; the towers never run per (text, video) pair."""


def frame_embeddings_of(video: VideoFeatures) -> Tensor:
    """The per-frame embeddings (B, T, D) of ``encode_video``'s output."""
    return video["frames"] if isinstance(video, dict) else video


def map_video_features(function: Callable[[Tensor], Tensor], video: VideoFeatures) -> VideoFeatures:
    """``function`` applied to the tensor, or to each tensor of the dict."""
    return {key: function(value) for key, value in video.items()} if isinstance(video, dict) else function(video)


def concat_video_features(chunks: Sequence[VideoFeatures]) -> VideoFeatures:
    """Batches of ``encode_video`` output joined along the videos (dim 0)."""
    if isinstance(chunks[0], dict):
        return {key: torch.cat([chunk[key] for chunk in chunks]) for key in chunks[0]}
    return torch.cat(list(chunks))


@dataclass
class MethodConfig:
    """Fields every method config has."""

    sim_header: str = option("meanP", "the similarity head that scores a text against a video's frames (heads.py)",
                             list_heads)


@dataclass
class WrappingConfig(MethodConfig):
    """A method that wraps backbone blocks (see ``wrapping.wrap_modules``)."""

    towers: tuple[str, ...] = option(("vision", "text"), "the towers whose blocks are wrapped", TOWERS_ALLOWED)
    layers: tuple[int, ...] | None = option(
        None, "the block indices wrapped in each tower",
        "None (every block) or a list of block indices, negative counting from the end")

    def __post_init__(self) -> None:  # lists from JSON / TOML become tuples, so configs compare equal after a round trip
        self.towers = tuple(self.towers)
        if self.layers is not None:
            self.layers = tuple(self.layers)


class Method(nn.Module):
    """Base class. Subclasses set ``self.head`` (a ``SimilarityHead``) and override what they change.

    Trainable parameters are every parameter the method adds (its own modules and anything it wraps into the
    backbone) plus the backbone parameters named by ``backbone_parameters_to_train``; ``RetrievalModel`` sets
    ``requires_grad`` accordingly. A method also owns its training details, so the trainer never learns its name:
    the learning-rate group of each trainable weight (``parameter_group``, ``lr_multipliers``), extra loss terms
    (``loss_terms``) and the storage dtype of its weights (``store_weights``).
    """

    method_name: str = ""

    def __init__(self, backbone: CLIP, config: Any):
        super().__init__()
        self.config = config

    def backbone_parameters_to_train(self, names: Sequence[str]) -> Iterable[str]:
        """Which of the backbone's own weights this method trains, from ``names``: every backbone weight name as
        ``backbone.named_parameters()`` gave it before the method wrapped anything. Naming anything else is an error."""
        return ()

    @property
    def identity_at_init(self) -> bool:
        """True when, at initialisation, text and frame embeddings equal the frozen backbone's (checked for every
        method by the contract tests)."""
        return False

    def encode_text(self, backbone: CLIP, token_ids: Tensor, token_mask: Tensor) -> Tensor:
        """(B, L) -> (B, D)."""
        return backbone.encode_text(token_ids, token_mask)

    def encode_video(self, backbone: CLIP, frames: Tensor, frame_mask: Tensor) -> VideoFeatures:
        """(B, T, 3, H, W), (B, T) -> per-frame embeddings (B, T, D), or a dict of per-video tensors holding them
        under ``"frames"`` (``VideoFeatures``); a method that returns a dict scores it in its own ``similarity``."""
        return backbone.encode_frames(frames, frame_mask)

    @property
    def pairwise(self) -> bool:
        """True when scoring needs every (text, video) pair together, so evaluation runs block-wise."""
        return self.head.pairwise

    def similarity(self, text_embeddings: Tensor, frame_embeddings: VideoFeatures, frame_mask: Tensor,
                   logit_scale: Tensor) -> Tensor:
        """(Nt, D), (Nv, T, D) (or ``encode_video``'s dict), (Nv, T), scalar -> logits (Nt, Nv)."""
        return self.head(text_embeddings, frame_embeddings, frame_mask, logit_scale)

    # -- training details the method owns --
    def parameter_group(self, name: str, is_backbone_weight: bool) -> str:
        """The learning-rate group of trainable weight ``name`` (its name in the ``RetrievalModel``).

        By default the backbone's own weights are ``"backbone"`` (trained at ``lr * coef_lr``, CLIP4Clip's rule) and
        every new weight is ``"new"`` (``lr``). A method that unfreezes backbone weights as its adapter (BitFit's
        biases) returns ``"new"`` for them, or a group of its own with a multiplier in ``lr_multipliers``.
        """
        return "backbone" if is_backbone_weight else "new"

    def lr_multipliers(self, coef_lr: float) -> dict[str, float]:
        """Each group's multiplier of the recipe's ``lr``; ``coef_lr`` is the recipe's backbone coefficient."""
        return {"backbone": coef_lr, "new": 1.0}

    def loss_terms(self, text_embeddings: Tensor, frame_embeddings: Tensor, frame_mask: Tensor,
                   logits: Tensor) -> dict[str, Tensor]:
        """Extra scalar loss terms, by name, added to the contrastive loss of a training batch (none by default)."""
        return {}

    def store_weights(self, backbone: CLIP, precision: str, backbone_weight_ids: set[int]) -> None:
        """Put the weights in ``precision``'s storage dtype. Under ``"fp16-weights"`` (CLIP4Clip's mode) the backbone's
        own matrices become fp16 and every weight the method added stays float32, inside the backbone or not
        (wrappers cast their input, see ``wrapping.Wrapper``). ``backbone_weight_ids`` are the ``id``s of the
        backbone's own parameters."""
        if precision == "fp16-weights":
            cast_matrix_weights(backbone, torch.float16, only=backbone_weight_ids)
