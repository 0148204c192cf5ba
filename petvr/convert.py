"""Convert checkpoints saved by the official CLIP4Clip, Cross-Modal Adapter, MV-Adapter, UniPT and DGL code into
adapter folders.

``convert_checkpoint("clip4clip", "pytorch_model.bin.4", "runs/c4c")`` reads the official state dict, renames every
key to petvr's, refuses keys it cannot place (or weights the model needs that the file lacks) with one error listing
them all, and writes an adapter folder holding only the trained weights. The backbone weights in the file are
compared with the base backbone: weights the method trains go into the adapter; if any weight the method does *not*
train differs (the checkpoint fine-tuned more than its config says, or came from another CLIP), the full backbone is
written beside the adapter as ``backbone.safetensors`` and recorded as the adapter's backbone.

Official layouts (key names read from the repositories' model code; the wrapper module is saved whole):

- CLIP4Clip (``torch.save(model.state_dict())``): ``clip.<OpenAI CLIP keys>``, ``clip.visual.conv2.weight`` for the 3D
  patch, and the head: ``frame_position_embeddings`` (seqLSTM, seqTransf), ``transformerClip.resblocks.N.*``
  (seqTransf), ``lstm_visual.*`` (seqLSTM), ``cross.embeddings.position_embeddings``, ``cross.transformer.*``,
  ``cross.pooler.{ln_pool,dense}``, ``similarity_dense`` (tightTransf).
- Cross-Modal Adapter (``checkpoint.pth``: ``{"model": state_dict, "optimizer": ..., ...}``): the same wrapper keys,
  plus per-tower adapter banks on the CLIP module, indexed 2*block (after attention) and 2*block+1 (after the MLP):
  ``clip.{visual,text}_adapter_down_{weight,bias}``, ``clip.{visual,text}_adapter_up_unique_{weight,bias}`` and the
  bank shared by the towers, ``clip.vt_adapter_up_share_{weight,bias}`` (the last d_s output channels).
- MV-Adapter (``torch.save`` of the *trainable* ``named_parameters()`` only, adapters in fp16): its CLIP splits each
  block's attention into ``attn.{q,k,v,out}_proj`` with the pre-attention norm as ``attn.ln`` and the pre-MLP norm as
  ``mlp.ln``; the adapters sit at ``clip.visual.transformer.resblocks.N.mlp.adapter.*`` (video) and
  ``clip.transformer.resblocks.N.mlp.adapter.*`` (text): ``down``, ``up``, ``ln_pre``, ``positional_embedding``,
  ``block.*`` (the TRM), ``ln_in`` (``lnin``), ``md_proj`` (CMT's projection), and in the video branch ``cc`` and the
  calibration ``conv_rf_c.{g,a,b}``; the CMT factors are ``clip.prompt.K``. Backbone weights the file lacks are the
  base's (the code saves what it trained: the CLIP biases, when ``train_backbone_biases``).

- UniPT (its CLIP4Clip variant, ``torch.save(model.state_dict())``): the wrapper's keys, its CLIP in fp16, plus the two
  side networks ``image_adapter.*`` and ``text_adapter.*`` (``downsample_layers.N.1``, ``downsample_layer.1``,
  ``upsample_layer.1``, ``gate_layer``; index 0 of each ``Sequential`` is a ReLU). An fp16 CLIP in the file sets
  ``backbone_precision="fp16"``, the code's frozen pass.
- DGL (``{"state_dict": model.state_dict(), ...}``, DDP's ``module.`` prefix): the prompt modules on the CLIP module
  beside its OpenAI keys: ``clip.visual.prompt_embeddings`` (1, G, W_v, the global prompts); the Transformer variant's
  ``clip.unified_prompt_embedding.weight`` (P, layers * W_v), ``clip.PromptTransformer.resblocks.0.*`` (an OpenAI
  block) and ``clip.unified_prompt_mlp.{c_fc,c_proj}``; the Linear variant's ``clip.visual_prompt_embedding``
  (1, k, layers * W_v) and ``clip.{prefix,postfix}_text_prompt_proj_layer``; ``clip.visual.position_ids`` (an arange
  buffer) is dropped. The converted model keeps the released postfix placement (after the padding), so it scores as
  the official forward does.

The method config is read from the file where it shows (head, head depth, 3D patch, bottleneck and shared widths;
CLIP4Clip's ``freeze_layer_num`` as the first block that differs from the base backbone; MV-Adapter's frames and words
from its positional tables, its tied layers, calibration, ``lnin`` and trained biases) and ``overrides`` win.
"""
from __future__ import annotations

