"""Cross-Modal Adapter: the paper's trainable counts, one shared up-projection slice per (block, sub-layer) that both
towers use and train, exact save/load of that slice, query scoring with a frozen logit scale, fp16 storage as an
option, and the recipes' paper settings."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from petvr.backbone import create_backbone, get_model_config
from petvr.methods import RetrievalModel
from petvr.methods.cross_modal_adapter import CrossModalAdapterWrapper
from petvr.training.recipe import load_recipe
from petvr.training.trainer import TrainConfig, Trainer

# (r, d_s) per dataset (paper v1 §4) and the trained weights on ViT-B/32: total, vision, text, shared
# (reference §2.4).
PAPER = {
    "msrvtt": (8, 16, 519_168, 310_080, 205_632, 3_456),
    "didemo": (8, 8, 520_896, 311_808, 207_360, 1_728),
    "msvd": (16, 16, 1_008_000, 602_112, 399_360, 6_528),
    "vatex": (16, 64, 988_416, 582_528, 379_776, 26_112),
    "activitynet": (16, 512, 805_632, 399_744, 196_992, 208_896),
}


def counts_by_part(model):
    parts = {"vision": 0, "text": 0, "shared": 0}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            part = "shared" if ".shared_up." in name else "vision" if ".visual." in name else "text"
            parts[part] += parameter.numel()
    return parts


@pytest.mark.parametrize("dataset", PAPER)
@pytest.mark.parametrize("backbone", ["ViT-B-32", "ViT-B-16"])
def test_trainable_counts_match_the_paper(dataset, backbone):
    """ViT-B/16 has ViT-B/32's widths and depths, so its counts are the same (v1 reports B/32 only)."""
    r, shared_dim, total, vision, text, shared = PAPER[dataset]
    model = RetrievalModel(create_backbone(backbone, device="meta"), "cross_modal_adapter", bottleneck_dim=r,
                           shared_dim=shared_dim)
    report = model.parameter_report()
    assert (report["trainable"], report["new_parameters"], report["unfrozen_backbone_parameters"]) == (total, total, 0)
    assert counts_by_part(model) == {"vision": vision, "text": text, "shared": shared}


@pytest.mark.parametrize("backbone, options, expected", [
    ("ViT-B-32", {"bottleneck_dim": 16, "shared_dim": 512}, 805_632),
    ("ViT-B-32", {"bottleneck_dim": 16, "shared_dim": 0}, 1_014_528),  # the paper's "20.6% fewer" on ActivityNet
    # 24 vision vs 12 text blocks: vision blocks 12-23 keep their d_s slice to themselves (1,146,048 = 1,149,504 -
    # 12 * 2 * 144, the slices the 12 paired blocks save; the released code cannot run this)
    ("ViT-L-14", {"bottleneck_dim": 8, "shared_dim": 16}, 1_146_048),
    ("ViT-L-14", {"bottleneck_dim": 8, "shared_dim": 0}, 1_149_504),
])
def test_counts_without_sharing_and_with_unpaired_blocks(backbone, options, expected):
    model = RetrievalModel(create_backbone(backbone, device="meta"), "cross_modal_adapter", **options)
    assert model.parameter_report()["trainable"] == expected


def narrow_text_backbone(seed=0):
    """petvr-tiny with a text tower half as wide as the vision tower (128 vs 64) and shallower (4 vs 6 blocks)."""
    config = get_model_config("petvr-tiny")
    config = replace(config, text=replace(config.text, width=64))
    torch.manual_seed(seed)
    return create_backbone(config)


def wrappers(model, tower):
    tower_module = model.backbone.visual if tower == "vision" else model.backbone.text
    return [(layer, target, getattr(block, target)) for layer, block in enumerate(tower_module.transformer.resblocks)
            for target in ("attn", "mlp")]


def test_the_shared_slice_is_one_tensor_used_by_both_towers():
    model = RetrievalModel(narrow_text_backbone(), "cross_modal_adapter", bottleneck_dim=4, shared_dim=16)
    text = {(layer, target): wrapper for layer, target, wrapper in wrappers(model, "text")}
    for layer, target, wrapper in wrappers(model, "vision"):
        assert isinstance(wrapper, CrossModalAdapterWrapper)
        shared = wrapper.adapter.shared
        assert shared is model.method.shared_up[target][str(layer)]
        assert shared.weight.shape == (16, 4) and shared.bias.shape == (16,)
        assert wrapper.adapter.up_unique.out_features == 128 - 16
        if (layer, target) in text:  # text blocks 0-3; vision blocks 4 and 5 have no partner
            partner = text[(layer, target)].adapter
            assert partner.shared is shared and partner.shared.weight.data_ptr() == shared.weight.data_ptr()
            assert partner.up_unique.out_features == 64 - 16
    names = [name for name, _ in model.named_parameters() if ".shared_up." in name]
    assert len(names) == 2 * 6 * 2 and "method.shared_up.attn.0.weight" in names  # one name each, in the method
    assert [name for name in model.state_dict() if "shared" in name] == names  # no second copy under a tower


