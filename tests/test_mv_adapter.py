"""MV-Adapter: trainable counts against the paper (reference §1.3), identity at initialisation, padded frames and the
causal text branch, cross-modality tying (one factor, both towers), a short training run, and the recipes."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from petvr.backbone import create_backbone
from petvr.methods import RetrievalModel
from petvr.methods.mv_adapter import CrossModalTying, MVAdapter, TemporalCalibration, TextAdapter, VideoAdapter
from petvr.training.recipe import load_recipe
from petvr.training.trainer import Trainer, TrainConfig

CLIP_BIASES = 171_008  # every bias of CLIP ViT-B (both towers, LayerNorms included); the same for B/16 and B/32
LONG = {"max_frames": 32, "max_words": 64}
COUNTS = [  # (options, trained weights); no adapter weight depends on the patch size, so B/16 and B/32 agree
    ({}, 3_401_728),  # paper default: 12 frames, 32 words, CMT Down-In on the last 2 layers
    ({"tying_position": "down_out"}, 3_325_696),  # the released msrvtt.py
    ({"tying_position": "up_in"}, 3_325_696),  # derived: a 32 -> 64 projection per tower, as Down-Out
    ({"tying_position": "up_out"}, 3_401_728),  # derived: 32 -> W, as Down-In
    ({"tying_layers": [-3, -2, -1]}, 3_444_000),  # LSMDC
    (LONG, 3_457_024),  # DiDeMo
    ({**LONG, "tying_layers": [-1]}, 3_414_752),  # ActivityNet
    ({**LONG, "tying_layers": [-1], "input_norm": True}, 3_445_472),  # derived: anet.py's lnin, 12 x (1,536 + 1,024)
    ({"tying_layers": []}, 3_317_184),  # no CMT
    ({"tying_layers": [], "towers": ["vision"]}, 1_897_920),  # video branch only
    ({"tying_layers": [], "towers": ["text"]}, 1_419_264),  # text branch only
]


@pytest.mark.parametrize("backbone_name", ["ViT-B-16", "ViT-B-32"])
@pytest.mark.parametrize("options, expected", COUNTS, ids=[str(options) for options, _ in COUNTS])
def test_trainable_counts_match_the_paper(backbone_name, options, expected):
    report = RetrievalModel(create_backbone(backbone_name, device="meta"), "mv_adapter", **options).parameter_report()
    counts = (report["trainable"], report["new_parameters"], report["unfrozen_backbone_parameters"])
    assert counts == (expected, expected, 0)


@pytest.mark.parametrize("backbone_name, percent", [("ViT-B-16", 2.388), ("ViT-B-32", 2.362)])
def test_the_backbone_biases_add_171008_and_give_the_papers_percentage(backbone_name, percent):
    model = RetrievalModel(create_backbone(backbone_name, device="meta"), "mv_adapter", train_backbone_biases=True)
    report = model.parameter_report()
    assert (report["new_parameters"], report["unfrozen_backbone_parameters"]) == (3_401_728, CLIP_BIASES)
    assert report["trainable_percent_of_backbone"] == pytest.approx(percent, abs=5e-4)  # paper (B/16): 2.39%
    trained_backbone = [name for name, p in model.backbone.named_parameters()
                        if p.requires_grad and id(p) in model.original_backbone_ids]
    assert all(name.endswith("bias") for name in trained_backbone)
    assert "backbone.logit_scale" not in trained_backbone
    # backbone weights, so they train at lr * coef_lr (the recipes: 5e-6 * 0.02 = the code's 1e-7)
    assert model.parameter_group("backbone.visual.ln_post.bias") == "backbone"
    assert model.parameter_group("backbone.visual.transformer.resblocks.0.mlp.adapter.up.bias") == "new"
    assert model.parameter_group("method.tying_factors.0") == "new"


# -- behaviour on the tiny backbone --

def tiny(seed=0):
    torch.manual_seed(seed)
    return create_backbone("petvr-tiny").eval()


def model_with(seed=0, perturb=0.0, **options):
    """An MV-Adapter on petvr-tiny; ``perturb`` moves every trained weight off its initial value (Up included)."""
    model = RetrievalModel(tiny(), "mv_adapter", **options).eval()
    if perturb:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.add_(torch.randn(parameter.shape, generator=generator) * perturb)
    return model


def inputs(num_frames=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    token_ids = torch.tensor([[49406, 1000, 2000, 49407, 0, 0], [49406, 1500, 49407, 0, 0, 0]])
    frames = torch.randn(2, num_frames, 3, 64, 64, generator=generator)
    return token_ids, token_ids != 0, frames, torch.ones(2, num_frames, dtype=torch.bool)


@pytest.mark.parametrize("options", [{}, {"tying_position": "down_out"}, {"tying_position": "up_out"},
                                     {"input_norm": True, "calibration_cc_projection": False}])
def test_at_initialisation_the_embeddings_are_the_frozen_backbones_exactly(options):
    model, frozen = model_with(**options), tiny()
    token_ids, token_mask, frames, frame_mask = inputs()
    with torch.no_grad():
        assert torch.equal(model.encode_text(token_ids, token_mask), frozen.encode_text(token_ids, token_mask))
        assert torch.equal(model.encode_video(frames, frame_mask), frozen.encode_frames(frames, frame_mask))
        moved = model_with(perturb=0.02, **options)  # the same check fails once Up has left zero
        assert not torch.allclose(moved.encode_video(frames, frame_mask), frozen.encode_frames(frames, frame_mask))


def test_the_calibration_starts_at_one_and_the_adapters_output_zero():
    calibration = TemporalCalibration(64, cc_projection=True)
    frame_mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    alpha = calibration(torch.randn(2, 64), torch.randn(2, 5, 64), frame_mask)
    assert torch.equal(alpha, torch.ones(2, 5, 64))
    model = model_with()
    adapters = [m for m in model.modules() if isinstance(m, (VideoAdapter, TextAdapter))]
    assert len(adapters) == 6 + 4  # every block of both towers of petvr-tiny
    assert all(torch.count_nonzero(adapter.up.weight) == 0 for adapter in adapters)


@pytest.mark.parametrize("padding", ["random", "nan"])
def test_padded_frames_do_not_change_the_valid_frames(padding):
    model = model_with(perturb=0.05)
    token_ids, token_mask, frames, _ = inputs(num_frames=4)
    frame_mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    other = frames.clone()
    other[~frame_mask] = float("nan") if padding == "nan" else torch.randn_like(other[~frame_mask]) * 5
    with torch.no_grad():
        first, second = model.encode_video(frames, frame_mask), model.encode_video(other, frame_mask)
        assert torch.equal(first[frame_mask], second[frame_mask])
        text = model.encode_text(token_ids, token_mask)
        assert torch.equal(model.similarity(text, first, frame_mask), model.similarity(text, second, frame_mask))
        # and the padded frames did reach the adapters: without the mask the valid frames move
        unmasked = model.encode_video(other.nan_to_num(), torch.ones_like(frame_mask))
        assert not torch.allclose(first[frame_mask], unmasked[frame_mask])


def test_the_temporal_transformer_hides_padded_frames_cls_and_patch_tokens_as_keys():
    model = model_with(perturb=0.05)
    _, _, frames, _ = inputs(num_frames=3)
    frame_mask = torch.tensor([[True, True, True], [True, False, False]])
    seen = []
    model.backbone.visual.transformer.resblocks[0].mlp.adapter.temporal.register_forward_pre_hook(
        lambda module, args: seen.append(args[1].key_padding_mask))
    with torch.no_grad():
        model.encode_video(frames, frame_mask)
    # [CC] always visible, then the frames' CLS tokens, then their patch means
    assert torch.equal(seen[0], torch.tensor([[True] * 7, [True, True, False, False, True, False, False]]))


def test_videos_of_a_batch_do_not_see_each_other():
    model = model_with(perturb=0.05)
    _, _, frames, frame_mask = inputs()
    with torch.no_grad():
        together = model.encode_video(frames, frame_mask)
        alone = model.encode_video(frames[:1], frame_mask[:1])
    torch.testing.assert_close(together[:1], alone, atol=1e-6, rtol=1e-5)


def test_the_text_branch_is_causal():
    adapter = model_with(perturb=0.05).backbone.text.transformer.resblocks[1].mlp.adapter
    f = torch.randn(2, 8, adapter.down.in_features)
    changed = f.clone()
    changed[:, 5] += 1.0
    with torch.no_grad():  # the text adapter builds its own causal context
        before, after = adapter(f, None), adapter(changed, None)
    assert torch.equal(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


def test_tokens_after_the_eot_do_not_change_the_caption_embedding():
    model = model_with(perturb=0.05)
    token_ids = torch.tensor([[49406, 1000, 2000, 49407, 0, 0]])
    junk = torch.tensor([[49406, 1000, 2000, 49407, 3000, 4000]])  # EOT still the largest id, so still pooled
    with torch.no_grad():
        assert torch.equal(model.encode_text(token_ids, token_ids != 0), model.encode_text(junk, junk != 0))


def test_frames_and_words_beyond_the_positional_tables_are_refused():
    model = model_with(max_frames=2, max_words=5)
    token_ids, token_mask, frames, frame_mask = inputs(num_frames=3)
    with pytest.raises(ValueError, match=r"3 frames exceed its positional table of 2 \(set method.max_frames"):
        model.encode_video(frames, frame_mask)
    with pytest.raises(ValueError, match=r"6 tokens exceed its positional table of 5 \(set method.max_words"):
        model.encode_text(token_ids, token_mask)


@pytest.mark.parametrize("options, error", [
    ({"tying_position": "down-in"}, "tying_position must be one of"),
    ({"towers": ["vision"]}, r"tying needs both towers.*tying_layers=\[\]"),
    ({"layers": [0, 1]}, r"tying_layers name vision block\(s\) \[4, 5\], which are not adapted"),
    ({"tying_layers": [5]}, "layer 5 is outside the text tower's 4 blocks"),
    ({"bottleneck_width": 63}, "divisible by num_heads"),
])
def test_bad_options_are_refused_with_the_reason(options, error):
    with pytest.raises(ValueError, match=error):
        RetrievalModel(tiny(), "mv_adapter", **options)


def test_under_fp16_weights_the_adapters_stay_float32_and_the_outputs_finite():
    model = model_with(perturb=0.05, train_backbone_biases=True)
    model.store_weights("fp16-weights")
    block = model.backbone.visual.transformer.resblocks[-1].mlp
    assert block.base_layer.c_fc.weight.dtype == torch.float16
    assert {p.dtype for p in block.adapter.parameters()} == {torch.float32}
    assert model.method.tying_factors[0].dtype == torch.float32
    token_ids, token_mask, frames, frame_mask = inputs()
    with torch.no_grad():
        assert torch.isfinite(model.encode_video(frames, frame_mask)).all()
        assert torch.isfinite(model.encode_text(token_ids, token_mask)).all()


# -- cross-modality tying --

def tying_modules(model):
    return {tower: [m.adapter.tying for m in blocks(model, tower) if m.adapter.tying is not None]
            for tower in ("vision", "text")}


def blocks(model, tower):
    module = model.backbone.visual if tower == "vision" else model.backbone.text
    return [block.mlp for block in module.transformer.resblocks]


def test_one_factor_per_tied_layer_is_shared_by_both_towers_and_trained_by_both():
    model = model_with(perturb=0.05, tying_layers=[-2, -1])
    tied = tying_modules(model)
    assert [m.index for m in tied["vision"]] == [m.index for m in tied["text"]] == [0, 1]
    assert blocks(model, "vision")[4].adapter.tying is tied["vision"][0]  # vision blocks 4, 5 and text 2, 3
    assert blocks(model, "text")[2].adapter.tying is tied["text"][0]
    factor_names = [name for name, _ in model.named_parameters() if "tying_factors" in name]
    assert factor_names == ["method.tying_factors.0", "method.tying_factors.1"]  # listed once, under the method
    token_ids, token_mask, frames, frame_mask = inputs()
    for encode in (lambda: model.encode_text(token_ids, token_mask), lambda: model.encode_video(frames, frame_mask)):
        model.zero_grad()
        encode().square().sum().backward()
        assert all(factor.grad is not None and factor.grad.abs().sum() > 0 for factor in model.method.tying_factors)


def test_an_adapter_with_tying_saves_each_factor_once_and_loads_it_into_both_towers(tmp_path):
    model = model_with(perturb=0.05, tying_position="down_out")
    model.save_adapter(tmp_path / "adapter")
    saved = load_file(tmp_path / "adapter" / "adapter.safetensors")
    factors = sorted(name for name in saved if "tying_factors" in name)
    assert factors == ["method.tying_factors.0", "method.tying_factors.1"]
    assert sum("tying.projection.weight" in name for name in saved) == 4  # 2 layers x 2 towers, own projections

    loaded = RetrievalModel.from_adapter(tmp_path / "adapter", backbone=tiny()).eval()
    for index, factor in enumerate(loaded.method.tying_factors):
        assert torch.equal(factor, saved[f"method.tying_factors.{index}"])
    for tower_modules in tying_modules(loaded).values():
        for module in tower_modules:
            assert module.factors.module[module.index] is loaded.method.tying_factors[module.index]
    token_ids, token_mask, frames, frame_mask = inputs()
    with torch.no_grad():
        text, video = loaded.encode_text(token_ids, token_mask), loaded.encode_video(frames, frame_mask)
        assert torch.equal(text, model.encode_text(token_ids, token_mask))
        assert torch.equal(video, model.encode_video(frames, frame_mask))
        loaded.method.tying_factors[1].add_(0.5)  # one tensor feeds both towers: changing it moves both
        assert not torch.equal(text, loaded.encode_text(token_ids, token_mask))
        assert not torch.equal(video, loaded.encode_video(frames, frame_mask))


# -- training --

def test_training_lowers_the_loss(tmp_path, pattern_videos):
    model = RetrievalModel(tiny(), "mv_adapter", train_backbone_biases=True)
    config = TrainConfig(epochs=6, batch_size=8, optimizer="adamw", lr=3e-3, coef_lr=0.1, warmup=0.0,
                         schedule="warmup_constant", weight_decay=0.0, seed=1)
    trainer = Trainer(model, pattern_videos(), config, tmp_path / "run")
    groups = {group["name"]: group["lr"] for group in trainer.optimizer.param_groups}
    assert groups["backbone/no_decay"] == pytest.approx(3e-4) and groups["new/decay"] == pytest.approx(3e-3)
    losses = [entry["loss"] for entry in trainer.train()["history"] if "loss" in entry]
    assert sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2, losses


# -- recipes --

RECIPES = {  # dataset: (trained weights with the CLIP biases, the paper's "tunable params %")
    "msrvtt": (3_572_736, 2.39), "msvd": (3_572_736, 2.39), "lsmdc": (3_615_008, 2.42),
    "didemo": (3_628_032, 2.42), "activitynet": (3_585_760, 2.40),
}


@pytest.mark.parametrize("dataset", RECIPES)
def test_each_recipe_reproduces_the_papers_parameter_share(dataset):
    recipe = load_recipe(f"{dataset}/mv_adapter")
    method = dict(recipe["method"])
    assert method.pop("name") == "mv_adapter"
    assert recipe["backbone"]["name"] == "ViT-B-16-quickgelu"  # OpenAI's ViT-B/16, the paper's backbone
    assert (method["max_frames"], method["max_words"]) == (recipe["data"]["sampling"]["max_frames"],
                                                           recipe["data"]["max_words"])
    report = RetrievalModel(create_backbone(recipe["backbone"]["name"], device="meta"), "mv_adapter",
                            **method).parameter_report()
    trained, percent = RECIPES[dataset]
    assert report["trainable"] == trained
    assert round(report["trainable_percent_of_backbone"], 2) == percent
    train = recipe["train"]
    long_videos = dataset in ("didemo", "activitynet")
    assert (train["optimizer"], train["lr"], train["lr"] * train["coef_lr"], train["weight_decay"], train["warmup"]) \
        == ("bertadam", 5e-6, pytest.approx(1e-7), 0.2, 0.1)
    assert (train["epochs"], train["batch_size"]) == ((15, 64) if long_videos else (5, 128))
    assert (method["max_frames"], method["max_words"]) == ((32, 64) if long_videos else (12, 32))


def test_the_method_class_is_registered_under_its_name():
    assert RetrievalModel(tiny(), "mv_adapter").method.__class__ is MVAdapter
    assert isinstance(tying_modules(model_with())["vision"][0], CrossModalTying)
