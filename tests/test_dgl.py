"""DGL: the paper's trainable counts, global-local attention equal to the masked attention it stands for, which
frames each token sees, frame order, the released postfix prompts' zero gradient, prompts computed once at inference,
training, and the recipes."""
from __future__ import annotations

import pytest
import torch

from petvr.backbone import TowerContext, create_backbone
from petvr.methods import RetrievalModel
from petvr.methods.dgl import DGL, global_local_block
from petvr.training.recipe import load_recipe
from petvr.training.trainer import ContrastiveObjective, TrainConfig, Trainer

TEXT = torch.tensor([[49406, 1000, 2000, 49407, 0, 0], [49406, 1500, 49407, 0, 0, 0], [49406, 7, 8, 9, 10, 49407]])


def tiny(seed=0):
    torch.manual_seed(seed)
    return create_backbone("petvr-tiny")


def model_with(seed=0, **options):
    model = RetrievalModel(tiny(seed), "dgl", **options).eval()
    torch.manual_seed(seed + 100)
    with torch.no_grad():  # move the generator off its initialisation, so every weight matters
        for parameter in model.method.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def videos(num_videos=2, num_frames=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_videos, num_frames, 3, 64, 64, generator=generator), torch.ones(num_videos, num_frames,
                                                                                             dtype=torch.bool)


def embed(model, frames, frame_mask):
    with torch.no_grad():
        return model.encode_video(frames, frame_mask)[:, 0]


# -- counts (reference §1.2) --

@pytest.mark.parametrize("backbone", ["ViT-B-32", "ViT-B-16"])
@pytest.mark.parametrize("variant, total, parts", [
    ("transformer", 9_575_168, {"latent.table": 516_096, "latent.block": 7_087_872, "latent.text_mlp": 1_968_128,
                                "global_prompts": 3_072}),
    ("linear", 827_392, {"latent.frame_prompts": 36_864, "latent.prefix": 393_728, "latent.postfix": 393_728,
                         "global_prompts": 3_072}),
])
def test_trainable_counts_match_the_paper(backbone, variant, total, parts):
    """ViT-B/16 has ViT-B/32's widths and depths, so its counts are the same."""
    model = RetrievalModel(create_backbone(backbone, device="meta"), "dgl", shared_latent_space=variant)
    report = model.parameter_report()
    assert (report["trainable"], report["new_parameters"], report["unfrozen_backbone_parameters"]) == (total, total, 0)
    by_part = {part: sum(p.numel() for n, p in model.method.named_parameters() if n.startswith(part)) for part in parts}
    assert by_part == parts
    assert not model.backbone.logit_scale.requires_grad


# -- global-local attention --

def test_the_global_local_block_equals_the_block_under_the_masked_attention_it_stands_for():
    """One frozen block over [G; frame 1; ...; frame T] with a mask (a frame token sees G and its own frame, a global
    token sees everything) gives what the two-view computation gives; a padded frame is hidden from G."""
    backbone = tiny()
    block = backbone.visual.transformer.resblocks[2]
    batch, frames, tokens, globals_, width = 2, 3, 5, 2, 128
    torch.manual_seed(3)
    g, x = torch.randn(batch, globals_, width), torch.randn(batch * frames, tokens, width)
    frame_mask = torch.tensor([[True, True, True], [True, True, False]])
    valid = torch.cat([torch.ones(batch, globals_, dtype=torch.bool), frame_mask.repeat_interleave(tokens, 1)], 1)
    with torch.no_grad():
        got_g, got_x = global_local_block(block, g, x, frames, TowerContext("vision", batch, frames, frame_mask),
                                          TowerContext("vision", batch, frames, frame_mask, key_padding_mask=valid))
        sequence = torch.cat([g, x.view(batch, frames * tokens, width)], dim=1)
        owner = torch.cat([torch.full((globals_,), -1), torch.arange(frames).repeat_interleave(tokens)])
        pattern = (owner[:, None] == owner[None, :]) | (owner[None, :] == -1) | (owner[:, None] == -1)
        pattern = pattern[None, None] & valid[:, None, None, :]
        dense = block(sequence, TowerContext("vision", batch, attention_mask=pattern))
    torch.testing.assert_close(got_g, dense[:, :globals_], atol=1e-5, rtol=1e-5)
    real = frame_mask.flatten()  # a padded frame's own tokens are never read
    torch.testing.assert_close(got_x[real], dense[:, globals_:].reshape(batch * frames, tokens, width)[real],
                               atol=1e-5, rtol=1e-5)