def test_the_shared_slice_fills_the_last_channels():
    model = RetrievalModel(narrow_text_backbone(), "cross_modal_adapter", bottleneck_dim=4, shared_dim=16)
    adapter = model.backbone.visual.transformer.resblocks[0].mlp.adapter
    with torch.no_grad():
        adapter.up_unique.weight.zero_()
        out = adapter(torch.randn(2, 5, 128))
    assert torch.equal(out[..., :112], torch.zeros(2, 5, 112)) and out[..., 112:].abs().min() > 0


def test_a_text_wide_shared_slice_replaces_the_text_up_projection():
    """ActivityNet's d_s equals the text width: the text adapters have no up-projection of their own."""
    model = RetrievalModel(narrow_text_backbone(), "cross_modal_adapter", bottleneck_dim=4, shared_dim=64)
    assert all(wrapper.adapter.up_unique is None for _, _, wrapper in wrappers(model, "text"))
    assert all(wrapper.adapter.up_unique.out_features == 64 for _, _, wrapper in wrappers(model, "vision"))
    with torch.no_grad():
        assert torch.isfinite(model.encode_text(*text_batch())).all()
    with pytest.raises(ValueError, match="shared_dim .* 0..64, the text tower's width"):
        RetrievalModel(narrow_text_backbone(), "cross_modal_adapter", shared_dim=65)


def text_batch():
    token_ids = torch.tensor([[49406, 1000, 2000, 49407, 0], [49406, 1500, 49407, 0, 0]])
    return token_ids, token_ids != 0


def video_batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 3, 64, 64, generator=generator), torch.tensor([[True, True, True], [True, True, False]])


def shared_gradients(model, loss_of):
    model.zero_grad()
    loss_of(model).backward()
    return {name: p.grad.clone() if p.grad is not None else None for name, p in model.named_parameters()
            if p.requires_grad}


def test_the_shared_slice_is_trained_by_each_tower_alone_and_by_both_together():
    model = RetrievalModel(narrow_text_backbone(), "cross_modal_adapter", bottleneck_dim=4, shared_dim=16).train()
    text_loss = lambda m: m.encode_text(*text_batch()).pow(2).sum()  # noqa: E731
    video_loss = lambda m: m.encode_video(*video_batch()).pow(2).sum()  # noqa: E731
    from_text, from_video = shared_gradients(model, text_loss), shared_gradients(model, video_loss)
    both = shared_gradients(model, lambda m: text_loss(m) + video_loss(m))
    for name in both:
        tower_only = (from_text if ".text." in name else from_video if ".visual." in name else None)
        if tower_only is not None:  # a tower's own adapter learns from its tower only
            other = from_video if tower_only is from_text else from_text
            assert other[name] is None and tower_only[name].abs().sum() > 0, name
            continue
        block = int(name.split(".")[3])  # method.shared_up.<target>.<block>.<weight|bias>
        assert from_video[name].abs().sum() > 0, name
        if block < 4:  # paired with a text block: both towers send gradient, and it adds up
            assert from_text[name].abs().sum() > 0, name
            torch.testing.assert_close(both[name], from_text[name] + from_video[name], rtol=1e-4, atol=1e-6)
        else:  # vision blocks 4 and 5 have no text partner
            assert from_text[name] is None, name


def test_only_the_adapters_train_and_the_logit_scale_stays_frozen():
    model = RetrievalModel(create_backbone("ViT-B-32", device="meta"), "cross_modal_adapter")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert all(".adapter." in name or name.startswith("method.shared_up.") for name in trainable)
    assert not model.backbone.logit_scale.requires_grad
    head = model.method.head
    assert (type(head).__name__, head.temperature, head.normalize_features) == ("QueryScoringPooling", 5.0, False)


def embeddings(model):
    with torch.no_grad():
        return model.encode_text(*text_batch()), model.encode_video(*video_batch())


def test_zero_up_projections_start_as_the_frozen_backbone_the_papers_init_does_not():
    frozen = embeddings(RetrievalModel(narrow_text_backbone(), "zero_shot").eval())
    exact = RetrievalModel(narrow_text_backbone(), "cross_modal_adapter", zero_init_up=True).eval()
    assert exact.method.identity_at_init
    for expected, got in zip(frozen, embeddings(exact)):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    paper = RetrievalModel(narrow_text_backbone(), "cross_modal_adapter").eval()  # N(0, 0.01) up-projections
    assert not paper.method.identity_at_init
    for expected, got in zip(frozen, embeddings(paper)):
        assert not torch.allclose(got, expected, atol=1e-6)
        assert (got - expected).norm() < 0.05 * expected.norm()  # close to it


