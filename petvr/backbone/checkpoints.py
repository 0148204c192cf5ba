"""Backbone checkpoint readers: OpenAI, open_clip, Hugging Face and petvr weights into one ``CLIP``.

Reading happens in three steps, each its own function:

1. ``read_checkpoint(path)`` detects the container (TorchScript archive, ``torch.save`` pickle, safetensors file,
   Hugging Face folder) and returns its tensors. Pickles are read with ``torch.load(weights_only=True)`` only, and
   TorchScript archives as data (``torchscript.py``), never with ``torch.jit.load``: no code from a file runs on load.
2. ``to_petvr_state_dict`` recognises the key layout (OpenAI / open_clip, Hugging Face ``CLIPModel``, petvr) and renames
   and reshapes the tensors into petvr's keys (OpenAI's keys with the text tower under ``text.``).
3. ``infer_config`` reads the architecture from the tensor shapes, as OpenAI's ``build_model`` does; heads and the
   activation are not in the shapes, so they come from the checkpoint's own record when it has one (Hugging Face and
   petvr configs; a TorchScript archive's activation modules), else from the named model config, else from the
   conventions (64-wide heads, QuickGELU).

Model names follow open_clip: ``ViT-B-32`` is GELU, ``ViT-B-32-quickgelu`` is OpenAI's QuickGELU. OpenAI's TorchScript
archives record QuickGELU, so they load under ``-quickgelu`` names (or no name) and are refused under the GELU name;
a plain state dict records no activation, so its name (or ``quick_gelu=``) decides, as in open_clip.

``load_backbone`` ties them together, checks every key and shape, and loads strictly.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors
from torch import Tensor

from ..atomic import atomic_write
from ..errors import DataError
from .clip import CLIP
from .config import QUICK_GELU_SUFFIX, CLIPConfig, TextConfig, VisionConfig, get_model_config, list_model_configs
from .torchscript import read_torchscript_weights

SUPPORTED_FORMATS = (
    "OpenAI TorchScript archive (e.g. ViT-B-32.pt as OpenAI ships it)",
    "OpenAI or open_clip state dict saved with torch.save (keys may carry a 'module.' prefix; "
    "open_clip training checkpoints {'state_dict': ...} too)",
    "Hugging Face CLIPModel folder (config.json + model.safetensors, model.safetensors.index.json "
    "or pytorch_model.bin)",
    "a .safetensors file with OpenAI/open_clip, Hugging Face or petvr keys",
)
CHECKPOINT_DIR_ENV = "PETVR_CHECKPOINT_DIR"
EMBEDDED_MODEL = "petvr-tiny"
DEFAULT_HEAD_WIDTH = 64

_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_OPENAI_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
_HF_BLOCK_RENAMES = {
    "self_attn.out_proj.": "attn.out_proj.",
    "layer_norm1.": "ln_1.",
    "layer_norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
}
_HF_RENAMES = {
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "text.token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "text.positional_embedding",
    "text_model.final_layer_norm.weight": "text.ln_final.weight",
    "text_model.final_layer_norm.bias": "text.ln_final.bias",
    "logit_scale": "logit_scale",
}
_HF_TRANSPOSED = {"visual_projection.weight": "visual.proj", "text_projection.weight": "text.text_projection"}
_HF_TOWERS = {"vision_model": "visual", "text_model": "text"}
_HF_ACTIVATIONS = {"quick_gelu": True, "gelu": False}
_TORCHSCRIPT_ACTIVATIONS = {"QuickGELU": True, "GELU": False}  # the MLP activation modules' class names


class CheckpointError(DataError):
    """A backbone checkpoint that cannot be read or does not fit: names the file and the key or shape."""


@dataclass
class RawCheckpoint:
    """A checkpoint's tensors as stored, before renaming; ``container`` says which reader read them,
    ``hf_config`` / ``petvr_config`` hold the checkpoint's own config when it has one, and ``quick_gelu`` the
    activation a TorchScript archive's code uses."""

    path: Path
    container: str
    tensors: dict[str, Tensor]
    hf_config: dict | None = None
    petvr_config: dict | None = None
    quick_gelu: bool | None = None


