"""The standard PETL baselines (linear_probe, bitfit, lora, prompt, adapter): trainable counts on ViT-B/32 and ViT-B/16
against counts written out by hand, the learning-rate groups of unfrozen backbone weights, LoRA against merged
weights, VPT's prompt layout per block and the text prompts' pooling, the adapter variants' formulas, fp16 storage,
and training that lowers the loss. The contract every method keeps (trainable set, frozen weights untouched, adapter
round trip, meta counts, identity at initialisation) runs in test_method_contract.py."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from petvr.backbone import TowerContext, create_backbone
from petvr.backbone.config import CLIPConfig, TextConfig, VisionConfig
from petvr.methods import RetrievalModel
from petvr.training.recipe import load_recipe
from petvr.training.trainer import ContrastiveObjective, TrainConfig, Trainer

# ViT-B/32 and ViT-B/16 share every width; only the patch embedding differs, which no baseline touches.
V, T, D, BLOCKS = 768, 512, 512, 12  # vision width, text width, embedding dim, blocks per tower


def adapter_weights(width: int, bottleneck: int) -> int:
    """down (width x b + b) and up (b x width + width)."""
    return width * bottleneck + bottleneck + bottleneck * width + width


HAND_COUNTS = [
    # ln_post (2V), proj (V x D), ln_final (2T), text_projection (T x D), logit scale: CMA's "0.66M"
    ("linear_probe", {}, 2 * V + V * D + 2 * T + T * D + 1),
    # per block: in_proj 3W, out_proj W, c_fc 4W, c_proj W, ln_1 W, ln_2 W = 11W; plus ln_pre, ln_post, ln_final
    ("bitfit", {}, BLOCKS * 11 * V + BLOCKS * 11 * T + 2 * V + T),
    # q and v, r = 8: A (8 x W) and B (W x 8) each
    ("lora", {}, BLOCKS * 2 * (2 * 8 * V + 2 * 8 * T)),
    # r = 4 on q, k, v, out (2rW each), c_fc (r W + 4W r) and c_proj (4W r + r W), vision only, last two blocks
    ("lora", {"rank": 4, "targets": ["q", "k", "v", "out", "c_fc", "c_proj"], "towers": ["vision"], "layers": [-2, -1]},
     2 * (4 * 2 * 4 * V + 2 * (4 * V + 4 * 4 * V))),
    # 20 tokens in each of the 12 vision blocks: CMA's "VPT-deep 0.18M"
    ("prompt", {}, 20 * V * BLOCKS),
    # and in the text blocks too: CMA's "VL-Prompt 0.31M"
    ("prompt", {"towers": ["vision", "text"]}, 20 * (V + T) * BLOCKS),
    ("prompt", {"num_tokens": 10, "depth": 1}, 10 * V),  # VPT-shallow
    ("prompt", {"num_tokens": 5, "depth": 3, "towers": ["text"]}, 5 * T * 3),
    # Houlsby: two adapters per block, b = 64
    ("adapter", {}, BLOCKS * 2 * (adapter_weights(V, 64) + adapter_weights(T, 64))),
    # AdaptFormer: one per block: CMA v2's "AdaptFormer 2.0M"
    ("adapter", {"variant": "adaptformer_parallel"}, BLOCKS * (adapter_weights(V, 64) + adapter_weights(T, 64))),
    ("adapter", {"variant": "adaptformer_sequential", "bottleneck": 16, "towers": ["text"], "layers": [0, 5]},
     2 * adapter_weights(T, 16)),
]
PAPER_ROUNDED = {"linear_probe": 0.66, "prompt": 0.18}  # millions, as Cross-Modal Adapter's Table 4 prints them


@pytest.mark.parametrize("backbone_name", ["ViT-B-32", "ViT-B-16"])
@pytest.mark.parametrize("name, options, expected", HAND_COUNTS,
                         ids=[f"{n}-{'-'.join(map(str, o.values())) or 'default'}" for n, o, _ in HAND_COUNTS])
def test_trainable_counts_equal_the_counts_written_out_by_hand(backbone_name, name, options, expected):
    report = RetrievalModel(create_backbone(backbone_name, device="meta"), name, **options).parameter_report()
    assert report["trainable"] == expected
    if not options and name in PAPER_ROUNDED:
        assert round(expected / 1e6, 2) == PAPER_ROUNDED[name]


def test_the_default_counts_quoted_in_the_method_docstrings():
    assert BLOCKS * 11 * V + BLOCKS * 11 * T + 2 * V + T == 171_008  # MV-Adapter's "CLIP biases"
    assert 2 * V + V * D + 2 * T + T * D + 1 == 657_921
    assert BLOCKS * 2 * (2 * 8 * V + 2 * 8 * T) == 491_520
    assert 20 * (V + T) * BLOCKS == 307_200
    assert BLOCKS * (adapter_weights(V, 64) + adapter_weights(T, 64)) == 1_982_976


def trainable_names(model: RetrievalModel) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


@pytest.mark.parametrize("backbone_name", ["petvr-tiny", "ViT-B-32"])
def test_linear_probe_trains_what_clip4clip_trains_with_every_block_frozen(backbone_name):
    device = "meta" if backbone_name != "petvr-tiny" else None
    probe = RetrievalModel(create_backbone(backbone_name, device=device), "linear_probe")
    backbone = create_backbone(backbone_name, device=device)
    blocks = max(backbone.config.vision.layers, backbone.config.text.layers)
    clip4clip = RetrievalModel(backbone, "clip4clip", freeze_layer_num=blocks)
    assert trainable_names(probe) == trainable_names(clip4clip)
    assert "backbone.logit_scale" in trainable_names(probe)


def test_bitfit_trains_every_backbone_bias_and_nothing_else(tiny_backbone):
    biases = {f"backbone.{name}" for name, _ in tiny_backbone.named_parameters() if name.endswith("bias")}
    model = RetrievalModel(tiny_backbone, "bitfit")
    assert trainable_names(model) == biases
    assert "backbone.visual.transformer.resblocks.0.attn.in_proj_bias" in biases
    assert "backbone.text.ln_final.bias" in biases


@pytest.mark.parametrize("name", ["bitfit", "linear_probe"])
def test_unfrozen_backbone_weights_train_at_the_full_lr_not_the_backbone_rate(tmp_path, tiny_backbone, pattern_videos,
                                                                             name):
    model = RetrievalModel(tiny_backbone, name)
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-2, coef_lr=1e-3)
    trainer = Trainer(model, pattern_videos(num_classes=4), config, tmp_path / "run")
    groups = trainer.optimizer.param_groups
    assert {name for group in groups for name in group["param_names"]} == trainable_names(model)
    assert all(group["lr"] == pytest.approx(1e-2) for group in groups)


# -- LoRA --

LORA_ALL = {"targets": ["q", "k", "v", "out", "c_fc", "c_proj"], "rank": 3, "alpha": 6.0}


def test_lora_equals_the_backbone_with_merged_weights(tiny_backbone):
    """W + (alpha / r) B A, written into a plain copy of the backbone, gives the same embeddings as the wrapped one."""
    frozen = create_backbone("petvr-tiny").eval()
    frozen.load_state_dict(tiny_backbone.state_dict())
    merged = create_backbone("petvr-tiny").eval()
    merged.load_state_dict(tiny_backbone.state_dict())
    model = RetrievalModel(tiny_backbone, "lora", **LORA_ALL).eval()
    scaling = LORA_ALL["alpha"] / LORA_ALL["rank"]
    token_ids = torch.tensor([[49406, 320, 736, 49407, 0], [49406, 1000, 2000, 3000, 49407]])
    frames, frame_mask = torch.randn(2, 3, 3, 64, 64), torch.ones(2, 3, dtype=torch.bool)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(std=0.05)  # B starts at zero: move it so the updates are not empty
        for tower in ("visual", "text"):
            for wrapped, plain in zip(getattr(model.backbone, tower).transformer.resblocks,
                                      getattr(merged, tower).transformer.resblocks):
                width = plain.attn.out_proj.in_features
                for index, name in enumerate(("q", "k", "v")):
                    update = wrapped.attn.updates[name]
                    plain.attn.in_proj_weight[index * width:(index + 1) * width] += (
                        scaling * update.up.weight @ update.down.weight)
                pairs = ((plain.attn.out_proj, wrapped.attn.base_layer.out_proj), (plain.mlp.c_fc, wrapped.mlp.c_fc),
                         (plain.mlp.c_proj, wrapped.mlp.c_proj))
                for plain_linear, wrapper in pairs:
                    plain_linear.weight += scaling * wrapper.update.up.weight @ wrapper.update.down.weight
        text, video = model.encode_text(token_ids, token_ids != 0), model.encode_video(frames, frame_mask)
        torch.testing.assert_close(text, merged.encode_text(token_ids), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(video, merged.encode_frames(frames), atol=1e-5, rtol=1e-4)
        assert not torch.allclose(text, frozen.encode_text(token_ids), atol=1e-3)  # the updates are not empty
        assert not torch.allclose(video, frozen.encode_frames(frames), atol=1e-3)


def test_lora_wraps_only_its_targets_and_layers(tiny_backbone):
    model = RetrievalModel(tiny_backbone, "lora", targets=["v", "c_proj"], towers=["text"], layers=[1])
    trained = trainable_names(model)
    prefix = "backbone.text.transformer.resblocks.1"
    assert trained == {f"{prefix}.attn.updates.v.{part}.weight" for part in ("down", "up")} | {
        f"{prefix}.mlp.c_proj.update.{part}.weight" for part in ("down", "up")}


@pytest.mark.parametrize("options, error", [
    ({"targets": ["q", "query"]}, "LoRA targets"),
    ({"rank": 0}, "rank"),
    ({"layers": [99]}, "outside"),
    ({"towers": ["audio"]}, "towers"),
])
def test_lora_refuses_options_that_do_not_fit(tiny_backbone, options, error):
    with pytest.raises(ValueError, match=error):
        RetrievalModel(tiny_backbone, "lora", **options)


# -- VPT --

def block_inputs(transformer) -> tuple[list[torch.Tensor], list]:
    """Record every block's input (forward pre-hooks); returns the list and the hook handles."""
    inputs: list[torch.Tensor] = []
    handles = [block.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
               for block in transformer.resblocks]
    return inputs, handles


