"""The method toolkit: two-step attention (LoRA, prefix prompts, global-local masks), wrap_modules, methods that
own their lr groups, loss terms and weight storage, registered heads, and adapters that find their backbone."""
from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from petvr.adapters import read_adapter_description
from petvr.backbone import TowerContext, create_backbone, save_backbone
from petvr.backbone.blocks import Attention
from petvr.methods import (Method, RetrievalModel, Wrapper, WrappingConfig, build_head, list_heads, register_head,
                           register_method, wrap_modules)
from petvr.methods import base as method_base
from petvr.methods import heads as heads_module
from petvr.methods.heads import MeanPooling
from petvr.training.trainer import TrainConfig, Trainer

WIDTH, HEADS = 16, 2


def reference_attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(d) + mask) v, written out: (N, H, L, d) -> (N, H, L, d)."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return scores.softmax(dim=-1) @ v


def merge_heads(attention, out):
    n, _, length, _ = out.shape
    return attention.out_proj(out.transpose(1, 2).reshape(n, length, -1))


@pytest.fixture
def attention():
    torch.manual_seed(0)
    module = Attention(WIDTH, HEADS)
    nn.init.normal_(module.in_proj_bias, std=0.1)
    return module.eval()


class LoRAqv(Wrapper):
    """Test-only LoRA on q and v: adds B A x to the projected queries and values, never merging weights."""

    def __init__(self, base_layer: Attention, rank: int = 2):
        super().__init__(base_layer)
        width = base_layer.out_proj.in_features
        self.down = nn.ModuleDict({"q": nn.Linear(width, rank, bias=False), "v": nn.Linear(width, rank, bias=False)})
        self.up = nn.ModuleDict({"q": nn.Linear(rank, width, bias=False), "v": nn.Linear(rank, width, bias=False)})

    def forward(self, x, context):
        q, k, v = self.base_layer.project(x, context)
        q = q + self.base_layer.split_heads(self.up["q"](self.down["q"](x)))
        v = v + self.base_layer.split_heads(self.up["v"](self.down["v"](x)))
        return self.base_layer.attend(q, k, v, context)


def test_lora_on_q_and_v_through_project_and_attend_equals_merged_weights(attention):
    lora = LoRAqv(attention)
    x = torch.randn(3, 5, WIDTH)
    context = TowerContext("vision", 3)
    with torch.no_grad():
        for name in ("q", "v"):
            nn.init.normal_(lora.up[name].weight)
        merged = Attention(WIDTH, HEADS)
        merged.load_state_dict(attention.state_dict())
        merged.in_proj_weight[:WIDTH] += lora.up["q"].weight @ lora.down["q"].weight
        merged.in_proj_weight[2 * WIDTH:] += lora.up["v"].weight @ lora.down["v"].weight
        torch.testing.assert_close(lora(x, context), merged(x, context), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(lora(x, context), attention(x, context), atol=1e-3)


@pytest.mark.parametrize("causal", [False, True])
def test_prefix_keys_and_values_are_visible_to_every_query(attention, causal):
    x, prompts = torch.randn(2, 6, WIDTH), torch.randn(2, 3, WIDTH)
    context = TowerContext("text", 2, causal=causal)
    with torch.no_grad():
        q, k, v = attention.project(x, context)
        _, prefix_k, prefix_v = attention.project(prompts, context)
        out = attention.attend(q, k, v, context, extra_keys=prefix_k, extra_values=prefix_v)
        own = torch.ones(6, 6, dtype=torch.bool)
        own = own.tril() if causal else own
        mask = torch.cat([torch.ones(6, 3, dtype=torch.bool), own], dim=1)
        expected = merge_heads(attention, reference_attention(q, torch.cat([prefix_k, k], 2),
                                                              torch.cat([prefix_v, v], 2), mask))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_prefix_with_a_key_padding_mask_keeps_padded_keys_hidden(attention):
    x, prompts = torch.randn(2, 5, WIDTH), torch.randn(2, 2, WIDTH)
    padding = torch.tensor([[True] * 5, [True, True, True, False, False]])
    context = TowerContext("video", 2, key_padding_mask=padding)
    with torch.no_grad():
        q, k, v = attention.project(x, context)
        _, pk, pv = attention.project(prompts, context)
        out = attention.attend(q, k, v, context, extra_keys=pk, extra_values=pv)
        mask = torch.cat([torch.ones(2, 2, dtype=torch.bool), padding], dim=1)[:, None, None, :]
        expected = merge_heads(attention, reference_attention(q, torch.cat([pk, k], 2), torch.cat([pv, v], 2), mask))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="together"):
        attention.attend(q, k, v, context, extra_keys=pk)


