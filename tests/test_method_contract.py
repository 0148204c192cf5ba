"""The contract every registered method keeps, present and future (as peft's shared tuner tests): run over
``list_methods()``, each with its default config plus the variants listed here.

- the trainable set is exactly the method's new weights plus the backbone weights it declares;
- a training step leaves every other backbone weight bit-identical, and changes the trained ones;
- saving then loading the adapter reproduces the embeddings and logits exactly;
- the parameter report built on the meta device equals the real one;
- a method that declares itself the identity at initialisation embeds exactly as the frozen backbone does.
"""
from __future__ import annotations

import pytest
import torch

from petvr.backbone import create_backbone
from petvr.methods import RetrievalModel, list_methods
from petvr.methods.base import frame_embeddings_of
from petvr.training.trainer import ContrastiveObjective

VARIANTS = {  # options worth covering beyond the defaults; a method missing here runs with its defaults
    "clip4clip": [{"linear_patch": "3d", "freeze_layer_num": 4}, {"sim_header": "seqTransf", "freeze_layer_num": 2},
                  {"sim_header": "tightTransf", "freeze_layer_num": 3}, {"sim_header": "seqLSTM", "freeze_layer_num": 4}],
    "zero_shot": [{"sim_header": "query_scoring"}],
    "linear_probe": [{"sim_header": "seqTransf"}],
    "bitfit": [{"sim_header": "query_scoring"}],
    "lora": [{"targets": ("q", "k", "v", "out", "c_fc", "c_proj"), "rank": 2, "alpha": 4.0, "dropout": 0.1},
             {"towers": ("vision",), "layers": (0, -1)}],
    "prompt": [{"depth": 1, "num_tokens": 3},
               {"towers": ("vision", "text"), "depth": 2, "num_tokens": 2, "dropout": 0.1}],
    "adapter": [{"variant": "adaptformer_parallel"},
                {"variant": "adaptformer_sequential", "bottleneck": 8, "towers": ("text",), "layers": (1,)}],
    "cross_modal_adapter": [{"zero_init_up": True}, {"shared_dim": 0, "dropout": 0.1},
                            {"bottleneck_dim": 4, "shared_dim": 128, "sim_header": "meanP"},
                            {"towers": ("vision",), "layers": (0, -1)}],
    "mv_adapter": [{"train_backbone_biases": True, "tying_position": "down_out"},
                   {"tying_position": "up_in", "calibration_cc_projection": False},
                   {"tying_position": "up_out", "input_norm": True, "tying_layers": [-1]},
                   {"towers": ["vision"], "tying_layers": [], "calibration": False}],
    "unipt": [{"zero_init_up": True}, {"backbone_precision": "bf16", "downsample_factor": 2}],
    "dgl": [{"shared_latent_space": "linear", "postfix_position": "after_padding"},
            {"num_frames": 3, "text_prompts": 2, "local_prompts": 1, "global_prompts": 2}],
    "rap": [{"asa": False}, {"selection": "frame", "lorm": "both", "lorm_layers": [0, -1], "lorm_factors": "centred"},
            {"lorm": "blocks", "top_k": 100, "rank": 2, "lorm_factors": "frame"}, {"lorm": "off", "top_k": 1}],
}
CASES = [(name, options) for name in list_methods() for options in [{}] + VARIANTS.get(name, [])]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in options.items()) or 'default'}" for name, options in CASES]


def fresh_backbone(seed=0):
    torch.manual_seed(seed)
    return create_backbone("petvr-tiny")


def batch(seed=1):
    generator = torch.Generator().manual_seed(seed)
    token_ids = torch.tensor([[49406, 1000, 2000, 49407, 0], [49406, 1500, 49407, 0, 0], [49406, 700, 800, 900, 49407]])
    frames = torch.randn(3, 3, 3, 64, 64, generator=generator)
    frame_mask = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    return token_ids, token_ids != 0, frames, frame_mask


def outputs(model):
    token_ids, token_mask, frames, frame_mask = batch()
    with torch.no_grad():
        text = model.encode_text(token_ids, token_mask)
        video = model.encode_video(frames, frame_mask)
        return text, video, model.similarity(text, video, frame_mask)


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_trainable_set_is_exactly_what_the_method_declares(name, options):
    backbone = fresh_backbone()
    original = {id(p): n for n, p in backbone.named_parameters()}
    model = RetrievalModel(backbone, name, **options)
    declared = set(model.method.backbone_parameters_to_train(list(original.values())))
    for parameter_name, parameter in model.named_parameters():
        if id(parameter) in original:
            assert parameter.requires_grad == (original[id(parameter)] in declared), parameter_name
        else:
            assert parameter.requires_grad, f"{parameter_name}: a weight the method added is frozen"


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_a_training_step_changes_only_the_trained_weights(name, options):
    model = RetrievalModel(fresh_backbone(), name, **options).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        assert model.parameter_report()["trainable"] == 0
        return
    optimizer = torch.optim.SGD(trainable, lr=1.0)
    ContrastiveObjective(model)(*batch())["loss"].backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert not changed & frozen, f"frozen weights changed: {sorted(changed & frozen)[:5]}"
    assert changed, "a training step changed nothing"


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_save_then_load_reproduces_the_embeddings_exactly(name, options, tmp_path):
    model = RetrievalModel(fresh_backbone(), name, **options).eval()
    with torch.no_grad():  # move the trained weights away from their initial values, so loading must restore them
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.01)
    model.save_adapter(tmp_path / "adapter")
    loaded = RetrievalModel.from_adapter(tmp_path / "adapter", backbone=fresh_backbone()).eval()
    for expected, got in zip(outputs(model), outputs(loaded)):
        if isinstance(expected, dict):  # a method's per-video features (VideoFeatures)
            assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
        else:
            assert torch.equal(expected, got)


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_the_meta_device_count_equals_the_parameter_report(name, options):
    real = RetrievalModel(fresh_backbone(), name, **options).parameter_report()
    meta = RetrievalModel(create_backbone("petvr-tiny", device="meta"), name, **options).parameter_report()
    assert meta == real


@pytest.mark.parametrize("name, options", CASES, ids=IDS)
def test_a_method_that_is_the_identity_at_initialisation_embeds_as_the_frozen_backbone(name, options):
    model = RetrievalModel(fresh_backbone(), name, **options).eval()
    if not model.method.identity_at_init:
        pytest.skip(f"{name} does not declare itself the identity at initialisation")
    frozen = fresh_backbone().eval()
    token_ids, token_mask, frames, frame_mask = batch()
    text, video, _ = outputs(model)
    with torch.no_grad():
        torch.testing.assert_close(text, frozen.encode_text(token_ids, token_mask), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(frame_embeddings_of(video), frozen.encode_frames(frames, frame_mask), atol=1e-6,
                                   rtol=1e-5)