def test_save_and_load_hold_the_shared_slice_once_and_both_towers_see_the_loaded_value(tmp_path):
    model = RetrievalModel(narrow_text_backbone(), "cross_modal_adapter", bottleneck_dim=4, shared_dim=16).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.01)
    model.save_adapter(tmp_path / "adapter")
    stored = load_file(str(tmp_path / "adapter" / "adapter.safetensors"))
    assert set(stored) == set(model.trainable_state_dict())
    assert sum(".shared_up." in name for name in stored) == 2 * 6 * 2  # (weight, bias) x 6 blocks x 2 sub-layers
    assert sum(t.numel() for t in stored.values()) == model.parameter_report()["trainable"]

    loaded = RetrievalModel.from_adapter(tmp_path / "adapter", backbone=narrow_text_backbone()).eval()
    expected = model.method.shared_up["mlp"]["2"].weight
    for tower in ("vision", "text"):
        (wrapper,) = [w for layer, target, w in wrappers(loaded, tower) if (layer, target) == (2, "mlp")]
        assert torch.equal(wrapper.adapter.shared.weight, expected)
    vision, text = (dict(((layer, target), w) for layer, target, w in wrappers(loaded, tower))
                    for tower in ("vision", "text"))
    assert all(vision[place].adapter.shared is text[place].adapter.shared for place in text)
    for want, got in zip(embeddings(model), embeddings(loaded)):
        assert torch.equal(want, got)


def test_fp16_adapters_are_an_option_float32_the_default():
    for fp16_adapters, dtype in ((False, torch.float32), (True, torch.float16)):
        model = RetrievalModel(narrow_text_backbone(), "cross_modal_adapter", fp16_adapters=fp16_adapters)
        model.store_weights("fp16-weights")
        block = model.backbone.text.transformer.resblocks[1]
        assert block.attn.base_layer.in_proj_weight.dtype == torch.float16  # the backbone, as every method
        assert {p.dtype for n, p in model.named_parameters() if p.requires_grad} == {dtype}
        assert block.attn.adapter.shared.weight.dtype == dtype
        text = model.encode_text(*text_batch())  # (the text tower: fp16 matrices are slow on a CPU)
        assert torch.isfinite(text).all()
        text.pow(2).sum().backward()  # the code's mode trains fp16 weights directly
        grad = block.attn.adapter.shared.weight.grad
        assert grad.dtype == dtype and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_training_on_a_tiny_synthetic_set_lowers_the_loss(tmp_path, pattern_videos):
    """Five steps of the trainer on 8 (caption, video) pairs, the shared slices in the optimizer once."""
    torch.manual_seed(0)
    model = RetrievalModel(create_backbone("petvr-tiny"), "cross_modal_adapter", bottleneck_dim=8, shared_dim=16)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    config = TrainConfig(epochs=5, batch_size=8, optimizer="adamw", lr=1e-2, weight_decay=0.0, warmup=0.0,
                         schedule="warmup_constant", seed=1)
    trainer = Trainer(model, pattern_videos(samples_per_class=1), config, tmp_path / "run")
    groups = {group["name"]: group for group in trainer.optimizer.param_groups}
    optimized = [p for group in groups.values() for p in group["params"]]
    assert len(optimized) == len({id(p) for p in optimized}) == sum(p.requires_grad for p in model.parameters())
    assert all(name.endswith(".bias") for name in groups["new/no_decay"]["param_names"])  # the code's decay rule
    losses = [entry["loss"] for entry in trainer.train()["history"] if "loss" in entry]
    assert len(losses) == 5 and all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 0.15, losses
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)


@pytest.mark.parametrize("dataset", PAPER)
def test_recipes_state_the_papers_settings(dataset):
    recipe = load_recipe(f"{dataset}/cross_modal_adapter")
    r, shared_dim, total = PAPER[dataset][:3]
    method = dict(recipe["method"])
    assert method.pop("name") == "cross_modal_adapter"
    assert (method["bottleneck_dim"], method["shared_dim"]) == (r, shared_dim)
    model = RetrievalModel(create_backbone(recipe["backbone"]["name"], device="meta"), "cross_modal_adapter", **method)
    assert model.parameter_report()["trainable"] == total
    train = recipe["train"]
    assert (train["optimizer"], train["lr"], train["weight_decay"], train["warmup"], train["batch_size"],
            train["seed"], train["max_grad_norm"]) == ("bertadam", 1e-5, 0.2, 0.1, 128, 42, -1.0)
    long_videos = dataset in ("activitynet", "didemo")
    assert train["epochs"] == (20 if dataset == "activitynet" else 5)
    assert recipe["data"]["max_words"] == (64 if long_videos else 32)
    assert recipe["data"]["sampling"]["max_frames"] == (64 if long_videos else 12)
    if dataset == "vatex":  # CLIP4Clip has no VATEX recipe
        assert (recipe["data"]["dataset"], recipe["data"]["train"]["split"], recipe["data"]["test"]["split"]) == (
            "vatex", "train", "test")
    else:  # the same data as the CLIP4Clip recipe
        assert recipe["data"] == load_recipe(f"{dataset}/clip4clip")["data"]
