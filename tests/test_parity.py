"""petvr's backbone loaded from each real checkpoint format gives open_clip's and transformers' embeddings.

Each test builds a small reference model with random weights, writes it in a real format into ``tmp_path``, loads it
with ``load_backbone`` and compares image and text embeddings in float32 (max abs diff <= 1e-5). The text input is
the reference tokenizer's output, so both models see the same token ids.
"""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from open_clip.model import CLIP as OpenClipCLIP
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file

from petvr.backbone import CheckpointError, get_model_config, list_model_configs, load_backbone, save_backbone
from petvr.backbone.tokenizer import Tokenizer

TOLERANCE = 1e-5
CAPTIONS = ["a dog catches a frisbee in the park", "someone is cooking pasta", "", "two people dance on a stage"]
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]


def small_open_clip(quick_gelu: bool = True, head_width: int = 64, context_length: int = 16) -> OpenClipCLIP:
    """A two-block open_clip CLIP (widths 128, vocab 49,408) with random weights, reproducible per seed."""
    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=2, width=128, head_width=head_width, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=context_length, width=128, heads=128 // head_width, layers=2)
    model = OpenClipCLIP(64, vision, text, quick_gelu=quick_gelu).eval()
    randomise_vectors(model, layer_norm_names=("ln_",))
    return model


