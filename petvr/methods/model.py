"""The retrieval model: one frozen backbone plus one method.

``RetrievalModel(backbone, "clip4clip", sim_header="seqTransf")`` freezes the backbone, lets the method plug in,
then marks as trainable exactly the method's new weights and the backbone weights the method asks for.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..adapters import (find_adapter_backbone, load_adapter_weights, read_adapter_description, resolve_adapter_folder,
                        save_adapter)
from ..backbone import CLIP, create_backbone
from ..backbone.checkpoints import backbone_weight_hash
from .base import VideoFeatures, create_method, list_methods, map_video_features


class RetrievalModel(nn.Module):
    def __init__(self, backbone: CLIP, method: str, *, backbone_hash: str | None = None, **method_config: Any):
        """``backbone_hash``: the backbone's ``backbone_weight_hash`` when the caller has just computed it (hashing a
        ViT-B takes seconds); otherwise it is computed here."""
        super().__init__()
        self.backbone = backbone
        self.adapter_description: dict | None = None  # adapter.json, when loaded by from_adapter
        # Hashed before the method renames anything it wraps; meta backbones (parameter counts) have no weights.
        on_meta = next(backbone.parameters()).is_meta
        self.backbone_hash = None if on_meta else backbone_hash or backbone_weight_hash(backbone)
        original = dict(backbone.named_parameters())  # names from before the method wraps anything
        self.backbone_parameter_count = sum(p.numel() for p in original.values())
        backbone.requires_grad_(False)
        self.method = create_method(method, backbone, **method_config)
        requested = set(self.method.backbone_parameters_to_train(list(original)))
        unknown = sorted(requested - set(original))
        if unknown:
            raise ValueError(f"method {method!r} asks to train backbone weight(s) that do not exist: {unknown[:5]}"
                             f" ({len(unknown)} in all); the backbone's weights are named like {next(iter(original))!r}")
        present = {id(p) for p in self.parameters()}
        replaced = sorted(name for name in requested if id(original[name]) not in present)
        if replaced:
            raise ValueError(f"method {method!r} asks to train backbone weight(s) it replaced: {replaced[:5]}")
        # Trainable: every weight the method added (its modules, and those it wrapped into the backbone), plus the
        # original backbone weights it names. Original weights it replaced or wrapped stay frozen.
        self.original_backbone_ids = {id(p) for p in original.values()}
        self.trained_backbone_names = sorted(requested)  # the backbone's own weights this model trains
        trained_ids = {id(original[name]) for name in requested}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) not in self.original_backbone_ids or id(parameter) in trained_ids)

    @classmethod
    def from_adapter(cls, folder: str | Path, backbone: CLIP | None = None, check_backbone: bool = True,
                     device: torch.device | str | None = None) -> "RetrievalModel":
        """Rebuild a trained model from an adapter folder in one call; ``model.adapter_description`` holds its
        ``adapter.json``.

        Without ``backbone`` the one recorded in ``adapter.json`` is found by ``find_adapter_backbone`` (the recorded
        checkpoint, else the same file or the backbone's name in ``$PETVR_CHECKPOINT_DIR``, else the bundled
        default; the weight hash must match). A given ``backbone`` must have the recorded weight hash unless
        ``check_backbone=False``; it is never changed: the model is built on ``shared_view(backbone)``, so one
        loaded backbone serves any number of adapters in one process.
        """
        folder = resolve_adapter_folder(Path(folder))
        description = read_adapter_description(folder)
        method, options = description["method"], description["method_config"]
        if method not in list_methods():
            raise ValueError(f"{folder / 'adapter.json'}: unknown method {method!r}; this petvr has "
                             f"{', '.join(list_methods())} (was the adapter made by a newer petvr?)")
        known_hash = None
        if backbone is None:  # found by its hash, so it need not be hashed again
            backbone, known_hash = find_adapter_backbone(description, folder), description["backbone"]["weight_hash"]
        else:
            shape_only = cls(create_backbone(backbone.config, device="meta"), method, **options)
            backbone = shared_view(backbone, own_copies=shape_only.trained_backbone_names)
        model = cls(backbone, method, backbone_hash=known_hash, **options)
        expected = description["backbone"]
        if check_backbone and model.backbone_hash != expected.get("weight_hash"):
            raise ValueError(
                f"{folder}: this adapter was trained on backbone {expected.get('name')!r} with weight hash "
                f"{expected.get('weight_hash')}, but the given backbone has hash {model.backbone_hash}; load the "
                "backbone it was trained on (or pass check_backbone=False if you know what you are doing)")
        recorded_config = expected.get("config")
        if check_backbone and recorded_config is not None and recorded_config != backbone.config.to_dict():
            differences = {key: (recorded_config.get(key), value) for key, value in backbone.config.to_dict().items()
                           if recorded_config.get(key) != value}
            raise ValueError(f"{folder}: the backbone's config differs from the one this adapter was trained with "
                             f"(recorded vs given: {differences}); the weights match, so load them under the model "
                             f"name that fits, e.g. a '-quickgelu' name for OpenAI's activation")
        load_adapter_weights(model, folder)
        model.adapter_description = description
        return model.to(device) if device is not None else model

    def save_adapter(self, folder: str | Path, recipe: dict | None = None, metrics: dict | None = None) -> Path:
        """Write the trained weights (``adapter.safetensors``) and their description (``adapter.json``) atomically."""
        return save_adapter(self, folder, recipe, metrics)

    @property
    def method_name(self) -> str:
        return self.method.method_name

    def method_config_dict(self) -> dict[str, Any]:
        return asdict(self.method.config)

    @property
    def logit_scale(self) -> Tensor:
        return self.backbone.logit_scale.exp()

    def encode_text(self, token_ids: Tensor, token_mask: Tensor) -> Tensor:
        """(B, L) -> (B, D), float32 whatever the backbone's storage dtype."""
        return self.method.encode_text(self.backbone, token_ids, token_mask).float()

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> VideoFeatures:
        """(B, T, 3, H, W), (B, T) -> per-frame embeddings (B, T, D) (or the method's dict of per-video tensors,
        ``VideoFeatures``), float32."""
        return map_video_features(Tensor.float, self.method.encode_video(self.backbone, frames, frame_mask))

    def similarity(self, text_embeddings: Tensor, frame_embeddings: VideoFeatures, frame_mask: Tensor) -> Tensor:
        """(Nt, D), (Nv, T, D) (or ``encode_video``'s dict), (Nv, T) -> logits (Nt, Nv)."""
        return self.method.similarity(text_embeddings, frame_embeddings, frame_mask, self.logit_scale)

    def forward(self, token_ids: Tensor, token_mask: Tensor, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """Logits (B, B) of a batch of B (caption, video) pairs."""
        return self.similarity(self.encode_text(token_ids, token_mask), self.encode_video(frames, frame_mask), frame_mask)

    def parameter_group(self, name: str) -> str:
        """The learning-rate group of trainable weight ``name``, as the method assigns it (``Method.parameter_group``)."""
        return self.method.parameter_group(name, id(self.get_parameter(name)) in self.original_backbone_ids)

    def store_weights(self, precision: str) -> None:
        """Put the weights in ``precision``'s storage dtype, by the method's policy (``Method.store_weights``)."""
        self.method.store_weights(self.backbone, precision, self.original_backbone_ids)

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Only the trained weights, by name: what an adapter checkpoint holds."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, Tensor], source: str = "adapter") -> None:
        """Load trained weights; the names and shapes must match this model's trainable weights exactly."""
        own = dict(self.named_parameters())
        expected = {name for name, p in own.items() if p.requires_grad}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"{source}: weights do not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}"
                             f" ({len(missing)} missing, {len(unexpected)} unexpected)")
        with torch.no_grad():
            for name, tensor in state.items():
                if own[name].shape != tensor.shape:
                    raise ValueError(f"{source}: {name} has shape {tuple(tensor.shape)}, the model expects {tuple(own[name].shape)}")
                own[name].copy_(tensor)

    def parameter_report(self) -> dict[str, Any]:
        """Trainable counts: the method's new weights, backbone weights it unfroze, and % of the backbone."""
        new = unfrozen = 0
        for parameter in self.parameters():
            if parameter.requires_grad:
                if id(parameter) in self.original_backbone_ids:
                    unfrozen += parameter.numel()
                else:
                    new += parameter.numel()
        total = self.backbone_parameter_count
        return {
            "method": self.method_name,
            "trainable": new + unfrozen,
            "new_parameters": new,
            "unfrozen_backbone_parameters": unfrozen,
            "backbone_parameters": total,
            "trainable_percent_of_backbone": 100.0 * (new + unfrozen) / total,
            "new_percent_of_backbone": 100.0 * new / total,
        }

    def format_parameter_report(self) -> str:
        r = self.parameter_report()
        return (f"{r['method']}: {r['trainable']:,} trainable ({r['trainable_percent_of_backbone']:.3f}% of the "
                f"{r['backbone_parameters']:,}-parameter backbone): {r['new_parameters']:,} new, "
                f"{r['unfrozen_backbone_parameters']:,} unfrozen backbone")


def shared_view(backbone: CLIP, own_copies: Iterable[str] = ()) -> CLIP:
    """A structural copy of ``backbone`` whose weights share storage with it (no memory is copied), except the
    weights named in ``own_copies``, which are cloned. A method may wrap the view's modules and freeze or load its
    weights without changing ``backbone``: its module tree and its parameters' flags stay as they were."""
    own_copies = set(own_copies)
    memo: dict[int, Any] = {}
    for name, parameter in backbone.named_parameters():
        if name not in own_copies:
            memo[id(parameter)] = nn.Parameter(parameter.detach(), requires_grad=False)
    for buffer in backbone.buffers():
        memo[id(buffer)] = buffer
    return copy.deepcopy(backbone, memo)