@pytest.mark.parametrize("depth", [None, 1, 3])
def test_vpt_inserts_prompts_after_cls_and_replaces_them_in_the_first_depth_blocks(tiny_backbone, depth):
    count, blocks = 4, tiny_backbone.config.vision.layers
    model = RetrievalModel(tiny_backbone, "prompt", num_tokens=count, depth=depth).eval()
    visual = model.backbone.visual
    hooks = visual.transformer.token_hooks
    prompted = blocks if depth is None else depth
    assert sorted(int(key) for key in hooks) == list(range(prompted))
    inputs, handles = block_inputs(visual.transformer)
    frames = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        out = visual(frames)
        embedded = visual.embed(frames.flatten(0, 1), visual.make_context(1, 2, None))  # CLS + 64 patches
    for handle in handles:
        handle.remove()
    assert all(x.shape == (2, 1 + count + 64, visual.config.width) for x in inputs)  # inserted once, then replaced
    torch.testing.assert_close(inputs[0][:, 0], embedded[:, 0])  # CLS stays first
    torch.testing.assert_close(inputs[0][:, 1 + count:], embedded[:, 1:])
    for layer, x in enumerate(inputs):
        own = hooks[str(min(layer, prompted - 1))][0].prompts.expand(2, -1, -1)
        assert torch.equal(x[:, 1:1 + count], own) == (layer < prompted), layer
    # the tower pools the CLS token at position 0 after the last block
    with torch.no_grad():
        last = visual.transformer.resblocks[-1](inputs[-1], visual.make_context(1, 2, None))
    torch.testing.assert_close(out.flatten(0, 1), visual.ln_post(last[:, 0]) @ visual.proj)