def global_local_mask(num_global: int, num_frames: int, tokens_per_frame: int) -> torch.Tensor:
    """DGL's pattern over [G; F_1; ...; F_T]: global tokens see everything, frame tokens see G and their own frame."""
    frame_of = torch.cat([torch.full((num_global,), -1), torch.arange(num_frames).repeat_interleave(tokens_per_frame)])
    is_global = frame_of < 0
    return is_global[:, None] | is_global[None, :] | (frame_of[:, None] == frame_of[None, :])


def test_global_local_attention_mask_equals_attending_per_frame(attention):
    """A few tokens see every frame, the rest only their own frame: the mask slot gives what separate per-frame
    attention over [G; F_t] and one global attention over everything give."""
    num_global, num_frames, per_frame = 2, 3, 4
    globals_, frames = torch.randn(1, num_global, WIDTH), torch.randn(1, num_frames, per_frame, WIDTH)
    sequence = torch.cat([globals_, frames.flatten(1, 2)], dim=1)
    plain = TowerContext("vision", 1)
    with torch.no_grad():
        mask = global_local_mask(num_global, num_frames, per_frame)
        masked = attention(sequence, TowerContext("vision", 1, attention_mask=mask))
        expected_global = attention(sequence, plain)[:, :num_global]
        expected_frames = [attention(torch.cat([globals_, frames[:, t]], dim=1), plain)[:, num_global:]
                           for t in range(num_frames)]
    torch.testing.assert_close(masked[:, :num_global], expected_global, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masked[:, num_global:], torch.cat(expected_frames, dim=1), atol=1e-5, rtol=1e-5)


class Recorder(Wrapper):
    def forward(self, *args):
        return self.base_layer(*args)


def test_wrap_modules_reaches_chosen_towers_layers_and_targets(tiny_backbone):
    sites = wrap_modules(tiny_backbone, lambda original, site: Recorder(original), towers=("vision",),
                         layers=(0, -1), targets=("attn", "mlp.c_fc", "attn.out_proj"))
    last = tiny_backbone.config.vision.layers - 1
    assert sorted((s.layer, s.target) for s in sites) == sorted(
        (layer, target) for layer in (0, last) for target in ("attn", "mlp.c_fc", "attn.out_proj"))
    names = {name for name, _ in tiny_backbone.named_parameters()}
    assert f"visual.transformer.resblocks.{last}.attn.base_layer.in_proj_weight" in names
    assert "visual.transformer.resblocks.0.attn.base_layer.out_proj.base_layer.weight" in names
    assert "visual.transformer.resblocks.0.mlp.c_fc.base_layer.weight" in names
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in names  # untouched layer
    assert "text.transformer.resblocks.0.attn.in_proj_weight" in names  # untouched tower
    assert all(site.width == tiny_backbone.config.vision.width for site in sites)
    with torch.no_grad():
        tiny_backbone.encode_frames(torch.randn(1, 2, 3, 64, 64))  # still runs