def randomise_vectors(model: torch.nn.Module, layer_norm_names: tuple[str, ...]) -> None:
    """Biases start at zero and LayerNorms at 1/0, which would hide a swapped key: draw them at random too."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                is_norm = any(part in name for part in layer_norm_names)
                parameter.normal_(std=0.1).add_(1.0 if is_norm and name.endswith("weight") else 0.0)


def reference_inputs(context_length: int = 16, image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    images = torch.randn(3, 3, image_size, image_size)
    return images, open_clip.tokenize(CAPTIONS, context_length=context_length)


def assert_matches_open_clip(path, reference: OpenClipCLIP, **load_kwargs) -> None:
    images, token_ids = reference_inputs(reference.context_length, reference.visual.image_size[0])
    model = load_backbone(checkpoint=path, **load_kwargs)
    with torch.inference_mode():
        image_diff = (model.encode_images(images) - reference.encode_image(images)).abs().max().item()
        text_diff = (model.encode_text(token_ids) - reference.encode_text(token_ids)).abs().max().item()
    assert image_diff <= TOLERANCE, f"image embeddings differ by {image_diff}"
    assert text_diff <= TOLERANCE, f"text embeddings differ by {text_diff}"


def write_torchscript(model: OpenClipCLIP, path) -> None:
    """OpenAI's format: a traced CLIP saved with ``torch.jit.save``; its parameters carry OpenAI's key names."""
    example = reference_inputs(model.context_length, model.visual.image_size[0])
    traced = torch.jit.trace(model, example, check_trace=False)
    torch.jit.save(traced, str(path))


def with_module_prefix(model: OpenClipCLIP) -> dict[str, torch.Tensor]:
    return {f"module.{key}": value for key, value in model.state_dict().items()}


WRITERS = {
    "torchscript": write_torchscript,
    "openai_state_dict": lambda model, path: torch.save(model.state_dict(), path),
    "openai_legacy_pickle": lambda model, path: torch.save(
        model.state_dict(), path, _use_new_zipfile_serialization=False
    ),
    "open_clip_module_prefix": lambda model, path: torch.save(with_module_prefix(model), path),
    "open_clip_training_checkpoint": lambda model, path: torch.save(
        {"epoch": 3, "name": "run", "state_dict": with_module_prefix(model)}, path
    ),
    "openai_keys_safetensors": lambda model, path: save_file(
        {key: value.contiguous() for key, value in model.state_dict().items()}, path
    ),
}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_open_clip_parity_per_format(tmp_path, fmt):
    reference = small_open_clip()
    path = tmp_path / ("model.safetensors" if "safetensors" in fmt else "model.pt")
    WRITERS[fmt](reference, path)
    assert_matches_open_clip(path, reference)


def test_open_clip_parity_gelu_state_dict(tmp_path):
    reference = small_open_clip(quick_gelu=False)
    WRITERS["openai_state_dict"](reference, tmp_path / "model.pt")
    assert_matches_open_clip(tmp_path / "model.pt", reference, quick_gelu=False)
    with pytest.raises(AssertionError):  # the activation matters: QuickGELU on GELU weights must not pass
        assert_matches_open_clip(tmp_path / "model.pt", reference, quick_gelu=True)


@pytest.mark.parametrize("quick_gelu", [True, False], ids=["quickgelu", "gelu"])
def test_torchscript_records_its_activation(tmp_path, quick_gelu):
    """A TorchScript archive keeps its modules' classes, so it loads with the right activation without being told,
    and a contradicting flag or model config is refused."""
    reference = small_open_clip(quick_gelu=quick_gelu)
    write_torchscript(reference, tmp_path / "model.pt")
    assert_matches_open_clip(tmp_path / "model.pt", reference)
    with pytest.raises(CheckpointError, match=f"quick_gelu={not quick_gelu} was asked for.*TorchScript code"):
        load_backbone(checkpoint=tmp_path / "model.pt", quick_gelu=not quick_gelu)
    contradicting = write_small_config(tmp_path, 2, quick_gelu=not quick_gelu)
    with pytest.raises(CheckpointError, match=f"small.json has {not quick_gelu}, checkpoint has {quick_gelu}"):
        load_backbone(contradicting, checkpoint=tmp_path / "model.pt")


def test_float16_openai_weights_load_as_float32(tmp_path):
    """OpenAI ships most weights in float16; they load into a float32 model equal to the rounded reference."""
    reference = small_open_clip()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.copy_(parameter.half().float())
    torch.save({k: v.half() for k, v in reference.state_dict().items()}, tmp_path / "fp16.pt")
    assert_matches_open_clip(tmp_path / "fp16.pt", reference)
    assert all(p.dtype == torch.float32 for p in load_backbone(checkpoint=tmp_path / "fp16.pt").parameters())


def write_small_config(folder, heads: int, quick_gelu: bool) -> str:
    """A model config JSON for ``small_open_clip``'s shapes with the given head count and activation."""
    config = {
        "embed_dim": 64, "quick_gelu": quick_gelu,
        "vision": {"image_size": 32, "patch_size": 8, "width": 128, "layers": 2, "heads": heads},
        "text": {"context_length": 16, "vocab_size": 49408, "width": 128, "heads": heads, "layers": 2},
    }
    path = folder / "small.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_heads_and_activation_come_from_the_named_config(tmp_path):
    """Heads and activation are not in the shapes: a 32-wide-head GELU model needs its config; defaults fail."""
    reference = small_open_clip(head_width=32, quick_gelu=False)
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    assert_matches_open_clip(tmp_path / "model.pt", reference, name=write_small_config(tmp_path, 4, quick_gelu=False))
    with pytest.raises(AssertionError):
        assert_matches_open_clip(tmp_path / "model.pt", reference, quick_gelu=False)


def test_a_config_without_quick_gelu_means_gelu_as_in_open_clip(tmp_path):
    reference = small_open_clip(quick_gelu=False)
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    config = json.loads(open(write_small_config(tmp_path, 2, quick_gelu=False)).read())
    del config["quick_gelu"]
    (tmp_path / "no_activation.json").write_text(json.dumps(config))
    assert_matches_open_clip(tmp_path / "model.pt", reference, name=str(tmp_path / "no_activation.json"))