@dataclass
class ArchitectureFacts:
    """What a checkpoint says beyond its shapes: heads per tower and the activation, each ``None`` when unknown."""

    vision_heads: int | None = None
    text_heads: int | None = None
    quick_gelu: bool | None = None
    source: str = "tensor shapes"


def _formats_list() -> str:
    return "supported formats:\n" + "\n".join(f"  - {entry}" for entry in SUPPORTED_FORMATS)


# ---------------------------------------------------------------------------------------------------------------------
# Step 1: containers
# ---------------------------------------------------------------------------------------------------------------------

def read_checkpoint(path: str | Path) -> RawCheckpoint:
    """Read the tensors of any supported container (see ``SUPPORTED_FORMATS``) without interpreting their names."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _read_hf_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file or folder")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        raise CheckpointError(path, "the file is empty")
    if head.startswith(b"PK\x03\x04"):
        return _read_zip_archive(path)
    if head[0] == 0x80:  # a pickle protocol opcode: torch.save's legacy (non-zip) format
        return RawCheckpoint(path, "torch.save (legacy)", state_dict_from_pickle(path))
    if _looks_like_safetensors(head, path):
        return _read_safetensors(path)
    raise CheckpointError(path, f"unknown checkpoint format (starts with {head[:8]!r}); {_formats_list()}")


def _looks_like_safetensors(head: bytes, path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header."""
    header_length = int.from_bytes(head[:8], "little")
    return len(head) > 8 and head[8:9] == b"{" and 0 < header_length < path.stat().st_size


def _read_zip_archive(path: Path) -> RawCheckpoint:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(path, f"truncated or corrupt zip archive ({error}); download or save it again") from error
    if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
        return _read_torchscript(path)
    return RawCheckpoint(path, "torch.save", state_dict_from_pickle(path))


def _read_torchscript(path: Path) -> RawCheckpoint:
    """OpenAI's archives: the parameters of the scripted model (its buffers, such as ``attn_mask``, and the scalar
    attributes ``input_resolution`` / ``context_length`` / ``vocab_size`` are not weights). The archive also keeps
    its modules' classes, so the MLP activation (``QuickGELU`` in OpenAI's, ``GELU`` in a traced open_clip GELU
    model) is read from them. Read as data: the archive's code is never compiled or run."""
    try:
        archive = read_torchscript_weights(path)
    except DataError as error:
        raise CheckpointError(path, error.problem) from None
    activations = {_TORCHSCRIPT_ACTIVATIONS[name] for name in archive.module_classes.values()
                   if name in _TORCHSCRIPT_ACTIVATIONS}
    return RawCheckpoint(path, "TorchScript", archive.parameters,
                         quick_gelu=activations.pop() if len(activations) == 1 else None)


def state_dict_from_pickle(path: Path, containers: tuple[str, ...] = ("state_dict",),
                           allowed_globals: tuple[type, ...] = ()) -> dict[str, Tensor]:
    """The tensors of a ``torch.save`` file, read with ``weights_only=True`` (plus ``allowed_globals``, plain data
    classes a training checkpoint may hold beside its weights), unwrapped from the first of ``containers`` it has
    (open_clip's training checkpoints keep the state dict under ``"state_dict"``)."""
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights only" not in str(error).lower():
            raise CheckpointError(path, f"truncated or corrupt torch.save file: {error}") from error
        raise CheckpointError(
            path,
            "refused: the file holds Python objects other than tensors, and petvr only reads weights "
            "(torch.load(weights_only=True)); save a plain state dict instead",
        ) from error
    except Exception as error:  # truncated zip records, bad storages: RuntimeError / EOFError / ValueError
        raise CheckpointError(path, f"truncated or corrupt torch.save file: {str(error).splitlines()[0]}") from error
    container = next((name for name in containers if isinstance(loaded, dict) and isinstance(loaded.get(name), dict)),
                     None)
    if container is not None:
        loaded = loaded[container]
    if not isinstance(loaded, dict):
        raise CheckpointError(path, f"expected a state dict, found a {type(loaded).__name__}; {_formats_list()}")
    not_tensors = [key for key, value in loaded.items() if not isinstance(value, Tensor)]
    if not_tensors:
        raise CheckpointError(
            path, f"expected a state dict of tensors, but {not_tensors[0]!r} holds a "
            f"{type(loaded[not_tensors[0]]).__name__}; {_formats_list()}"
        )
    return dict(loaded)