@pytest.mark.parametrize("kwargs, error", [
    ({"towers": ("audio",)}, "towers"),
    ({"layers": (99,)}, "outside"),
    ({"targets": ("attn.q_proj",)}, "unknown wrap target"),
])
def test_wrap_modules_refuses_what_does_not_exist(tiny_backbone, kwargs, error):
    with pytest.raises(ValueError, match=error):
        wrap_modules(tiny_backbone, lambda original, site: Recorder(original), **kwargs)


def test_a_wrapper_must_keep_the_original_as_base_layer(tiny_backbone):
    with pytest.raises(TypeError, match="base_layer"):
        wrap_modules(tiny_backbone, lambda original, site: nn.Identity(), targets=("mlp",))


# -- a test-only method that uses every hook a method owns --

@dataclass
class ProbeConfig(WrappingConfig):
    train_names: tuple[str, ...] = ("visual.transformer.resblocks.0.mlp.c_fc.bias",)
    extra_loss: float = 0.0
    bias_group: str = "new"


class ZeroAdapter(Wrapper):
    """base_layer(x) + up(down(x)), ``up`` zero-initialised (identity at initialisation), run in its own dtype."""

    def __init__(self, base_layer, width):
        super().__init__(base_layer)
        self.branch = nn.Sequential(nn.Linear(width, 4), nn.Linear(4, width))
        nn.init.zeros_(self.branch[1].weight)
        nn.init.zeros_(self.branch[1].bias)

    def forward(self, x, context):
        return self.base_layer(x, context) + self.in_own_dtype(self.branch, x)


class Probe(Method):
    def __init__(self, backbone, config):
        super().__init__(backbone, config)
        wrap_modules(backbone, lambda original, site: ZeroAdapter(original, site.width), towers=config.towers,
                     layers=config.layers, targets=("mlp",))
        self.head = build_head(config.sim_header, backbone)

    def backbone_parameters_to_train(self, names):
        return self.config.train_names

    @property
    def identity_at_init(self):
        return True

    def parameter_group(self, name, is_backbone_weight):
        return self.config.bias_group if is_backbone_weight else "new"

    def lr_multipliers(self, coef_lr):
        return {"backbone": coef_lr, "new": 1.0, "biases": 3.0}

    def loss_terms(self, text_embeddings, frame_embeddings, frame_mask, logits):
        return {"probe": self.config.extra_loss * text_embeddings.pow(2).mean()} if self.config.extra_loss else {}


@pytest.fixture
def probe_method():
    register_method("probe", ProbeConfig)(Probe)
    yield "probe"
    method_base._REGISTRY.pop("probe")


def test_backbone_weights_to_train_are_named_as_before_wrapping(tiny_backbone, probe_method):
    model = RetrievalModel(tiny_backbone, probe_method, towers=("vision",), layers=(0,))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert "backbone.visual.transformer.resblocks.0.mlp.base_layer.c_fc.bias" in trainable  # found under base_layer
    assert "backbone.visual.transformer.resblocks.0.mlp.base_layer.c_fc.weight" not in trainable
    assert {n for n in trainable if "branch" in n} == {f"backbone.visual.transformer.resblocks.0.mlp.branch.{i}.{w}"
                                                       for i in (0, 1) for w in ("weight", "bias")}
    assert model.parameter_report()["unfrozen_backbone_parameters"] == tiny_backbone.config.vision.width * 4


def test_an_unknown_backbone_weight_name_is_an_error_not_a_frozen_weight(tiny_backbone, probe_method):
    with pytest.raises(ValueError, match="do not exist.*resblocks.0.mlp.c_fc.biass"):
        RetrievalModel(tiny_backbone, probe_method, train_names=("visual.transformer.resblocks.0.mlp.c_fc.biass",))