def test_a_frame_token_sees_only_its_frame_and_the_global_prompts_which_see_every_frame():
    backbone = tiny()
    block = backbone.visual.transformer.resblocks[0]
    torch.manual_seed(4)
    g, x = torch.randn(1, 4, 128), torch.randn(3, 6, 128)
    context = TowerContext("vision", 1, 3)
    changed = x.clone()
    changed[2] += torch.randn(6, 128)  # the last frame only
    with torch.no_grad():
        g1, x1 = global_local_block(block, g, x, 3, context, context)
        g2, x2 = global_local_block(block, g, changed, 3, context, context)
    assert torch.equal(x1[:2], x2[:2])  # frames 0 and 1 did not see frame 2
    assert (g1 - g2).abs().max() > 1e-3  # the global prompts did


def test_perturbing_one_frame_changes_the_video_embedding():
    model = model_with()
    frames, frame_mask = videos()
    changed = frames.clone()
    changed[0, 3] += 0.5 * torch.randn(3, 64, 64)
    before, after = embed(model, frames, frame_mask), embed(model, changed, frame_mask)
    assert (before[0] - after[0]).abs().max() > 1e-4
    torch.testing.assert_close(before[1], after[1], atol=0, rtol=0)  # videos of a batch do not see each other


def test_padded_frames_never_change_the_embedding():
    model = model_with()
    frames, frame_mask = videos(num_frames=4)
    frame_mask[0, 2:] = False
    garbage = frames.clone()
    garbage[0, 2:] = float("nan")
    got = embed(model, garbage, frame_mask)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, embed(model, frames, frame_mask), atol=0, rtol=0)
    torch.testing.assert_close(got[0], embed(model, frames[:1, :2], frame_mask[:1, :2])[0], atol=1e-5, rtol=1e-5)


# -- frame order --

def test_only_the_transformer_variants_per_slot_prompts_make_the_embedding_depend_on_frame_order():
    frames, frame_mask = videos(num_frames=4)
    order = torch.tensor([2, 0, 3, 1])
    shuffled = frames[:, order]

    linear = model_with(shared_latent_space="linear")  # one set of frame prompts for every frame
    torch.testing.assert_close(embed(linear, shuffled, frame_mask), embed(linear, frames, frame_mask),
                               atol=1e-5, rtol=1e-5)

    transformer = model_with(num_frames=4)
    assert (embed(transformer, shuffled, frame_mask) - embed(transformer, frames, frame_mask)).abs().max() > 1e-4
    latent = transformer.method.latent
    with torch.no_grad():  # every slot gets slot 0's tokens: the per-slot prompts coincide, and so does the order
        slots = latent.table[:, latent.text_prompts:].view(latent.table.shape[0], latent.slots, latent.local_prompts, -1)
        slots.copy_(slots[:, :1].expand_as(slots).clone())
    torch.testing.assert_close(embed(transformer, shuffled, frame_mask), embed(transformer, frames, frame_mask),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["linear", "transformer"])