import argparse
import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .adapters import ADAPTER_WEIGHTS, write_adapter_files
from .atomic import atomic_write_folder
from .backbone import CLIP
from .backbone.checkpoints import (RawCheckpoint, load_backbone, save_backbone, state_dict_from_pickle,
                                   to_petvr_state_dict)

BACKBONE_FILE = "backbone.safetensors"
CONVERSION_FILE = "conversion.json"

# CLIP4Clip's similarity heads (also in Cross-Modal Adapter's wrapper): official prefix -> petvr model prefix.
HEAD_RENAMES = (
    ("frame_position_embeddings.", "method.head.frame_position_embeddings."),
    ("transformerClip.", "method.head.transformer."),
    ("lstm_visual.", "method.head.lstm."),
    ("cross.embeddings.position_embeddings.", "method.head.position_embeddings."),
    ("cross.transformer.", "method.head.transformer."),
    ("cross.pooler.ln_pool.", "method.head.pooler_norm."),
    ("cross.pooler.dense.", "method.head.pooler_dense."),
    ("similarity_dense.", "method.head.similarity_dense."),
)
HEAD_BY_KEY = (("lstm_visual.", "seqLSTM"), ("transformerClip.", "seqTransf"), ("cross.", "tightTransf"))
CONV3D_KEY = "clip.visual.conv2.weight"
CMA_BANK = re.compile(r"clip\.(visual|text|vt)_adapter_(down|up_unique|up_share)_(weight|bias)$")
SUB_LAYERS = ("attn", "mlp")  # bank index 2*block + 0 / 1


class ConversionError(ValueError):
    """An official checkpoint that does not fit: names the file and lists every offending key."""