@pytest.mark.parametrize("bias_group, expected_multiplier", [("backbone", 1e-3), ("new", 1.0), ("biases", 3.0)])
def test_the_method_sets_each_weights_learning_rate_group(tmp_path, pattern_videos, tiny_backbone, probe_method,
                                                          bias_group, expected_multiplier):
    model = RetrievalModel(tiny_backbone, probe_method, bias_group=bias_group)
    config = TrainConfig(epochs=1, batch_size=4, lr=1e-2, coef_lr=1e-3)
    trainer = Trainer(model, pattern_videos(samples_per_class=1), config, tmp_path / "run")
    (group,) = [g for g in trainer.optimizer.param_groups
                if "backbone.visual.transformer.resblocks.0.mlp.base_layer.c_fc.bias" in g["param_names"]]
    assert group["lr"] == pytest.approx(1e-2 * expected_multiplier)


def test_method_loss_terms_are_added_and_logged(tmp_path, pattern_videos, tiny_backbone, probe_method):
    model = RetrievalModel(tiny_backbone, probe_method, extra_loss=5.0)
    data = pattern_videos(samples_per_class=1)
    trainer = Trainer(model, data, TrainConfig(epochs=1, batch_size=4, lr=1e-3), tmp_path / "run")
    terms = trainer.objective(*data.batch())
    assert terms["probe"] > 0
    torch.testing.assert_close(terms["loss"], terms["infonce"] + terms["probe"])
    history = trainer.train()["history"]
    assert all("probe" in entry for entry in history if "loss" in entry)


def test_fp16_weights_keep_new_modules_in_float32_wherever_they_sit(tmp_path, pattern_videos, tiny_backbone, probe_method):
    model = RetrievalModel(tiny_backbone, probe_method)
    config = TrainConfig(epochs=1, batch_size=4, precision="fp16-weights")
    Trainer(model, pattern_videos(samples_per_class=1), config, tmp_path / "r")
    block = model.backbone.visual.transformer.resblocks[0]
    assert block.mlp.base_layer.c_fc.weight.dtype == torch.float16
    assert block.mlp.branch[0].weight.dtype == torch.float32  # inside the backbone, still float32
    with torch.no_grad():
        out = model.encode_video(torch.randn(1, 2, 3, 64, 64), torch.ones(1, 2, dtype=torch.bool))
    assert torch.isfinite(out).all()


class FirstFrame(MeanPooling):
    """Test-only head: the first frame's normalised embedding."""

    def pool_video(self, frame_embeddings, frame_mask):
        return F.normalize(frame_embeddings[:, 0], dim=-1)


def test_a_head_registered_outside_heads_py_is_buildable_by_name(tiny_backbone):
    register_head("first_frame")(FirstFrame)
    try:
        assert "first_frame" in list_heads()
        model = RetrievalModel(tiny_backbone, "zero_shot", sim_header="first_frame")
        frames = torch.randn(2, 3, 128)
        expected = F.normalize(torch.randn(4, 128), dim=-1)
        logits = model.method.similarity(expected, frames, torch.ones(2, 3, dtype=torch.bool), torch.tensor(1.0))
        torch.testing.assert_close(logits, expected @ F.normalize(frames[:, 0], dim=-1).T)
        with pytest.raises(ValueError, match="registered twice"):
            register_head("first_frame")(FirstFrame)
    finally:
        heads_module._HEADS.pop("first_frame")


def test_from_adapter_finds_the_backbone_by_name_and_hash_when_the_recorded_path_is_gone(tmp_path, monkeypatch):
    torch.manual_seed(3)
    backbone = create_backbone("petvr-tiny")
    checkpoint = save_backbone(backbone, tmp_path / "trained-on" / "petvr-tiny.safetensors")
    model = RetrievalModel(backbone, "clip4clip", freeze_layer_num=3)
    recipe = {"backbone": {"name": "petvr-tiny", "checkpoint": str(checkpoint)}}
    model.save_adapter(tmp_path / "adapter", recipe=recipe)
    moved = tmp_path / "checkpoints"
    moved.mkdir()
    checkpoint.rename(moved / "petvr-tiny.safetensors")
    monkeypatch.setenv("PETVR_CHECKPOINT_DIR", str(moved))
    loaded = RetrievalModel.from_adapter(tmp_path / "adapter")
    assert loaded.backbone_hash == model.backbone_hash
    assert loaded.adapter_description == read_adapter_description(tmp_path / "adapter")

    (moved / "petvr-tiny.safetensors").unlink()  # now only the bundled default is found, with another hash
    with pytest.raises(FileNotFoundError, match=r"weight hash .*tried:(.|\n)*bundled"):
        RetrievalModel.from_adapter(tmp_path / "adapter")