def test_from_the_cls_init_the_video_embedding_starts_as_the_frozen_clips(variant):
    """global_prompt_init="cls": the global prompts are the CLS input token plus DGL's uniform noise, so with the
    shipped petvr-tiny the first global prompt's output starts next to CLIP's mean-pooled frames; from the released
    uniform init it starts elsewhere."""
    import torch.nn.functional as F

    from petvr.backbone.checkpoints import load_backbone

    frames, frame_mask = videos(num_videos=6)
    backbone = load_backbone("petvr-tiny").eval()
    with torch.no_grad():
        frozen = F.normalize(backbone.encode_frames(frames, frame_mask).mean(1), dim=-1)
    agreement = {}
    for init in ("cls", "uniform"):
        torch.manual_seed(0)
        model = RetrievalModel(load_backbone("petvr-tiny"), "dgl", shared_latent_space=variant, num_frames=4,
                               global_prompt_init=init).eval()
        agreement[init] = (F.normalize(embed(model, frames, frame_mask), dim=-1) * frozen).sum(-1).min().item()
        visual = model.backbone.visual
        start = visual.ln_pre(visual.class_embedding + visual.positional_embedding[0]) if init == "cls" else 0
        shape = model.backbone.config.vision
        bound = (6 / (3 * shape.patch_size ** 2 + shape.width)) ** 0.5
        assert (model.method.global_prompts.detach() - start).abs().max() <= bound
    assert agreement["cls"] > 0.95 and agreement["uniform"] < 0.9, agreement


def test_the_transformer_variant_refuses_more_frames_than_its_slots():
    model = model_with(num_frames=3)
    with pytest.raises(ValueError, match="frame prompts for 3 frames"):
        embed(model, *videos(num_frames=4))
    embed(model, *videos(num_frames=2))  # fewer frames use the first slots


# -- text prompts --

def test_the_text_layout_puts_the_postfix_before_the_eot_or_after_the_padding():
    ids = torch.tensor([[49406, 11, 49407, 0]])  # SOT w EOT pad; 2 prefix + 2 postfix prompts
    ours = model_with(text_prompts=2 * 2, local_prompts=2).method
    slot, source, eot = ours.text_layout(ids)
    # [SOT, P0, P1, w, Q0, Q1, EOT, pad]
    assert slot.tolist() == [[-1, 0, 1, -1, 2, 3, -1, -1]] and eot.tolist() == [6]
    assert [s for s, k in zip(source[0].tolist(), slot[0].tolist()) if k < 0] == [0, 1, 2, 3]
    released = model_with(text_prompts=4, local_prompts=2, postfix_position="after_padding").method
    slot, source, eot = released.text_layout(ids)
    # [SOT, P0, P1, w, EOT, pad, Q0, Q1]
    assert slot.tolist() == [[-1, 0, 1, -1, -1, -1, 2, 3]] and eot.tolist() == [4]


@pytest.mark.parametrize("position, postfix_trains", [("before_eot", True), ("after_padding", False)])
def test_the_released_postfix_prompts_get_no_gradient(position, postfix_trains):
    """After the padding the postfix prompts lie behind every EOT: the causal mask hides them from the pooled token."""
    model = model_with(shared_latent_space="linear", postfix_position=position).train()
    model.encode_text(TEXT, TEXT != 0).square().sum().backward()
    latent = model.method.latent
    assert latent.prefix.weight.grad.abs().max() > 0
    assert (latent.postfix.weight.grad.abs().max() > 0) == postfix_trains
    assert (latent.postfix.bias.grad.abs().max() > 0) == postfix_trains


def test_the_eot_sees_the_words_and_tokens_after_it_change_nothing():
    model = model_with()
    with torch.no_grad():
        text = model.encode_text(TEXT, TEXT != 0)
        longer = torch.cat([TEXT, torch.zeros(3, 2, dtype=TEXT.dtype)], dim=1)  # more padding
        torch.testing.assert_close(model.encode_text(longer, longer != 0), text, atol=1e-5, rtol=1e-5)
        other = TEXT.clone()
        other[0, 1] = 3000
        assert (model.encode_text(other, other != 0)[0] - text[0]).abs().max() > 1e-4


# -- inference --

def test_prompts_are_computed_once_at_inference_and_again_after_a_weight_changes():
    model = model_with()
    calls = []
    model.method.latent.register_forward_hook(lambda *args: calls.append(1))
    frames, frame_mask = videos()
    with torch.no_grad():
        first = model.encode_video(frames, frame_mask)
        model.encode_text(TEXT, TEXT != 0)
        assert torch.equal(model.encode_video(frames, frame_mask), first)
        assert len(calls) == 1
        model.method.latent.table.add_(0.1)
        assert not torch.equal(model.encode_video(frames, frame_mask), first)
        assert len(calls) == 2
    model.train()
    ContrastiveObjective(model)(TEXT[:2], TEXT[:2] != 0, frames, frame_mask)["loss"].backward()
    assert len(calls) == 4 and model.method.latent.table.grad is not None  # in training, with their graph, per tower