def _read_safetensors(path: Path) -> RawCheckpoint:
    try:
        tensors = load_safetensors(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(path, f"truncated or corrupt safetensors file: {error}") from error
    try:
        petvr_config = json.loads(metadata["petvr_config"]) if "petvr_config" in metadata else None
    except json.JSONDecodeError as error:
        raise CheckpointError(path, f"the 'petvr_config' metadata is not valid JSON: {error}") from error
    return RawCheckpoint(path, "safetensors", tensors, petvr_config=petvr_config)


def _read_hf_folder(folder: Path) -> RawCheckpoint:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            folder, f"folder has no config.json, so it is not a Hugging Face model folder; {_formats_list()}"
        )
    try:
        hf_config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(config_path, f"not valid JSON: {error}") from error
    if hf_config.get("model_type") != "clip":
        raise CheckpointError(
            config_path,
            f"model_type is {hf_config.get('model_type')!r}; only Hugging Face CLIPModel ('clip') is supported",
        )
    weights = next((folder / name for name in _HF_WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise CheckpointError(folder, f"folder has no weights: expected one of {', '.join(_HF_WEIGHT_FILES)}")
    if weights.name.endswith(".index.json"):
        tensors = _read_sharded_safetensors(weights)
    else:
        tensors = read_checkpoint(weights).tensors
    return RawCheckpoint(weights, "Hugging Face folder", tensors, hf_config=hf_config)


def _read_sharded_safetensors(index_path: Path) -> dict[str, Tensor]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError) as error:
        raise CheckpointError(index_path, f"not a safetensors index (needs a 'weight_map'): {error}") from error
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        tensors.update(_read_safetensors(index_path.parent / shard).tensors)
    return tensors


# ---------------------------------------------------------------------------------------------------------------------
# Step 2: key layouts
# ---------------------------------------------------------------------------------------------------------------------

def detect_layout(tensors: dict[str, Tensor], path: Path) -> str:
    """``"petvr"``, ``"huggingface"`` or ``"openai"`` (also open_clip's) from the key names."""
    if "text.token_embedding.weight" in tensors:
        return "petvr"
    if "vision_model.embeddings.patch_embedding.weight" in tensors:
        return "huggingface"
    if "visual.conv1.weight" in tensors and "token_embedding.weight" in tensors:
        return "openai"
    if "visual.layer1.0.conv1.weight" in tensors:
        raise CheckpointError(path, "this is a ResNet CLIP; petvr's backbone is a ViT")
    sample = ", ".join(sorted(tensors)[:5]) or "no tensors"
    raise CheckpointError(
        path, f"the keys do not look like a CLIP ViT checkpoint (first keys: {sample}); {_formats_list()}"
    )


def _strip_prefix(tensors: dict[str, Tensor], prefix: str = "module.") -> dict[str, Tensor]:
    """Drop the DataParallel / DDP prefix when every key carries it."""
    if tensors and all(key.startswith(prefix) for key in tensors):
        return {key[len(prefix):]: value for key, value in tensors.items()}
    return tensors


@dataclass
class PetvrStateDict:
    """Tensors under petvr's key names; ``stored_names`` maps a renamed key back to its name in the file."""

    tensors: dict[str, Tensor]
    layout: str
    stored_names: dict[str, str] = field(default_factory=dict)

    def describe(self, key: str) -> str:
        stored = self.stored_names.get(key)
        return f"{key} (stored as {stored})" if stored and stored != key else key


def _from_openai(tensors: dict[str, Tensor]) -> PetvrStateDict:
    """OpenAI / open_clip keys -> petvr keys: the text tower's top-level keys move under ``text.``."""
    converted = PetvrStateDict({}, "OpenAI/open_clip")
    for key, value in tensors.items():
        new_key = f"text.{key}" if key.startswith(_OPENAI_TEXT_KEYS) else key
        converted.tensors[new_key] = value
        converted.stored_names[new_key] = key
    return converted


def _from_huggingface(tensors: dict[str, Tensor], path: Path) -> PetvrStateDict:
    """Hugging Face ``CLIPModel`` -> petvr: fuse q/k/v into ``in_proj``, transpose the projections, rename the rest.
    Keys this does not know are passed through unchanged so that the strict check reports them."""
    converted = PetvrStateDict({}, "Hugging Face")
    fused: dict[str, dict[str, Tensor]] = {}
    block_key = re.compile(r"^(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)$")
    for key, value in tensors.items():
        if key.endswith("embeddings.position_ids"):
            continue  # an index buffer older transformers versions saved
        new_key = key
        if key in _HF_RENAMES:
            new_key = _HF_RENAMES[key]
        elif key in _HF_TRANSPOSED:
            new_key, value = _HF_TRANSPOSED[key], value.t().contiguous()
        elif match := block_key.match(key):
            tower, index, rest = match.groups()
            prefix = f"{_HF_TOWERS[tower]}.transformer.resblocks.{index}."
            projection = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
            if projection:
                new_key = prefix + f"attn.in_proj_{projection.group(2)}"
                fused.setdefault(new_key, {})[projection.group(1)] = value
                converted.stored_names[new_key] = key.replace(f".{projection.group(1)}_proj.", ".{q,k,v}_proj.")
                continue
            renamed = (rest.replace(old, new, 1) for old, new in _HF_BLOCK_RENAMES.items() if rest.startswith(old))
            new_key = prefix + next(renamed, rest)
        converted.tensors[new_key] = value
        converted.stored_names[new_key] = key
    for key, parts in fused.items():
        if set(parts) != {"q", "k", "v"}:
            missing = "/".join(sorted({"q", "k", "v"} - set(parts)))
            raise CheckpointError(path, f"{converted.stored_names[key]}: the {missing} projection(s) are missing")
        converted.tensors[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return converted


def to_petvr_state_dict(raw: RawCheckpoint) -> PetvrStateDict:
    """The checkpoint's tensors under petvr's key names."""
    tensors = _strip_prefix(raw.tensors)
    layout = detect_layout(tensors, raw.path)
    if layout == "huggingface":
        return _from_huggingface(tensors, raw.path)
    if layout == "openai":
        return _from_openai(tensors)
    return PetvrStateDict(tensors, "petvr")


# ---------------------------------------------------------------------------------------------------------------------
# Step 3: architecture from shapes
# ---------------------------------------------------------------------------------------------------------------------

def _require(converted: PetvrStateDict, key: str, path: Path, dims: int) -> Tensor:
    if key not in converted.tensors:
        raise CheckpointError(
            path, f"missing key {key!r} (petvr name; the file has the {converted.layout} layout), "
            "needed to infer the architecture"
        )
    tensor = converted.tensors[key]
    if tensor.dim() != dims:
        found = tuple(tensor.shape)
        raise CheckpointError(path, f"{converted.describe(key)}: expected a {dims}-d tensor, found shape {found}")
    return tensor


def _count_blocks(converted: PetvrStateDict, prefix: str, path: Path) -> int:
    indices = {int(m.group(1)) for key in converted.tensors if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))}
    if not indices:
        raise CheckpointError(path, f"no transformer blocks found under {prefix!r}")
    missing = sorted(set(range(max(indices) + 1)) - indices)
    if missing:
        raise CheckpointError(
            path, f"missing block(s) {missing} under {prefix!r} (found {len(indices)} of {max(indices) + 1})"
        )
    return len(indices)