def test_from_adapter_refuses_the_same_weights_under_another_activation(tmp_path):
    """Weights hash alike under GELU and QuickGELU; the recorded config tells them apart (old 'ViT-B-32' adapters)."""
    torch.manual_seed(3)
    backbone = create_backbone("petvr-tiny")
    RetrievalModel(backbone, "zero_shot").save_adapter(tmp_path / "adapter")
    gelu = create_backbone("petvr-tiny")
    gelu.load_state_dict(backbone.state_dict())
    gelu.config.quick_gelu = False
    with pytest.raises(ValueError, match=r"config differs.*quick_gelu': \(True, False\)"):
        RetrievalModel.from_adapter(tmp_path / "adapter", backbone=gelu)


def test_one_loaded_backbone_serves_several_adapters_and_is_never_changed(tmp_path, pattern_videos):
    torch.manual_seed(5)
    base = create_backbone("petvr-tiny").eval()
    before = {name: p.detach().clone() for name, p in base.state_dict().items()}
    flags = {name: p.requires_grad for name, p in base.named_parameters()}
    batch = pattern_videos(samples_per_class=1).batch()
    expected = {}
    for name, method, options in [("lora", "lora", {}), ("bitfit", "bitfit", {}),
                                  ("clip4clip", "clip4clip", {"freeze_layer_num": 4})]:
        torch.manual_seed(6)
        trained = RetrievalModel(shared_view_of(base), method, **options)
        with torch.no_grad():  # distinct trained weights, so each adapter really differs from the backbone
            for parameter in trained.parameters():
                if parameter.requires_grad:
                    parameter.add_(torch.randn_like(parameter) * 0.05)
        trained.save_adapter(tmp_path / name)
        expected[name] = trained.eval()(*batch)
    loaded = {name: RetrievalModel.from_adapter(tmp_path / name, backbone=base).eval() for name in expected}
    for name, model in loaded.items():  # all three live on the one backbone at once
        with torch.no_grad():
            torch.testing.assert_close(model(*batch), expected[name])
    assert set(base.state_dict()) == set(before)  # no module of the backbone was wrapped
    assert all(torch.equal(base.state_dict()[name], value) for name, value in before.items())
    assert {name: p.requires_grad for name, p in base.named_parameters()} == flags
    shared = loaded["lora"].backbone.visual.transformer.resblocks[0].attn.base_layer.in_proj_weight
    assert shared.data_ptr() == base.visual.transformer.resblocks[0].attn.in_proj_weight.data_ptr()  # no copy


def shared_view_of(backbone):
    from petvr.methods.model import shared_view

    return shared_view(backbone, own_copies=[name for name, _ in backbone.named_parameters()])


def test_an_adapter_naming_an_unknown_method_names_its_file(tmp_path):
    RetrievalModel(create_backbone("petvr-tiny"), "zero_shot").save_adapter(tmp_path / "adapter")
    description = (tmp_path / "adapter" / "adapter.json").read_text().replace('"zero_shot"', '"clip5clip"')
    (tmp_path / "adapter" / "adapter.json").write_text(description)
    with pytest.raises(ValueError, match=r"adapter\.json: unknown method 'clip5clip'"):
        RetrievalModel.from_adapter(tmp_path / "adapter")