def test_every_deep_prompt_gets_a_gradient(tiny_backbone):
    model = RetrievalModel(tiny_backbone, "prompt", num_tokens=2, towers=["vision", "text"])
    token_ids = torch.tensor([[49406, 320, 49407, 0]])
    loss = model.encode_video(torch.randn(1, 2, 3, 64, 64), torch.ones(1, 2, dtype=torch.bool)).sum() + \
        model.encode_text(token_ids, token_ids != 0).sum()
    loss.backward()
    prompts = [p for name, p in model.named_parameters() if name.endswith(".prompts")]
    assert len(prompts) == tiny_backbone.config.vision.layers + tiny_backbone.config.text.layers
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts)


def test_text_prompts_follow_sot_and_the_tower_pools_the_moved_eot(tiny_backbone):
    count = 3
    model = RetrievalModel(tiny_backbone, "prompt", num_tokens=count, towers=["text"], depth=2).eval()
    text = model.backbone.text
    token_ids = torch.tensor([[49406, 320, 736, 7117, 49407, 0], [49406, 320, 49407, 0, 0, 0]])
    inputs, handles = block_inputs(text.transformer)
    context = text.make_context(token_ids, None)
    with torch.no_grad():
        hidden = text.transformer(text.embed(token_ids), context)
        pooled = model.encode_text(token_ids, token_ids != 0)
    for handle in handles:
        handle.remove()
    assert inputs[0].shape[1] == token_ids.shape[1] + count
    prompts = text.transformer.token_hooks["0"][0].prompts
    torch.testing.assert_close(inputs[0][:, 1:1 + count], prompts.expand(2, -1, -1))
    eot = token_ids.argmax(-1)
    assert context.pool_index.tolist() == (eot + count).tolist()
    assert context.token_mask.tolist() == [[True] * (1 + count) + [True] * 4 + [False],
                                           [True] * (1 + count) + [True, True] + [False] * 3]
    torch.testing.assert_close(pooled, text.pool(hidden, eot + count))
    assert not torch.allclose(pooled, text.pool(hidden, eot), atol=1e-3)