def read_official_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The model's tensors from an official file: a state dict, or a training checkpoint holding one under
    ``"model"`` / ``"state_dict"``; DDP's ``module.`` prefix is removed. Read by the backbone's pickle reader
    (``weights_only=True``, plus ``argparse.Namespace``, which Cross-Modal Adapter's checkpoint holds), so a file
    cannot run code."""
    loaded = state_dict_from_pickle(Path(path), containers=("model", "state_dict"),
                                    allowed_globals=(argparse.Namespace,))  # Cross-Modal Adapter saves its ``args``
    return {key.removeprefix("module."): value for key, value in loaded.items()}


# ---------------------------------------------------------------------------------------------------------------------
# Official keys -> petvr model keys, one function per layout. Each returns (backbone tensors under OpenAI names,
# method tensors under petvr model names, the config the file shows, keys it could not place).
# ---------------------------------------------------------------------------------------------------------------------

def _split_common(state: dict[str, Tensor], extra: Callable[[str, Tensor, dict], bool] | None = None):
    backbone, method, unmapped = {}, {}, []
    for key, value in state.items():
        if extra is not None and extra(key, value, method):
            continue
        if key == CONV3D_KEY:
            method["backbone.visual.conv1.conv2.weight"] = value
        elif key.startswith("clip."):
            backbone[key.removeprefix("clip.")] = value
        else:
            for official, ours in HEAD_RENAMES:
                if key.startswith(official):
                    method[ours + key.removeprefix(official)] = value
                    break
            else:
                unmapped.append(key)
    config: dict[str, Any] = {}
    for prefix, head in HEAD_BY_KEY:
        if any(key.startswith(prefix) for key in state):
            config["sim_header"] = head
            blocks = {int(m.group(1)) for key in state if (m := re.match(re.escape(prefix) + r"(?:transformer\.)?resblocks\.(\d+)\.", key))}
            if blocks:
                config["cross_num_hidden_layers"] = max(blocks) + 1
            break
    if CONV3D_KEY in state:
        config["linear_patch"] = "3d"
    return backbone, method, config, unmapped


def map_clip4clip(state: dict[str, Tensor]):
    backbone, method, config, unmapped = _split_common(state)
    config.setdefault("sim_header", "meanP")
    return backbone, method, config, unmapped


def map_cross_modal_adapter(state: dict[str, Tensor]):
    def adapter_bank(key: str, value: Tensor, method: dict) -> bool:
        match = CMA_BANK.match(key)
        if match is None:
            return False
        tower, part, kind = match.groups()
        for index in range(value.shape[0]):
            block, sub_layer = divmod(index, 2)
            if tower == "vt":
                name = f"method.shared_up.{SUB_LAYERS[sub_layer]}.{block}.{kind}"
            else:
                tower_name = "visual" if tower == "visual" else "text"
                name = f"backbone.{tower_name}.transformer.resblocks.{block}.{SUB_LAYERS[sub_layer]}.adapter.{part}.{kind}"
            method[name] = value[index]
        return True

    backbone, method, config, unmapped = _split_common(state, adapter_bank)
    down = state.get("clip.visual_adapter_down_weight", state.get("clip.text_adapter_down_weight"))
    if down is not None:
        config["bottleneck_dim"] = down.shape[1]
    share = state.get("clip.vt_adapter_up_share_weight")
    config["shared_dim"] = share.shape[1] if share is not None else 0
    return backbone, method, config, unmapped


# MV-Adapter: official adapter names (after ``mlp.adapter.``) -> petvr's (after ``mlp.adapter.``), by prefix.
MVA_RENAMES = (
    ("block.", "temporal."),  # the TRM at width d'
    ("conv_rf_c.g.", "calibration.cc_projection."),
    ("conv_rf_c.a.", "calibration.fc1."),
    ("conv_rf_c.b.", "calibration.fc2."),
    ("md_proj.", "tying.projection."),
    ("ln_in.", "input_norm."),
    ("cc", "cc_token"),
    ("down.", "down."), ("up.", "up."), ("ln_pre.", "ln_pre."), ("positional_embedding", "positional_embedding"),
)
MVA_ADAPTER = re.compile(r"clip\.(visual\.)?transformer\.resblocks\.(\d+)\.mlp\.adapter\.(.+)$")
MVA_BLOCK = re.compile(r"((?:visual\.)?transformer\.resblocks\.\d+)\.(attn|mlp)\.(.+)$")
MVA_FACTOR = re.compile(r"clip\.prompt\.(\d+)$")


def _mva_backbone_name(name: str, value: Tensor, qkv: dict[str, dict[str, Tensor]]) -> str | None:
    """One of MV-Adapter's CLIP keys (``clip.`` removed) -> its OpenAI name; ``q/k/v_proj`` parts are collected in
    ``qkv`` (fused later) and give None."""
    match = MVA_BLOCK.match(name)
    if match is None:
        return name  # embeddings, ln_pre / ln_post / ln_final, projections: OpenAI's names
    block, sub_layer, rest = match.groups()
    if sub_layer == "attn" and rest[:7] in ("q_proj.", "k_proj.", "v_proj."):
        qkv.setdefault(f"{block}.attn.in_proj_{rest[7:]}", {})[rest[0]] = value
        return None
    if rest.startswith("ln."):
        return f"{block}.{'ln_1' if sub_layer == 'attn' else 'ln_2'}.{rest[3:]}"
    return f"{block}.{sub_layer}.{rest}"


def map_mv_adapter(state: dict[str, Tensor]):
    backbone, method, unmapped = {}, {}, []
    qkv: dict[str, dict[str, Tensor]] = {}
    adapted: dict[str, set[int]] = {"vision": set(), "text": set()}
    suffixes: dict[str, set[str]] = {"vision": set(), "text": set()}
    tied_width: dict[str, tuple[int, ...]] = {}
    shared_factors = []
    for key, value in state.items():
        if (match := MVA_FACTOR.match(key)) is not None:
            method[f"method.tying_factors.{match.group(1)}"] = value.float()
        elif (match := MVA_ADAPTER.match(key)) is not None:
            visual, block, rest = match.groups()
            tower = "vision" if visual else "text"
            if rest == "shared_factor":  # the factor again (a state_dict() save): checked against clip.prompt below
                shared_factors.append((key, tower, int(block), value))
                continue
            renamed = next((ours + rest.removeprefix(official) for official, ours in MVA_RENAMES
                            if rest.startswith(official) and (official.endswith(".") or rest == official)), None)
            if renamed is None:
                unmapped.append(key)
                continue
            adapted[tower].add(int(block))
            suffixes[tower].add(rest)
            if rest == "md_proj.weight":
                tied_width[tower] = tuple(value.shape)
            tower_name = "visual" if visual else "text"
            method[f"backbone.{tower_name}.transformer.resblocks.{block}.mlp.adapter.{renamed}"] = value.float()
        elif key.startswith("clip."):
            name = _mva_backbone_name(key.removeprefix("clip."), value, qkv)
            if name is not None:
                backbone[name] = value  # in the file's dtype: unchanged fp16 weights must compare equal to the base
        else:
            unmapped.append(key)
    for fused, parts in qkv.items():
        if set(parts) == {"q", "k", "v"} and len({part.dtype for part in parts.values()}) == 1:
            backbone[fused] = torch.cat([parts["q"], parts["k"], parts["v"]])
        else:  # an incomplete set cannot be fused
            block, kind = fused.split(".attn.in_proj_")
            unmapped += [f"clip.{block}.attn.{part}_proj.{kind}" for part in sorted(parts)]

    config: dict[str, Any] = {}
    towers = [tower for tower in ("vision", "text") if adapted[tower]]
    if towers and towers != ["vision", "text"]:
        config["towers"] = towers
    blocks = sorted(set().union(*adapted.values()))
    if blocks and blocks != list(range(len(blocks))):  # adapters on chosen blocks only (the code's adapter_idx)
        config["layers"] = blocks
    down = next((value for key, value in method.items() if key.endswith("mlp.adapter.down.weight")), None)
    if down is not None:
        config["bottleneck_width"] = down.shape[0]
    tables = {tower: next((value.shape[0] for key, value in method.items()
                           if key.startswith(f"backbone.{name}.") and key.endswith(".positional_embedding")), None)
              for tower, name in (("vision", "visual"), ("text", "text"))}
    if tables["vision"] is not None:
        config["max_frames"] = (tables["vision"] - 1) // 2  # 2 T + 1 rows: [CC], T CLS tokens, T patch means
        config["calibration"] = any(rest.startswith("conv_rf_c.") for rest in suffixes["vision"])
        config["calibration_cc_projection"] = any(rest.startswith("conv_rf_c.g.") for rest in suffixes["vision"])
    if tables["text"] is not None:
        config["max_words"] = tables["text"]
    config["input_norm"] = any(rest.startswith("ln_in.") for rest in set().union(*suffixes.values()))
    tied = sorted({int(m.group(2)) for key in state if (m := MVA_ADAPTER.match(key)) and m.group(3) == "md_proj.weight"})
    config["tying_layers"] = tied
    if tied:
        projection = tied_width.get("vision", tied_width.get("text"))
        config["factor_dim"] = projection[1]
        # d'-wide: Down-Out (the released MSR-VTT / DiDeMo configs) or Up-In; tower-wide: Down-In (the paper) or
        # Up-Out. The file cannot tell the two apart: the Down one is assumed, --set tying_position gives the other.
        config["tying_position"] = "down_out" if projection[0] == config.get("bottleneck_width") else "down_in"
    config["train_backbone_biases"] = any(name.endswith("bias") for name in backbone)
    for key, tower, block, value in shared_factors:  # the same tensor as clip.prompt.K, K = the block's rank
        factor = method.get(f"method.tying_factors.{tied.index(block)}") if block in tied else None
        if factor is None or not torch.equal(factor, value.float()):
            unmapped.append(key)
    return backbone, method, config, unmapped


# UniPT: its two side networks (``image_adapter`` per frame, ``text_adapter``), each ``downsample_layers.N.1`` (D_l, after
# a ReLU at index 0), ``downsample_layer.1`` (D_g), ``upsample_layer.1`` (U) and ``gate_layer``, beside the CLIP4Clip
# wrapper's keys (its CLIP stored in fp16 by ``convert_weights``).
UNIPT_ADAPTER = re.compile(r"(image|text)_adapter\.(downsample_layers\.(\d+)\.1|downsample_layer\.1|upsample_layer\.1|"
                           r"gate_layer)\.(weight|bias)$")
UNIPT_PARTS = {"downsample_layer.1": "anchor_projection", "upsample_layer.1": "up_projection", "gate_layer": "gate"}


def map_unipt(state: dict[str, Tensor]):
    def side_network(key: str, value: Tensor, method: dict) -> bool:
        match = UNIPT_ADAPTER.match(key)
        if match is None:
            return False
        tower, part, layer, kind = match.groups()
        name = f"layer_projections.{layer}" if layer is not None else UNIPT_PARTS[part]
        method[f"method.{'vision' if tower == 'image' else 'text'}.{name}.{kind}"] = value.float()
        return True

    backbone, method, config, unmapped = _split_common(state, side_network)
    config.setdefault("sim_header", "meanP")
    up = state.get("image_adapter.upsample_layer.1.weight", state.get("text_adapter.upsample_layer.1.weight"))
    if up is not None and up.shape[1] and up.shape[0] % up.shape[1] == 0:
        config["downsample_factor"] = up.shape[0] // up.shape[1]  # (D, d)
    projection = state.get("clip.visual.proj")
    if projection is not None and projection.dtype in (torch.float16, torch.bfloat16):  # the frozen pass as the code ran it
        config["backbone_precision"] = "fp16" if projection.dtype == torch.float16 else "bf16"
    return backbone, method, config, unmapped


# Layouts whose files hold only the weights their code trained: the backbone weights they lack are the base's.
TRAINED_ONLY_LAYOUTS = ("mv_adapter",)

# DGL: prompt modules on the CLIP module (official prefix -> petvr model prefix); the two prompt tables are stored
# (rows, layers * W_v) and become (layers, rows, W_v).
DGL_RENAMES = (
    ("clip.PromptTransformer.resblocks.0.", "method.latent.block."),
    ("clip.unified_prompt_mlp.", "method.latent.text_mlp."),
    ("clip.prefix_text_prompt_proj_layer.", "method.latent.prefix."),
    ("clip.postfix_text_prompt_proj_layer.", "method.latent.postfix."),
)
DGL_TABLES = {"clip.unified_prompt_embedding.weight": "method.latent.table",
              "clip.visual_prompt_embedding": "method.latent.frame_prompts"}
DGL_TEXT_PROMPTS, DGL_LOCAL_PROMPTS = 8, 4  # the released defaults; a Transformer-variant file does not show them


def map_dgl(state: dict[str, Tensor]):
    conv = state.get("clip.visual.conv1.weight")
    width = conv.shape[0] if conv is not None else None

    def prompt_modules(key: str, value: Tensor, method: dict) -> bool:
        if key == "clip.visual.position_ids":
            return True
        if key == "clip.visual.prompt_embeddings":
            method["method.global_prompts"] = value.reshape(-1, value.shape[-1]).float()
            return True
        if key in DGL_TABLES and width is not None and value.shape[-1] % width == 0:
            rows = value.reshape(-1, value.shape[-1])
            method[DGL_TABLES[key]] = rows.view(rows.shape[0], -1, width).transpose(0, 1).float()
            return True
        renamed = next((ours + key.removeprefix(official) for official, ours in DGL_RENAMES if key.startswith(official)),
                       None)
        if renamed is not None:
            method[renamed] = value.float()
        return renamed is not None

    backbone, method, config, unmapped = _split_common(state, prompt_modules)
    config.update(sim_header="meanP", postfix_position="after_padding", global_prompt_init="uniform")  # as released
    table = state.get("clip.unified_prompt_embedding.weight")
    frame_prompts = state.get("clip.visual_prompt_embedding")
    if table is not None:
        config["shared_latent_space"] = "transformer"
        config["num_frames"] = max(1, (table.shape[0] - DGL_TEXT_PROMPTS) // DGL_LOCAL_PROMPTS)
    elif frame_prompts is not None:
        config.update(shared_latent_space="linear", local_prompts=frame_prompts.shape[-2],
                      text_prompts=2 * frame_prompts.shape[-2])
    global_prompts = state.get("clip.visual.prompt_embeddings")
    if global_prompts is not None:
        config["global_prompts"] = global_prompts.shape[-2]
    return backbone, method, config, unmapped


MAPPINGS: dict[str, Callable] = {"clip4clip": map_clip4clip, "cross_modal_adapter": map_cross_modal_adapter,
                                 "mv_adapter": map_mv_adapter, "unipt": map_unipt, "dgl": map_dgl}
OFFICIAL_METHODS = tuple(MAPPINGS)  # petvr convert's choices (cli.py lists them without importing torch)


# ---------------------------------------------------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------------------------------------------------

def parse_overrides(method: str, assignments: list[str]) -> dict[str, Any]:
    """``["clip4clip.freeze_layer_num=12"]`` -> ``{"freeze_layer_num": 12}``, values read as the recipes' ``--set``
    reads them (``petvr.training.recipe.apply_override``: a TOML value, else text)."""
    from .training.recipe import apply_override

    tables: dict[str, Any] = {}
    for assignment in assignments:
        prefix, dot, option = assignment.partition("=")[0].partition(".")
        if "=" not in assignment or not dot or prefix != method or "." in option:
            raise ConversionError(f"--set {assignment!r}: expected {method}.OPTION=VALUE")
        apply_override(tables, assignment)
    return tables.get(method, {})


def _differs(stored: Tensor, base: Tensor) -> bool:
    """Whether a checkpoint tensor differs from the base weight, compared in the checkpoint's dtype (an fp16 file of
    an unchanged fp32 weight does not differ)."""
    return stored.shape != base.shape or not torch.equal(stored, base.to(stored.dtype))


def _infer_freeze_layer_num(changed: list[str], layers: int) -> int:
    """CLIP4Clip trains blocks from ``freeze_layer_num`` on (plus the projections and final norms): the first block
    any changed weight sits in; -1 when an embedding changed; ``layers`` when no block changed."""
    from .methods.clip4clip import ALWAYS_TRAINED, _block_index

    if any(_block_index(name) < 0 and not name.startswith(ALWAYS_TRAINED) for name in changed):
        return -1
    return min([_block_index(name) for name in changed if _block_index(name) >= 0], default=layers)


def convert_checkpoint(method: str, checkpoint: str | Path, out_folder: str | Path, backbone: str | None = None,
                       backbone_checkpoint: str | Path | None = None, overrides: dict[str, Any] | None = None,
                       base: CLIP | None = None) -> dict[str, Any]:
    """Convert an official checkpoint of ``method`` into the adapter folder ``out_folder``; returns a report (config,
    key counts, file sizes, whether a backbone file was written). ``base`` (an already loaded backbone) replaces
    ``backbone`` / ``backbone_checkpoint``."""
    from .methods import RetrievalModel

    if method not in MAPPINGS:
        raise ConversionError(f"unknown official layout {method!r}; known: {', '.join(OFFICIAL_METHODS)}")
    checkpoint, out_folder = Path(checkpoint), Path(out_folder)
    state = read_official_state_dict(checkpoint)
    backbone_openai, method_weights, config, unmapped = MAPPINGS[method](state)
    config.update(overrides or {})
    if base is None:
        base = load_backbone(backbone, backbone_checkpoint)
    base_state = base.state_dict()
    in_file = set(backbone_openai)
    if method in TRAINED_ONLY_LAYOUTS:  # the base's weights where the file has none (under OpenAI's names)
        backbone_openai = {key.removeprefix("text."): value for key, value in base_state.items()} | backbone_openai

    # Backbone keys: OpenAI -> petvr names, then exactly the base's keys with its shapes.
    converted = to_petvr_state_dict(RawCheckpoint(checkpoint, "official", backbone_openai)) if backbone_openai else None
    stored = {key: f"clip.{name}" for key, name in converted.stored_names.items()} if converted else {}
    tensors = converted.tensors if converted else {}
    problems = [f"unmapped key {key}" for key in sorted(unmapped)]
    problems += [f"backbone weight missing: clip.<{key}> (petvr {key})" for key in sorted(set(base_state) - set(tensors))]
    problems += [f"leftover backbone key {stored.get(key, key)} (the {base.name} backbone has no {key})"
                 for key in sorted(set(tensors) - set(base_state))]
    problems += [f"{stored.get(key, key)}: shape {tuple(value.shape)}, the backbone has {tuple(base_state[key].shape)}"
                 for key, value in sorted(tensors.items()) if key in base_state and value.shape != base_state[key].shape]
    if problems:
        raise _error(checkpoint, method, problems)
    changed = [key for key, value in tensors.items() if _differs(value, base_state[key])]
    if method == "clip4clip" and "freeze_layer_num" not in config:
        config["freeze_layer_num"] = _infer_freeze_layer_num(changed, max(base.config.vision.layers, base.config.text.layers))

    def build(backbone_weights: CLIP) -> RetrievalModel:
        try:
            return RetrievalModel(backbone_weights, method, **config)
        except (TypeError, ValueError) as error:
            raise ConversionError(f"{checkpoint}: cannot build {method} with {config}: {error}") from error

    unwrapped = copy.deepcopy(base)
    before_wrapping = dict(unwrapped.named_parameters())
    model = build(unwrapped)
    # The backbone weights the method trains: petvr name -> the model's name (a wrapper moves a weight under base_layer).
    model_names = {id(p): name for name, p in model.named_parameters()}
    trained_backbone = {name: model_names[id(before_wrapping[name])] for name in model.trained_backbone_names}
    frozen_changed = sorted(set(changed) - set(trained_backbone))
    if frozen_changed:  # the file changed weights this config keeps frozen: the adapter needs its own backbone
        tuned = copy.deepcopy(base)
        tuned.load_state_dict({key: value.float() for key, value in tensors.items()}, strict=True)
        model = build(copy.deepcopy(tuned))  # a method may replace sub-modules; the file keeps the plain backbone
    weights = dict(method_weights)
    weights.update({model_name: tensors[name] for name, model_name in trained_backbone.items()})

    # The trained weights the model expects, exactly.
    parameters = dict(model.named_parameters())
    expected = {name for name, p in parameters.items() if p.requires_grad}
    problems = [f"missing weight {name} (the {method} model with {config} needs it)" for name in sorted(expected - set(weights))]
    if method in TRAINED_ONLY_LAYOUTS:  # a trained backbone weight must come from the file, not from the base
        problems += [f"missing weight {stored[name]} (petvr {name}; the {method} model with {config} trains it)"
                     for name in sorted(trained_backbone) if stored[name].removeprefix("clip.") not in in_file]
    problems += [f"leftover key for {name} (no such trained weight in the {method} model with {config})"
                 for name in sorted(set(weights) - expected)]
    problems += [f"{name}: shape {tuple(weights[name].shape)}, the model has {tuple(parameters[name].shape)}"
                 for name in sorted(expected & set(weights)) if weights[name].shape != parameters[name].shape]
    if problems:
        raise _error(checkpoint, method, problems)
    with torch.no_grad():
        for name in expected:
            parameters[name].copy_(weights[name])

    backbone_path = out_folder.resolve() / BACKBONE_FILE if frozen_changed else None
    recorded = str(backbone_path) if backbone_path else (str(backbone_checkpoint) if backbone_checkpoint else None)
    recipe = {"backbone": {"name": base.name, "checkpoint": recorded}}
    report = {
        "method": method, "source": str(checkpoint.resolve()), "method_config": model.method_config_dict(),
        "official_keys": len(state), "trained_tensors": len(expected),
        "changed_backbone_weights": len(changed), "backbone_file": BACKBONE_FILE if frozen_changed else None,
        "official_bytes": checkpoint.stat().st_size,
    }

    def write(folder: Path) -> None:
        write_adapter_files(model, folder, recipe=recipe)
        if frozen_changed:
            save_backbone(tuned, folder / BACKBONE_FILE)
        report["adapter_bytes"] = (folder / ADAPTER_WEIGHTS).stat().st_size
        report["backbone_bytes"] = (folder / BACKBONE_FILE).stat().st_size if frozen_changed else 0
        (folder / CONVERSION_FILE).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    atomic_write_folder(out_folder, write)
    _verify(model, out_folder, None if frozen_changed else base)
    return report


def _verify(model, folder: Path, base: CLIP | None) -> None:
    """Rebuild the folder with ``RetrievalModel.from_adapter`` and require the same trained weights."""
    from .methods import RetrievalModel

    rebuilt = RetrievalModel.from_adapter(folder, backbone=copy.deepcopy(base) if base is not None else None)
    ours, theirs = model.trainable_state_dict(), rebuilt.trainable_state_dict()
    differing = [name for name in ours if not torch.equal(ours[name], theirs[name])]
    if differing:
        raise ConversionError(f"{folder}: the rebuilt adapter differs from the conversion in {differing[:5]}")


def _error(checkpoint: Path, method: str, problems: list[str]) -> ConversionError:
    return ConversionError(f"{checkpoint}: not a {method} checkpoint this backbone and config can hold; "
                           f"{len(problems)} problem(s):\n  " + "\n  ".join(problems))
