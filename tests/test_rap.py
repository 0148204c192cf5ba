"""RAP (a reconstruction): trainable counts, LoRM as the identity at initialisation and as frame weights, ASA against
a direct attention computation, text-conditioned selection that reruns only the pairwise module, the text-free
and light variants, a short training run, and the recipes."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from petvr.backbone import create_backbone
from petvr.evaluation.evaluate import similarity_matrix
from petvr.methods import RetrievalModel
from petvr.methods.rap import AsynchronousSelfAttention, LowRankModulation, RAPConfig
from petvr.training.optim import build_param_groups
from petvr.training.recipe import load_recipe
from petvr.training.trainer import Trainer, TrainConfig

# Derivation (D = 512, W = 768, r = 4, d = 64, 12 frames): LoRM at width X = LayerNorm 2X + reduce 4X + 4 + kernel-3
# convolution 52 + two bases 8X (7,224 at 512; 10,808 at 768); ASA = LayerNorm 1,024 + down 32,832 + gamma 64 N +
# delta 768 + q|k|v 12,480 + up 33,280 (80,384 + 64 N). Only gamma depends on the patch count N.
COUNTS = [  # (backbone, options, trained weights)
    ("ViT-B-32", {}, 90_744),  # N = 49
    ("ViT-B-16", {}, 100_152),  # N = 196
    ("ViT-B-32", {"asa": False}, 7_224),  # light: LoRM on the 512-d frame embeddings only
    ("ViT-B-16", {"asa": False}, 7_224),
    ("ViT-B-32", {"lorm": "both"}, 90_744 + 4 * 10_808),  # + LoRM on the 768-d CLS tokens before the last 4 blocks
]


@pytest.mark.parametrize("backbone_name, options, expected", COUNTS, ids=[f"{b}-{o}" for b, o, _ in COUNTS])
def test_trainable_counts_stay_far_below_two_percent_of_the_backbone(backbone_name, options, expected):
    report = RetrievalModel(create_backbone(backbone_name, device="meta"), "rap", **options).parameter_report()
    assert (report["trainable"], report["unfrozen_backbone_parameters"]) == (expected, 0)
    assert report["trainable_percent_of_backbone"] < 2.0


def tiny(seed=0):
    torch.manual_seed(seed)
    return create_backbone("petvr-tiny").eval()


def clip_batch(seed=1):
    generator = torch.Generator().manual_seed(seed)
    token_ids = torch.tensor([[49406, 1000, 2000, 49407, 0], [49406, 1500, 49407, 0, 0], [49406, 700, 800, 900, 49407]])
    frames = torch.randn(3, 4, 3, 64, 64, generator=generator)
    frame_mask = torch.tensor([[True, True, True, True], [True, True, True, False], [True, True, False, False]])
    return token_ids, token_ids != 0, frames, frame_mask


def logits_of(model):
    token_ids, token_mask, frames, frame_mask = clip_batch()
    with torch.no_grad():
        return model.similarity(model.encode_text(token_ids, token_mask), model.encode_video(frames, frame_mask),
                                frame_mask)


# -- LoRM --

def test_lorm_is_the_identity_at_initialisation_and_leaves_padded_frames_alone():
    lorm = LowRankModulation(16, rank=3, factors="conv")
    x, mask = torch.randn(2, 5, 16), torch.tensor([[True] * 5, [True, True, True, False, False]])
    assert torch.equal(lorm(x, mask), x)
    with torch.no_grad():
        lorm.scale_basis.normal_()
        lorm.shift_basis.normal_()
    out = lorm(x, mask)
    assert not torch.allclose(out[mask], x[mask])
    assert torch.equal(out[~mask], x[~mask])
    assert torch.linalg.matrix_rank(out[0] - x[0]) <= 2 * 3  # (S - 1) x + C: two rank-3 products along time


@pytest.mark.parametrize("options", [{}, {"asa": False}, {"selection": "frame"}, {"lorm": "both"}],
                         ids=["default", "light", "text-free", "lorm-both"])
def test_at_initialisation_every_variant_scores_as_the_frozen_backbone_with_meanP(options):
    expected = logits_of(RetrievalModel(tiny(), "zero_shot").eval())
    torch.testing.assert_close(logits_of(RetrievalModel(tiny(), "rap", **options).eval()), expected, atol=1e-5,
                               rtol=1e-5)


def test_scaling_one_frames_features_raises_that_frames_weight_in_the_pooled_video():
    model = RetrievalModel(tiny(), "rap", asa=False, rank=1, lorm_factors="frame").eval()
    lorm = model.method.lorm
    _, _, frames, frame_mask = clip_batch()
    frozen = F.normalize(tiny().encode_frames(frames, frame_mask), dim=-1).detach()
    text = frozen[:, 0]  # each video's first frame as the query: its score rises with frame 0's weight

    def score(weight_of_first_frame):
        # U = 1 on frame 0 only and V_s = (weight - 1), so s_0 = weight and every other s_t = 1
        lorm.factors = lambda x, mask: torch.zeros(*x.shape[:2], 1).index_fill_(1, torch.tensor([0]), 1.0)
        with torch.no_grad():
            lorm.scale_basis.fill_(weight_of_first_frame - 1)
            return model.similarity(text, model.encode_video(frames, frame_mask), frame_mask).diagonal()

    weights = torch.tensor([[3.0, 1, 1, 1]])
    direct = F.normalize((frozen * (weights * frame_mask)[..., None]).sum(dim=1), dim=-1)
    torch.testing.assert_close(score(3.0), model.logit_scale * (text * direct).sum(dim=-1))
    assert (score(3.0) > score(1.0)).all() and (score(1.0) > score(0.5)).all()


# -- ASA --

def asa_module(num_patches=6, top_k=4, **options):
    torch.manual_seed(0)
    module = AsynchronousSelfAttention(8, num_patches, RAPConfig(top_k=top_k, asa_width=6, asa_heads=2, max_frames=4,
                                                                 **options))
    with torch.no_grad():
        module.up.weight.normal_()
        module.up.bias.normal_()
    return module


def direct_attention(module, patches, frame_mask):
    """Plain multi-head attention over every patch of the valid frames of one video, no offsets, mean, up."""
    valid = patches[frame_mask].flatten(0, 1)  # (valid frames * N, D)
    q, k, v = module.qkv(module.down(module.norm(valid))).chunk(3, dim=-1)
    heads, out = module.heads, []
    for h in range(heads):
        part = slice(h * q.shape[1] // heads, (h + 1) * q.shape[1] // heads)
        scores = q[:, part] @ k[:, part].T / math.sqrt(q.shape[1] // heads)
        out.append(torch.softmax(scores, dim=-1) @ v[:, part])
    return module.up(torch.cat(out, dim=-1).mean(dim=0))


def test_asa_with_every_patch_and_zero_offsets_is_plain_attention_over_those_patches():
    module = asa_module(top_k=6)
    patches = torch.randn(2, 3, 6, 8)
    frame_mask = torch.tensor([[True, True, True], [True, True, False]])
    texts = torch.randn(4, 8)
    with torch.no_grad():
        got = module.refine(module.select(texts, F.normalize(patches, dim=-1)), module.patch_tokens(patches),
                            frame_mask)
        for video in range(2):
            expected = direct_attention(module, patches[video], frame_mask[video])
            for text in range(4):  # every patch kept, so the text no longer matters
                torch.testing.assert_close(got[text, video], expected, atol=1e-5, rtol=1e-5)
        module.patch_offset.normal_()
        module.temporal_offset.normal_()
        warped = module.refine(module.select(texts, F.normalize(patches, dim=-1)), module.patch_tokens(patches),
                               frame_mask)
    assert not torch.allclose(warped, got, atol=1e-4)  # gamma and delta do take part


def test_asa_keeps_the_top_k_patches_of_each_frame_by_their_response_to_the_text():
    module = asa_module(top_k=2)
    patches = F.normalize(torch.randn(1, 2, 6, 8), dim=-1)
    text = patches[0, 0, 4] + patches[0, 1, 1]
    chosen = module.select(text[None], patches)[0, 0]  # (T, k)
    scores = patches[0] @ F.normalize(text, dim=0)
    assert [set(row.tolist()) for row in chosen] == [set(row.topk(2).indices.tolist()) for row in scores]


def test_changing_the_text_changes_the_selection_and_only_the_pairwise_module_reruns():
    model = RetrievalModel(tiny(), "rap", top_k=1).eval()
    with torch.no_grad():
        for parameter in model.method.asa.parameters():
            parameter.normal_(std=0.5)
    _, _, frames, frame_mask = clip_batch()
    with torch.no_grad():
        video = model.encode_video(frames, frame_mask)  # towers, LoRM and per-patch tokens: once per video
    patches = video["patches"]
    assert set(video) == {"frames", "patches", "patch_tokens"} and patches.shape[:3] == (3, 4, 64)
    text_a, text_b = patches[0, 0, 3], patches[0, 0, 40]  # each one patch's own direction

    def no_tower(*args, **kwargs):
        raise AssertionError("a tower ran during pairwise scoring")

    model.backbone.visual.forward = model.backbone.text.forward = no_tower
    model.backbone.visual.transformer.forward = model.backbone.text.transformer.forward = no_tower
    with torch.no_grad():
        selected = model.method.asa.select(torch.stack([text_a, text_b]), patches)  # (2, Nv, T, 1)
        assert (selected[0, 0, 0, 0], selected[1, 0, 0, 0]) == (3, 40)
        logits = model.similarity(torch.stack([text_a, text_b]), video, frame_mask)
        blockwise = similarity_matrix(model, torch.stack([text_a, text_b]), video, frame_mask, block_size=1,
                                      progress=False)
    assert model.method.pairwise
    torch.testing.assert_close(blockwise, logits)  # block by block through the engine's pairwise path
    # the refinement depends on the text: video 0 scored for text a with text b's selection differs
    pooled_only = F.normalize((video["frames"] * frame_mask[..., None]).sum(1), dim=-1)
    assert not torch.allclose(logits, model.logit_scale * F.normalize(torch.stack([text_a, text_b]), dim=-1)
                              @ pooled_only.T, atol=1e-3)


def test_the_text_free_variant_is_one_embedding_per_video_and_needs_no_pairwise_scoring():
    model = RetrievalModel(tiny(), "rap", selection="frame").eval()
    with torch.no_grad():
        model.method.asa.up.weight.normal_()
    assert not model.method.pairwise
    token_ids, token_mask, frames, frame_mask = clip_batch()
    with torch.no_grad():
        video = model.encode_video(frames, frame_mask)
        assert video.shape == (3, 4, 128)
        alone = model.encode_video(frames[:1], frame_mask[:1])  # a video's embedding does not depend on the others
    torch.testing.assert_close(alone[0], video[0], atol=1e-5, rtol=1e-5)


def test_frames_beyond_the_temporal_offsets_and_bad_options_are_refused():
    model = RetrievalModel(tiny(), "rap", max_frames=3)
    _, _, frames, frame_mask = clip_batch()
    with pytest.raises(ValueError, match="4 frames exceed the 3 temporal offsets"):
        model.encode_video(frames, frame_mask)
    with pytest.raises(ValueError, match="lorm must be one of"):
        RetrievalModel(tiny(), "rap", lorm="input")
    with pytest.raises(ValueError, match="nothing to train"):
        RetrievalModel(tiny(), "rap", lorm="off", asa=False)


# -- training --

def test_training_lowers_the_loss(tmp_path, pattern_videos):
    model = RetrievalModel(tiny(), "rap")
    config = TrainConfig(epochs=6, batch_size=8, optimizer="adamw", lr=1e-2, warmup=0.0, schedule="warmup_constant",
                         weight_decay=0.0, seed=1)
    losses = [entry["loss"] for entry in Trainer(model, pattern_videos(), config, tmp_path / "run").train()["history"]
              if "loss" in entry]
    assert sum(losses[-2:]) / 2 < 0.8 * sum(losses[:2]) / 2, losses


# -- recipes --

@pytest.mark.parametrize("dataset", ["msrvtt", "msvd", "didemo", "activitynet"])
def test_each_dataset_recipe_inherits_its_base_and_holds_its_frames(dataset):
    recipe = load_recipe(f"{dataset}/rap")
    base = load_recipe(f"{dataset}/clip4clip")
    assert recipe["method"]["name"] == "rap"
    assert recipe["data"] == base["data"] and recipe["backbone"] == base["backbone"]
    assert recipe["method"]["max_frames"] >= recipe["data"]["sampling"]["max_frames"]


def test_the_light_recipe_turns_asa_off():
    assert load_recipe("synthetic/rap_light")["method"]["asa"] is False
    assert load_recipe("synthetic/rap")["method"].get("asa", True) is True


def test_lorm_trains_in_its_own_learning_rate_group():
    model = RetrievalModel(tiny(), "rap", lorm="both", lorm_layers=[-1], lorm_lr_scale=10.0)
    groups = {name: model.parameter_group(name) for name, p in model.named_parameters() if p.requires_grad}
    assert {group for name, group in groups.items() if "lorm" in name} == {"lorm"}
    assert {group for name, group in groups.items() if "asa" in name} == {"new"}
    optimizer_groups = build_param_groups(model, lr=1e-3, weight_decay=0.0, group_of=model.parameter_group,
                                          lr_multipliers=model.method.lr_multipliers(1e-3))
    rates = {group["name"].split("/")[0]: group["lr"] for group in optimizer_groups}
    assert rates == pytest.approx({"lorm": 1e-2, "new": 1e-3})
