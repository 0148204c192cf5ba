"""Checkpoint readers: clear errors for bad input, lookup in the checkpoint folder, strict loading, the weight hash."""
from __future__ import annotations

import json
import os
import pickle

import pytest
import torch
from open_clip.model import CLIP as OpenClipCLIP
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file

from petvr.backbone import (
    SUPPORTED_FORMATS, CheckpointError, backbone_weight_hash, create_backbone, embedded_checkpoint_path,
    get_model_config, load_backbone, save_backbone,
)
from petvr.backbone.checkpoints import CHECKPOINT_DIR_ENV, find_checkpoint


@pytest.fixture(scope="module")
def openai_state_dict() -> dict[str, torch.Tensor]:
    """OpenAI-keyed weights of a small open_clip CLIP (vision and text width 128, 2 blocks each, 64-wide heads)."""
    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=2, width=128, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=16, width=128, heads=2, layers=2)
    return OpenClipCLIP(64, vision, text, quick_gelu=True).state_dict()


@pytest.fixture
def checkpoint_folder(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    monkeypatch.setenv(CHECKPOINT_DIR_ENV, str(folder))
    return folder


def error_of(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as caught:
        load_backbone(checkpoint=path, **kwargs)
    message = str(caught.value)
    assert str(path) in message, f"the error does not name the file: {message}"
    return message


def assert_lists_formats(message: str) -> None:
    assert all(entry in message for entry in SUPPORTED_FORMATS), message


# ---------------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["model.pt", "model.safetensors"])
def test_truncated_file(tmp_path, openai_state_dict, name):
    path = tmp_path / name
    if name.endswith(".pt"):
        torch.save(openai_state_dict, path)
    else:
        save_file(openai_state_dict, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated or corrupt" in error_of(path)


def test_truncated_legacy_pickle(tmp_path, openai_state_dict):
    path = tmp_path / "legacy.pt"
    torch.save(openai_state_dict, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:-1000])
    assert "truncated or corrupt" in error_of(path)


def test_missing_key(tmp_path, openai_state_dict):
    weights = {k: v for k, v in openai_state_dict.items() if k != "visual.ln_post.bias"}
    torch.save(weights, tmp_path / "model.pt")
    message = error_of(tmp_path / "model.pt")
    assert "missing key(s)" in message and "visual.ln_post.bias" in message


def test_missing_key_needed_for_inference(tmp_path, openai_state_dict):
    weights = {k: v for k, v in openai_state_dict.items() if k != "visual.positional_embedding"}
    torch.save(weights, tmp_path / "model.pt")
    assert "missing key 'visual.positional_embedding'" in error_of(tmp_path / "model.pt")


def test_missing_block(tmp_path, openai_state_dict):
    weights = {k: v for k, v in openai_state_dict.items() if not k.startswith("transformer.resblocks.0.")}
    torch.save(weights, tmp_path / "model.pt")
    assert "missing block(s) [0] under 'text.transformer.resblocks.'" in error_of(tmp_path / "model.pt")


def test_unexpected_key(tmp_path, openai_state_dict):
    torch.save({**openai_state_dict, "visual.extra_head.weight": torch.zeros(3)}, tmp_path / "model.pt")
    assert "unexpected key(s): visual.extra_head.weight" in error_of(tmp_path / "model.pt")


def test_wrong_shape_names_the_stored_key(tmp_path, openai_state_dict):
    weights = dict(openai_state_dict)
    weights["ln_final.weight"] = torch.ones(5)
    torch.save(weights, tmp_path / "model.pt")
    message = error_of(tmp_path / "model.pt")
    assert "text.ln_final.weight (stored as ln_final.weight): expected shape (128,), found (5,)" in message


def test_hf_missing_projection(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    tower = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=1)
    reference = CLIPModel(CLIPConfig(text_config=dict(tower, max_position_embeddings=8),
                                     vision_config=dict(tower, image_size=16, patch_size=8), projection_dim=32))
    folder = tmp_path / "hf"
    reference.config.save_pretrained(folder)
    dropped = "vision_model.encoder.layers.0.self_attn.k_proj.bias"
    weights = {k: v for k, v in reference.state_dict().items() if k != dropped}
    save_file(weights, str(folder / "model.safetensors"))
    message = error_of(folder / "model.safetensors")
    assert "vision_model.encoder.layers.0.self_attn.{q,k,v}_proj.bias: the k projection(s) are missing" in message


def test_wrong_shape(tmp_path, openai_state_dict):
    weights = dict(openai_state_dict)
    weights["visual.transformer.resblocks.1.ln_1.weight"] = torch.ones(7)
    torch.save(weights, tmp_path / "model.pt")
    message = error_of(tmp_path / "model.pt")
    assert "visual.transformer.resblocks.1.ln_1.weight: expected shape (128,), found (7,)" in message


@pytest.mark.parametrize(
    "content", [b"hello, this is a text file\n", os.urandom(4096), b""], ids=["text", "random", "empty"]
)
def test_unknown_format(tmp_path, content):
    path = tmp_path / "weights.bin"
    path.write_bytes(content)
    message = error_of(path)
    if content:
        assert "unknown checkpoint format" in message
        assert_lists_formats(message)
    else:
        assert "empty" in message


def test_state_dict_of_another_model(tmp_path):
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    message = error_of(tmp_path / "other.pt")
    assert "do not look like a CLIP ViT checkpoint" in message and "encoder.weight" in message
    assert_lists_formats(message)


def test_pickle_with_arbitrary_object_is_refused(tmp_path):
    """A pickle whose loading would run code (here: create a folder) is refused, and the code does not run."""
    marker = tmp_path / "code_ran"

    class RunsCodeWhenUnpickled:
        def __reduce__(self):
            return os.makedirs, (str(marker),)

    for path, write in [
        (tmp_path / "plain.pkl", lambda p: p.write_bytes(pickle.dumps({"weight": RunsCodeWhenUnpickled()}))),
        (tmp_path / "torch.pt", lambda p: torch.save({"weight": RunsCodeWhenUnpickled()}, p)),
    ]:
        write(path)
        assert "weights_only=True" in error_of(path)
    assert not marker.exists()


def test_hf_folder_without_weights(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    message = error_of(folder)
    assert "no weights" in message and "model.safetensors" in message and "pytorch_model.bin" in message


def test_folder_without_config(tmp_path):
    folder = tmp_path / "not_hf"
    folder.mkdir()
    message = error_of(folder)
    assert "config.json" in message
    assert_lists_formats(message)


def test_hf_folder_of_another_model_type(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "siglip"}))
    with pytest.raises(CheckpointError, match="'siglip'.*only Hugging Face CLIPModel"):
        load_backbone(checkpoint=folder)


def test_hf_unsupported_activation(tmp_path, openai_state_dict):
    """The activation check comes from config.json before any tensor is read."""
    folder = tmp_path / "hf"
    folder.mkdir()
    tower = {"hidden_act": "gelu_new"}
    config = {"model_type": "clip", "text_config": tower, "vision_config": tower}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({"logit_scale": torch.zeros(())}, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="hidden_act is 'gelu_new'; supported: quick_gelu, gelu"):
        load_backbone(checkpoint=folder)


def test_named_config_disagrees(tmp_path, openai_state_dict):
    torch.save(openai_state_dict, tmp_path / "model.pt")
    message = error_of(tmp_path / "model.pt", name="ViT-B-32")
    assert "does not match model config 'ViT-B-32'" in message
    assert "vision.patch_size: ViT-B-32 has 32, checkpoint has 8" in message
    assert "vision.width: ViT-B-32 has 768, checkpoint has 128" in message


def test_explicit_activation_contradicting_the_checkpoint(tmp_path):
    model = create_backbone("petvr-tiny")
    save_backbone(model, tmp_path / "tiny.safetensors")
    with pytest.raises(CheckpointError, match="quick_gelu=False was asked for.*records quick_gelu=True"):
        load_backbone(checkpoint=tmp_path / "tiny.safetensors", quick_gelu=False)


# ---------------------------------------------------------------------------------------------------------------------
# Lookup, loading, hashing
# ---------------------------------------------------------------------------------------------------------------------

def test_inferred_architecture(tmp_path, openai_state_dict):
    torch.save(openai_state_dict, tmp_path / "model.pt")
    config = load_backbone(checkpoint=tmp_path / "model.pt").config
    assert (config.embed_dim, config.quick_gelu) == (64, True)
    assert (config.vision.image_size, config.vision.patch_size, config.vision.width) == (32, 8, 128)
    assert (config.vision.layers, config.vision.heads, config.vision.mlp_ratio) == (2, 2, 4.0)
    assert (config.text.context_length, config.text.vocab_size, config.text.width) == (16, 49408, 128)
    assert (config.text.layers, config.text.heads, config.text.mlp_ratio) == (2, 2, 4.0)


def test_lookup_by_model_name(checkpoint_folder):
    model = create_backbone("petvr-tiny")
    save_backbone(model, checkpoint_folder / "petvr-tiny.safetensors")
    loaded = load_backbone("petvr-tiny")
    assert loaded.config == model.config
    assert torch.equal(loaded.text.token_embedding.weight, model.text.token_embedding.weight)


def test_lookup_by_bare_file_name(checkpoint_folder, openai_state_dict):
    torch.save(openai_state_dict, checkpoint_folder / "small.pt")
    loaded = load_backbone(checkpoint="small.pt")
    assert torch.equal(loaded.visual.conv1.weight, openai_state_dict["visual.conv1.weight"])


def test_lookup_failure_lists_what_was_tried(checkpoint_folder):
    with pytest.raises(FileNotFoundError) as caught:
        load_backbone("ViT-B-32")
    for candidate in ("ViT-B-32.pt", "ViT-B-32.safetensors", str(checkpoint_folder / "ViT-B-32")):
        assert candidate in str(caught.value)


def test_quickgelu_names_find_openai_file_names(checkpoint_folder):
    """OpenAI ships ``ViT-B-32.pt``; its open_clip name is ``ViT-B-32-quickgelu``, whose own file names come first."""
    (checkpoint_folder / "ViT-B-32.pt").write_bytes(b"")
    assert find_checkpoint("ViT-B-32-quickgelu", None) == checkpoint_folder / "ViT-B-32.pt"
    (checkpoint_folder / "ViT-B-32-quickgelu.safetensors").write_bytes(b"")
    assert find_checkpoint("ViT-B-32-quickgelu", None) == checkpoint_folder / "ViT-B-32-quickgelu.safetensors"
    with pytest.raises(FileNotFoundError, match="ViT-B-16-quickgelu.pt, .*ViT-B-16.pt"):
        find_checkpoint("ViT-B-16-quickgelu", None)


def test_petvr_tiny_uses_the_embedded_weights(checkpoint_folder):
    """With nothing in the checkpoint folder, petvr-tiny loads the weights shipped in ``petvr/assets``."""
    embedded = embedded_checkpoint_path()
    assert embedded.name == "petvr-tiny.safetensors"
    model = load_backbone("petvr-tiny")
    assert model.config == get_model_config("petvr-tiny")
    assert torch.equal(model.visual.proj, load_backbone(checkpoint=embedded).visual.proj)


def test_missing_embedded_weights_name_the_expected_file(checkpoint_folder, monkeypatch):
    import petvr.backbone.checkpoints as checkpoints

    monkeypatch.setattr(checkpoints, "EMBEDDED_MODEL", "petvr-absent")
    with pytest.raises(FileNotFoundError, match="petvr/assets/petvr-absent.safetensors"):
        checkpoints.embedded_checkpoint_path()


def test_loading_is_strict_and_float32(tmp_path, openai_state_dict):
    torch.save({k: v.half() for k, v in openai_state_dict.items()}, tmp_path / "model.pt")
    model = load_backbone(checkpoint=tmp_path / "model.pt")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert not any(p.is_meta for p in model.parameters())
    loaded = dict(model.state_dict())
    expected = openai_state_dict["token_embedding.weight"].half().float()
    assert torch.equal(loaded["text.token_embedding.weight"], expected)
    assert torch.equal(loaded["text.text_projection"], openai_state_dict["text_projection"].half().float())


def test_weight_hash(tmp_path, openai_state_dict):
    torch.save(openai_state_dict, tmp_path / "model.pt")
    save_file(openai_state_dict, str(tmp_path / "model.safetensors"))
    first = load_backbone(checkpoint=tmp_path / "model.pt")
    second = load_backbone(checkpoint=tmp_path / "model.safetensors")
    assert backbone_weight_hash(first) == backbone_weight_hash(second)
    first.text.method_scale = torch.nn.Parameter(torch.ones(3))  # a method's own parameter is not the backbone's
    assert backbone_weight_hash(first) == backbone_weight_hash(second)
    with torch.no_grad():
        second.visual.ln_post.bias[0] += 1e-3
    assert backbone_weight_hash(first) != backbone_weight_hash(second)