def test_vpt_initialisation_bound_follows_patch_and_width(tiny_backbone):
    model = RetrievalModel(tiny_backbone, "prompt", num_tokens=50, depth=1)
    prompts = model.backbone.visual.transformer.token_hooks["0"][0].prompts
    config = tiny_backbone.config.vision
    bound = math.sqrt(6.0 / (3 * config.patch_size**2 + config.width))
    assert prompts.abs().max() <= bound and prompts.abs().max() > 0.9 * bound


def test_prompt_depth_beyond_the_tower_is_refused(tiny_backbone):
    with pytest.raises(ValueError, match="depth 5 exceeds the text tower's 4 blocks"):
        RetrievalModel(tiny_backbone, "prompt", depth=5, towers=["vision", "text"])


# -- adapters --

@pytest.mark.parametrize("variant, parallel, scale, activation", [
    ("houlsby", False, 1.0, nn.GELU()),
    ("adaptformer_sequential", False, 0.1, nn.ReLU()),
    ("adaptformer_parallel", True, 0.1, nn.ReLU()),
])
def test_adapter_variants_compute_their_formula(tiny_backbone, variant, parallel, scale, activation):
    model = RetrievalModel(tiny_backbone, "adapter", variant=variant, bottleneck=8).eval()
    block = model.backbone.visual.transformer.resblocks[2]
    assert hasattr(block.attn, "adapter") == (variant == "houlsby")
    wrapper = block.mlp
    with torch.no_grad():
        for parameter in wrapper.adapter.parameters():
            parameter.normal_(std=0.1)
        x = torch.randn(3, 5, tiny_backbone.config.vision.width)
        context = TowerContext("vision", 3)
        y = wrapper.base_layer(x, context)
        source = x if parallel else y
        adapter = wrapper.adapter
        expected = y + scale * (activation(source @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T
                                + adapter.up.bias)
        torch.testing.assert_close(wrapper(x, context), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("options, error", [
    ({"variant": "pfeiffer"}, "variant"),
    ({"activation": "swish"}, "activation"),
    ({"bottleneck": 0}, "bottleneck"),
])
def test_adapter_refuses_options_that_do_not_fit(tiny_backbone, options, error):
    with pytest.raises(ValueError, match=error):
        RetrievalModel(tiny_backbone, "adapter", **options)


# -- every baseline --

BASELINES = [("linear_probe", {}), ("bitfit", {}), ("lora", {}), ("prompt", {}),
             ("prompt", {"towers": ["vision", "text"], "depth": 1}), ("adapter", {}),
             ("adapter", {"variant": "adaptformer_parallel"}), ("adapter", {"variant": "adaptformer_sequential"})]
BASELINE_IDS = [f"{n}-{'-'.join(map(str, o.values())) or 'default'}" for n, o in BASELINES]


@pytest.mark.parametrize("name, options", [case for case in BASELINES if case[0] in ("lora", "prompt", "adapter")],
                         ids=[i for i in BASELINE_IDS if i.split("-")[0] in ("lora", "prompt", "adapter")])
def test_fp16_backbone_weights_keep_the_new_weights_in_float32(tiny_backbone, name, options):
    model = RetrievalModel(tiny_backbone, name, **options).eval()
    model.store_weights("fp16-weights")
    assert any(p.dtype == torch.float16 for p in model.parameters() if not p.requires_grad)
    new = [p for p in model.parameters() if p.requires_grad]
    assert new and all(p.dtype == torch.float32 for p in new)
    token_ids = torch.tensor([[49406, 320, 49407, 0]])
    with torch.no_grad():
        text = model.encode_text(token_ids, token_ids != 0)
        video = model.encode_video(torch.randn(1, 2, 3, 64, 64), torch.ones(1, 2, dtype=torch.bool))
    assert torch.isfinite(text).all() and torch.isfinite(video).all()


# A smaller CLIP than petvr-tiny (32 x 32 frames, 2 blocks per tower), so each training run takes a few seconds.
MICRO = CLIPConfig(embed_dim=64, quick_gelu=True,
                   vision=VisionConfig(image_size=32, patch_size=8, width=64, layers=2, heads=2),
                   text=TextConfig(context_length=8, width=64, heads=2, layers=2))


@pytest.mark.parametrize("name, options", BASELINES, ids=BASELINE_IDS)
def test_training_lowers_the_loss(tmp_path, pattern_videos, name, options):
    """Eight steps on 8 patterns x 4 noisy videos; the loss on one clean video per pattern must fall."""
    torch.manual_seed(0)
    model = RetrievalModel(create_backbone(MICRO), name, **options)
    held_out = pattern_videos(num_classes=8, samples_per_class=1, image_size=32, seed=0).batch()

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return ContrastiveObjective(model)(*held_out)["loss"].item()

    before = loss()
    config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, optimizer="adamw", weight_decay=0.0, warmup=0.0,
                         schedule="warmup_constant", seed=1)
    Trainer(model, pattern_videos(num_classes=8, samples_per_class=4, image_size=32, seed=0), config,
            tmp_path / "run").train()
    after = loss()
    assert after < before - 0.05, (before, after)


RECIPE_COUNTS = {"linear_probe": 657_921, "bitfit": 171_008, "lora": 491_520, "prompt": 184_320,
                 "adapter": 3_965_952}  # the counts each recipe's comment states


@pytest.mark.parametrize("name", sorted(RECIPE_COUNTS))
def test_msrvtt_recipes_build_the_stated_model_with_cross_modal_adapters_training(name):
    recipe = load_recipe(f"msrvtt/{name}")
    method = dict(recipe["method"])
    assert method.pop("name") == name
    backbone = create_backbone(recipe["backbone"]["name"], device="meta")
    assert RetrievalModel(backbone, name, **method).parameter_report()["trainable"] == RECIPE_COUNTS[name]
    train = recipe["train"]
    assert (train["optimizer"], train["lr"], train["max_grad_norm"], train["weight_decay"], train["batch_size"],
            train["epochs"]) == ("bertadam", 1e-5, -1.0, 0.2, 128, 5)
    assert recipe["data"]["dataset"] == "msrvtt" and recipe["data"]["sampling"]["max_frames"] == 12