def _mlp_ratio(converted: PetvrStateDict, prefix: str, width: int, path: Path) -> float:
    hidden = _require(converted, f"{prefix}0.mlp.c_fc.weight", path, dims=2).shape[0]
    return hidden / width


def infer_config(converted: PetvrStateDict, path: str | Path, facts: ArchitectureFacts | None = None) -> CLIPConfig:
    """The architecture of a converted state dict, from its shapes (OpenAI's ``build_model`` rules).

    Heads default to ``width / 64`` and the activation to QuickGELU unless ``facts`` says otherwise.
    """
    path = Path(path)
    facts = facts or ArchitectureFacts()
    conv = _require(converted, "visual.conv1.weight", path, dims=4)
    vision_width, _, patch_height, patch_width = conv.shape
    if patch_height != patch_width:
        raise CheckpointError(
            path, f"visual.conv1.weight: expected a square patch kernel, found shape {tuple(conv.shape)}"
        )
    positions = _require(converted, "visual.positional_embedding", path, dims=2).shape[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise CheckpointError(
            path, f"visual.positional_embedding: {positions} rows is not 1 + a square grid of patches"
        )
    token_embedding = _require(converted, "text.token_embedding.weight", path, dims=2)
    vocab_size, text_width = token_embedding.shape
    vision_prefix, text_prefix = "visual.transformer.resblocks.", "text.transformer.resblocks."
    vision = VisionConfig(
        image_size=patch_width * grid,
        patch_size=patch_width,
        width=vision_width,
        layers=_count_blocks(converted, vision_prefix, path),
        heads=facts.vision_heads or max(1, vision_width // DEFAULT_HEAD_WIDTH),
        mlp_ratio=_mlp_ratio(converted, vision_prefix, vision_width, path),
    )
    text = TextConfig(
        context_length=_require(converted, "text.positional_embedding", path, dims=2).shape[0],
        vocab_size=vocab_size,
        width=text_width,
        heads=facts.text_heads or max(1, text_width // DEFAULT_HEAD_WIDTH),
        layers=_count_blocks(converted, text_prefix, path),
        mlp_ratio=_mlp_ratio(converted, text_prefix, text_width, path),
    )
    embed_dim = _require(converted, "text.text_projection", path, dims=2).shape[1]
    quick_gelu = True if facts.quick_gelu is None else facts.quick_gelu
    return CLIPConfig(embed_dim=embed_dim, quick_gelu=quick_gelu, vision=vision, text=text)


def architecture_facts(raw: RawCheckpoint) -> ArchitectureFacts:
    """Heads and activation recorded by the checkpoint's own config (Hugging Face ``config.json``, petvr metadata),
    or the activation recorded by a TorchScript archive's modules."""
    if raw.petvr_config is not None:
        config = CLIPConfig.from_dict(raw.petvr_config, f"{raw.path}: petvr_config metadata")
        return ArchitectureFacts(config.vision.heads, config.text.heads, config.quick_gelu, "petvr metadata")
    if raw.quick_gelu is not None:
        return ArchitectureFacts(quick_gelu=raw.quick_gelu, source="TorchScript code")
    if raw.hf_config is None:
        return ArchitectureFacts()
    config_path = raw.path.parent / "config.json"
    towers = {name: raw.hf_config.get(f"{name}_config") or {} for name in ("vision", "text")}
    activations = {name: tower.get("hidden_act", "quick_gelu") for name, tower in towers.items()}
    for name, activation in activations.items():
        if activation not in _HF_ACTIVATIONS:
            raise CheckpointError(
                config_path, f"{name}_config.hidden_act is {activation!r}; supported: quick_gelu, gelu"
            )
        epsilon = towers[name].get("layer_norm_eps", 1e-5)
        if not math.isclose(epsilon, 1e-5):
            raise CheckpointError(config_path, f"{name}_config.layer_norm_eps is {epsilon}; petvr's CLIP uses 1e-5")
    if activations["vision"] != activations["text"]:
        raise CheckpointError(
            config_path, f"the towers use different activations (vision {activations['vision']!r}, "
            f"text {activations['text']!r}); petvr's CLIP uses one for both"
        )
    return ArchitectureFacts(
        vision_heads=towers["vision"].get("num_attention_heads", 12),
        text_heads=towers["text"].get("num_attention_heads", 8),
        quick_gelu=_HF_ACTIVATIONS[activations["vision"]],
        source="config.json",
    )


# ---------------------------------------------------------------------------------------------------------------------
# Checking and loading
# ---------------------------------------------------------------------------------------------------------------------

def _flatten(config: CLIPConfig) -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": inner_value for inner, inner_value in value.items()})
        else:
            flat[key] = value
    return flat


def _describe(config: CLIPConfig) -> str:
    v, t = config.vision, config.text
    return (
        f"embed_dim={config.embed_dim}, quick_gelu={config.quick_gelu}, "
        f"vision(image {v.image_size}, patch {v.patch_size}, width {v.width}, layers {v.layers}, heads {v.heads}, "
        f"mlp_ratio {v.mlp_ratio:g}), text(context {t.context_length}, vocab {t.vocab_size}, width {t.width}, "
        f"layers {t.layers}, heads {t.heads}, mlp_ratio {t.mlp_ratio:g})"
    )


def resolve_config(
    inferred: CLIPConfig, facts: ArchitectureFacts, named: CLIPConfig | None, name: str | None, path: Path
) -> CLIPConfig:
    """The config to build: the inferred one, with heads and activation from the named config where the checkpoint
    does not record them. Raises ``CheckpointError`` showing both configs when they disagree."""
    if named is None:
        return inferred
    resolved = copy.deepcopy(inferred)
    recorded = {"heads": facts.vision_heads, "activation": facts.quick_gelu}
    borrowed = [what for what, known in recorded.items() if known is None]
    source = facts.source + (f"; {' and '.join(borrowed)} as in {name}" if borrowed else "")
    if facts.vision_heads is None:
        resolved.vision.heads = named.vision.heads
    if facts.text_heads is None:
        resolved.text.heads = named.text.heads
    if facts.quick_gelu is None:
        resolved.quick_gelu = named.quick_gelu
    named_flat, found_flat = _flatten(named), _flatten(resolved)
    differences = [f"{key}: {name} has {named_flat[key]}, checkpoint has {found_flat[key]}"
                   for key in named_flat if named_flat[key] != found_flat[key]]
    if differences:
        matching = [other for other in list_model_configs() if get_model_config(other) == resolved]
        hint = f"\nthe bundled model config {matching[0]!r} matches it: load it under that name" if matching else ""
        raise CheckpointError(
            path,
            f"the checkpoint does not match model config {name!r}:\n  " + "\n  ".join(differences)
            + f"\n{name}: {_describe(named)}\ncheckpoint ({source}): {_describe(resolved)}{hint}",
        )
    return resolved


def _first(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def check_state_dict(converted: PetvrStateDict, model: CLIP, path: Path) -> None:
    """Every model key present, every checkpoint key used, every shape equal; else a ``CheckpointError``."""
    state_dict = converted.tensors
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = [key for key in expected if key not in state_dict]
    unexpected = [converted.describe(key) for key in state_dict if key not in expected]
    problems = []
    if missing:
        problems.append(f"missing key(s) (petvr names; the file has the {converted.layout} layout): {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected key(s): {_first(unexpected)}")
    for key, shape in expected.items():
        if key in state_dict and tuple(state_dict[key].shape) != shape:
            problems.append(f"{converted.describe(key)}: expected shape {shape}, found {tuple(state_dict[key].shape)}")
    if problems:
        raise CheckpointError(path, "; ".join(problems))


def checkpoint_dir() -> Path:
    """Where bare checkpoint names are looked up: ``$PETVR_CHECKPOINT_DIR``, default ``~/.cache/petvr/checkpoints``."""
    return Path(os.environ.get(CHECKPOINT_DIR_ENV) or Path.home() / ".cache" / "petvr" / "checkpoints").expanduser()


def embedded_checkpoint_path() -> Path:
    """The weights of the small default model shipped inside the package (``petvr/assets/petvr-tiny.safetensors``)."""
    path = Path(__file__).resolve().parent.parent / "assets" / f"{EMBEDDED_MODEL}.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the embedded {EMBEDDED_MODEL} weights are not installed with this petvr")
    return path


def find_checkpoint(name: str | None, checkpoint: str | Path | None) -> Path:
    """Resolve ``checkpoint`` (a path, or a bare file name in ``checkpoint_dir()``) or, when it is None, look for
    ``{name}.pt``, ``{name}.safetensors`` or a ``{name}/`` folder in ``checkpoint_dir()``; for a ``-quickgelu`` name
    also OpenAI's file name (``ViT-B-32.pt`` for ``ViT-B-32-quickgelu``)."""
    folder = checkpoint_dir()
    if checkpoint is not None:
        checkpoint = Path(checkpoint).expanduser()
        if len(checkpoint.parts) == 1 and (folder / checkpoint).exists():
            return folder / checkpoint
        if checkpoint.exists():
            return checkpoint
        tried = [checkpoint] + ([folder / checkpoint] if len(checkpoint.parts) == 1 else [])
        raise FileNotFoundError(f"checkpoint not found; tried: {', '.join(map(str, tried))}")
    if name is None:
        raise ValueError("give a model name, a checkpoint, or both")
    stem = Path(name).stem if name.endswith(".json") else name
    candidates = [folder / f"{stem}.pt", folder / f"{stem}.safetensors", folder / stem]
    if stem.endswith(QUICK_GELU_SUFFIX):
        candidates.append(folder / f"{stem.removesuffix(QUICK_GELU_SUFFIX)}.pt")
    found = next((candidate for candidate in candidates if candidate.exists()), None)
    if found is not None:
        return found
    if stem == EMBEDDED_MODEL:
        return embedded_checkpoint_path()
    raise FileNotFoundError(
        f"no checkpoint for {name!r}; tried {', '.join(map(str, candidates))} (set ${CHECKPOINT_DIR_ENV} to another "
        f"folder, or pass checkpoint=PATH)"
    )


def load_backbone(
    name: str | None = None,
    checkpoint: str | Path | None = None,
    *,
    quick_gelu: bool | None = None,
    device: torch.device | str | None = None,
) -> CLIP:
    """Load a CLIP backbone in float32: ``load_backbone("ViT-B-32-quickgelu", checkpoint="ViT-B-32.pt")``.

    ``name`` is a bundled model config (or a JSON path); the checkpoint must match it, activation included (OpenAI's
    weights under ``-quickgelu`` names, open_clip's LAION weights under the plain ones). Without a name the
    architecture is inferred from the checkpoint alone. ``quick_gelu`` sets the activation for checkpoints that do not
    record it (plain state dicts); it defaults to the named config's, else QuickGELU (OpenAI's CLIP).
    """
    named = get_model_config(name) if name is not None else None
    path = find_checkpoint(name, checkpoint)
    raw = read_checkpoint(path)
    facts = architecture_facts(raw)
    if quick_gelu is not None:
        if facts.quick_gelu is not None and facts.quick_gelu != quick_gelu:
            raise CheckpointError(
                raw.path, f"quick_gelu={quick_gelu} was asked for, but the checkpoint's {facts.source} records "
                f"quick_gelu={facts.quick_gelu}"
            )
        facts.quick_gelu = quick_gelu
    converted = to_petvr_state_dict(raw)
    config = resolve_config(infer_config(converted, raw.path, facts), facts, named, name, raw.path)
    with torch.device("meta"):
        model = CLIP(config, name=name if name is not None else path.stem)
    check_state_dict(converted, model, raw.path)
    weights = {key: value.to(torch.float32).contiguous() for key, value in converted.tensors.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    return model.to(device) if device is not None else model


def save_backbone(model: CLIP, path: str | Path) -> Path:
    """Write the backbone's weights and config to one ``.safetensors`` file (petvr keys), atomically."""
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    metadata = {"format": "pt", "petvr_config": json.dumps(model.config.to_dict())}
    return atomic_write(path, lambda tmp: save_safetensors(tensors, str(tmp), metadata=metadata))


def backbone_weight_hash(model: CLIP) -> str:
    """A short sha256 over the backbone's own parameters (sorted names, shapes and float32 bytes).

    Only the keys of ``CLIP(model.config)`` count, so parameters a method adds do not change the hash; call it before
    a method wraps a sub-module (which renames the wrapped weights), e.g. right after loading.
    """
    with torch.device("meta"):
        own_keys = sorted(CLIP(model.config).state_dict())
    state = model.state_dict()
    missing = [key for key in own_keys if key not in state]
    if missing:
        raise ValueError(f"cannot hash the backbone: {len(missing)} of its weights are renamed or missing "
                         f"(first: {missing[0]}); hash it before a method wraps its sub-modules")
    digest = hashlib.sha256()
    for key in own_keys:
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]