def test_petvr_safetensors_keeps_heads_and_activation(tmp_path):
    reference = small_open_clip(head_width=32, quick_gelu=False)
    torch.save(reference.state_dict(), tmp_path / "model.pt")
    loaded = load_backbone(write_small_config(tmp_path, 4, quick_gelu=False), checkpoint=tmp_path / "model.pt")
    save_backbone(loaded, tmp_path / "petvr.safetensors")
    # heads and activation travel in the file's metadata, so no name or flag is needed
    assert_matches_open_clip(tmp_path / "petvr.safetensors", reference)


# ---------------------------------------------------------------------------------------------------------------------
# Hugging Face transformers
# ---------------------------------------------------------------------------------------------------------------------

def small_hf_clip(hidden_act: str = "quick_gelu", eos_token_id: int = 49407):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    tower = dict(
        hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, hidden_act=hidden_act
    )
    config = CLIPConfig(
        text_config=dict(tower, max_position_embeddings=16, eos_token_id=eos_token_id),
        vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=64,
    )
    model = CLIPModel(config).eval()
    randomise_vectors(model, layer_norm_names=("layer_norm", "layrnorm", "layernorm"))
    return model


def hf_features(output) -> torch.Tensor:
    """transformers 5 returns a model output whose ``pooler_output`` is the projected feature; 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def assert_matches_hf(folder, reference) -> None:
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    token_ids, token_mask = Tokenizer(16)(CAPTIONS)  # EOT (49407) is the largest id, as HF's pooling needs
    model = load_backbone(checkpoint=folder)
    with torch.inference_mode():
        expected_images = hf_features(reference.get_image_features(pixel_values=images))
        expected_text = hf_features(reference.get_text_features(input_ids=token_ids, attention_mask=token_mask.long()))
        image_diff = (model.encode_images(images) - expected_images).abs().max().item()
        text_diff = (model.encode_text(token_ids, token_mask) - expected_text).abs().max().item()
    assert image_diff <= TOLERANCE, f"image embeddings differ by {image_diff}"
    assert text_diff <= TOLERANCE, f"text embeddings differ by {text_diff}"


@pytest.mark.parametrize("eos_token_id", [49407, 2], ids=["eos_49407", "legacy_eos_2_argmax"])
def test_hf_parity_safetensors(tmp_path, eos_token_id):
    reference = small_hf_clip(eos_token_id=eos_token_id)
    reference.save_pretrained(tmp_path / "hf")
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    assert_matches_hf(tmp_path / "hf", reference)


def test_hf_parity_pytorch_bin(tmp_path):
    """transformers 5 only writes safetensors; ``pytorch_model.bin`` (what 4.x wrote with
    ``safe_serialization=False``) is a plain ``torch.save`` of the state dict next to config.json."""
    reference = small_hf_clip()
    reference.config.save_pretrained(tmp_path / "hf")
    torch.save(reference.state_dict(), tmp_path / "hf" / "pytorch_model.bin")
    assert_matches_hf(tmp_path / "hf", reference)


def test_hf_parity_sharded_safetensors(tmp_path):
    reference = small_hf_clip()
    reference.save_pretrained(tmp_path / "hf", max_shard_size="4MB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert_matches_hf(tmp_path / "hf", reference)


def test_hf_parity_gelu(tmp_path):
    reference = small_hf_clip(hidden_act="gelu")
    reference.save_pretrained(tmp_path / "hf")
    assert_matches_hf(tmp_path / "hf", reference)
    assert load_backbone(checkpoint=tmp_path / "hf").config.quick_gelu is False


# ---------------------------------------------------------------------------------------------------------------------
# Full size
# ---------------------------------------------------------------------------------------------------------------------

OPEN_CLIP_NAMES = [name for name in list_model_configs() if name.startswith("ViT-")]


def test_bundled_model_configs_mean_what_open_clip_names_mean():
    """Each bundled ViT config has open_clip's shapes and activation under the same name (GELU unless -quickgelu)."""
    assert {"ViT-B-32", "ViT-B-32-quickgelu", "ViT-B-16", "ViT-B-16-quickgelu", "ViT-L-14",
            "ViT-L-14-quickgelu"} <= set(OPEN_CLIP_NAMES)
    for name in OPEN_CLIP_NAMES:
        theirs, ours = open_clip.get_model_config(name), get_model_config(name)
        vision, text = theirs["vision_cfg"], theirs["text_cfg"]
        assert ours.quick_gelu == theirs.get("quick_gelu", False) == name.endswith("-quickgelu"), name
        assert (ours.embed_dim, ours.vision.image_size, ours.vision.patch_size, ours.vision.width, ours.vision.layers,
                ours.vision.heads) == (theirs["embed_dim"], vision["image_size"], vision["patch_size"], vision["width"],
                                       vision["layers"], vision["width"] // vision.get("head_width", 64)), name
        assert (ours.text.context_length, ours.text.vocab_size, ours.text.width, ours.text.heads,
                ours.text.layers) == tuple(text[key] for key in ("context_length", "vocab_size", "width", "heads",
                                                                 "layers")), name


@pytest.fixture(scope="module")
def vit_b_32_state_dict(tmp_path_factory):
    """A random open_clip ViT-B-32 state dict saved as open_clip writes it; the same weights serve both activations."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vit_b_32") / "open_clip_ViT-B-32.pt"
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), path)
    return path


@pytest.mark.slow
def test_open_clip_state_dict_loads_under_open_clip_names(vit_b_32_state_dict):
    """An open_clip ViT-B-32 state dict loads under ``ViT-B-32`` as open_clip's GELU model and under
    ``ViT-B-32-quickgelu`` as its QuickGELU model: each matches open_clip's model of that name (25 s; the fast tests
    check the same through the bundled configs above and the small models' named configs)."""
    torch.manual_seed(1)
    images, token_ids = torch.randn(1, 3, 224, 224), open_clip.tokenize(CAPTIONS[:2])
    state_dict = torch.load(vit_b_32_state_dict, weights_only=True)
    image_embeddings = {}
    for name in ("ViT-B-32", "ViT-B-32-quickgelu"):
        reference = open_clip.create_model(name, pretrained=None).eval()
        reference.load_state_dict(state_dict)
        model = load_backbone(name, checkpoint=vit_b_32_state_dict)
        assert model.config.quick_gelu == name.endswith("-quickgelu")
        with torch.inference_mode():
            image_embeddings[name] = model.encode_images(images)
            assert (image_embeddings[name] - reference.encode_image(images)).abs().max().item() <= TOLERANCE, name
            assert (model.encode_text(token_ids) - reference.encode_text(token_ids)).abs().max().item() <= TOLERANCE
    assert (image_embeddings["ViT-B-32"] - image_embeddings["ViT-B-32-quickgelu"]).abs().max().item() > 1e-3


@pytest.mark.slow
def test_open_clip_parity_vit_b_32(tmp_path):
    """ViT-B/32 shapes with random weights through OpenAI's TorchScript format: it loads under OpenAI's name
    ``ViT-B-32-quickgelu`` and is refused, naming that name, under open_clip's GELU ``ViT-B-32``."""
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-B-32-quickgelu", pretrained=None).eval()
    write_torchscript(reference, tmp_path / "ViT-B-32.pt")
    images, token_ids = reference_inputs(77, 224)
    model = load_backbone("ViT-B-32-quickgelu", checkpoint=tmp_path / "ViT-B-32.pt")
    with torch.inference_mode():
        assert (model.encode_images(images) - reference.encode_image(images)).abs().max().item() <= TOLERANCE
        assert (model.encode_text(token_ids) - reference.encode_text(token_ids)).abs().max().item() <= TOLERANCE
    with pytest.raises(CheckpointError, match="(?s)quick_gelu: ViT-B-32 has False.*'ViT-B-32-quickgelu' matches it"):
        load_backbone("ViT-B-32", checkpoint=tmp_path / "ViT-B-32.pt")