def test_under_fp16_weights_the_prompts_stay_float32_and_the_outputs_finite():
    model = model_with()
    model.store_weights("fp16-weights")
    assert model.backbone.visual.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.float16
    assert all(p.dtype == torch.float32 for p in model.method.parameters())
    frames, frame_mask = videos()
    with torch.no_grad():
        assert torch.isfinite(model(TEXT[:2], TEXT[:2] != 0, frames, frame_mask)).all()


# -- training --

@pytest.mark.parametrize("init", ["cls", "uniform"])
def test_training_lowers_the_loss(pattern_videos, init):
    """DGL-Linear, full-batch AdamW steps on 8 pattern classes. From the CLS init the random tiny backbone embeds
    every video almost alike (as UniPT's test notes), so that start takes more steps."""
    model = RetrievalModel(tiny(), "dgl", shared_latent_space="linear", num_frames=2, global_prompt_init=init).train()
    losses = pattern_videos().full_batch_losses(model, steps=24 if init == "cls" else 6)
    assert losses[-1] < 0.8 * losses[0], losses


@pytest.mark.slow
def test_the_transformer_variant_trains_with_the_trainer(tmp_path, pattern_videos):
    model = RetrievalModel(tiny(), "dgl", num_frames=2)
    config = TrainConfig(epochs=6, batch_size=8, optimizer="adamw", lr=3e-3, warmup=0.0, schedule="warmup_constant",
                         weight_decay=0.0, seed=1)
    losses = [entry["loss"] for entry in Trainer(model, pattern_videos(), config, tmp_path / "run").train()["history"]
              if "loss" in entry]
    assert sum(losses[-2:]) / 2 < 0.7 * sum(losses[:2]) / 2, losses


# -- recipes (reference §1.3) --

RECIPES = {  # dataset: (latent space, lr, epochs, global batch, frames, words)
    "msrvtt": ("transformer", 2e-3, 5, 512, 12, 32),
    "vatex": ("linear", 5e-3, 10, 512, 12, 32),
    "lsmdc": ("linear", 1e-2, 10, 512, 12, 32),
    "activitynet": ("linear", 1e-2, 10, 128, 64, 64),
}


@pytest.mark.parametrize("dataset", RECIPES)
def test_each_recipe_carries_the_released_script_settings(dataset):
    recipe = load_recipe(f"{dataset}/dgl")
    method = dict(recipe["method"])
    assert method.pop("name") == "dgl"
    space, lr, epochs, batch, frames, words = RECIPES[dataset]
    assert method["shared_latent_space"] == space
    assert method.get("num_frames", 12) == recipe["data"]["sampling"]["max_frames"] == frames
    assert recipe["data"]["max_words"] == words and recipe["data"]["dataset"] == dataset
    train = recipe["train"]
    assert (train["optimizer"], train["lr"], train["epochs"], train["batch_size"]) == ("adamw", lr, epochs, batch)
    assert (train["weight_decay"], train["warmup"], tuple(train["betas"]), train["eps"]) == (0.2, 0.1, (0.9, 0.98), 1e-6)
    report = RetrievalModel(create_backbone(recipe["backbone"]["name"], device="meta"), "dgl",
                            **method).parameter_report()
    expected = {"transformer": 516_096 + 7_087_872 + 1_968_128 + 3_072 + (frames - 12) * 4 * 12 * 768,
                "linear": 827_392}[space]
    assert report["trainable"] == expected


def test_the_synthetic_recipes_cover_both_variants():
    spaces = {load_recipe(name)["method"]["shared_latent_space"] for name in ("synthetic/dgl", "synthetic/dgl_linear")}
    assert spaces == {"transformer", "linear"}


def test_the_method_class_is_registered_under_its_name():
    assert RetrievalModel(tiny(), "dgl").method.__class__ is DGL
