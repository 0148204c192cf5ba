"""CLIP4Clip and the retrieval model: trained-parameter counts (reference §1.2), freezing, 3D patch, heads."""
import pytest
import torch

from petvr.backbone import create_backbone
from petvr.methods import RetrievalModel, create_method, list_methods


def meta_model(**config):
    return RetrievalModel(create_backbone("ViT-B-32", device="meta"), "clip4clip", **config)


@pytest.mark.parametrize("freeze, expected", [
    (0, 123_540_993), (6, 62_099_457), (9, 31_378_689), (11, 10_898_177), (12, 657_921)])
def test_trained_parameter_counts_match_clip4clip(freeze, expected):
    report = meta_model(freeze_layer_num=freeze).parameter_report()
    assert report["trainable"] == expected
    assert report["new_parameters"] == 0
    assert report["backbone_parameters"] == 151_277_313


def test_freeze_counts_round_to_the_papers_millions():
    rounded = [round(meta_model(freeze_layer_num=k).parameter_report()["trainable"] / 1e6, 2) for k in (6, 9, 11, 12)]
    assert rounded == [62.10, 31.38, 10.90, 0.66]


@pytest.mark.parametrize("head, extra", [("seqLSTM", 2_140_672), ("seqTransf", 12_648_960), ("tightTransf", 12_913_153)])
def test_heads_add_their_own_parameters(head, extra):
    report = meta_model(freeze_layer_num=0, sim_header=head).parameter_report()
    assert report["new_parameters"] == extra
    assert report["trainable"] == 123_540_993 + extra


def test_freeze_zero_keeps_embeddings_frozen_and_minus_one_trains_all():
    model = meta_model(freeze_layer_num=0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "backbone.text.token_embedding.weight" not in trainable
    assert "backbone.visual.conv1.weight" not in trainable
    assert "backbone.logit_scale" in trainable and "backbone.visual.proj" in trainable
    assert meta_model(freeze_layer_num=-1).parameter_report()["trainable"] == 151_277_313


def test_zero_shot_trains_nothing_and_is_registered():
    assert {"zero_shot", "clip4clip"} <= set(list_methods())
    report = RetrievalModel(create_backbone("ViT-B-32", device="meta"), "zero_shot").parameter_report()
    assert report["trainable"] == 0


def test_unknown_options_and_methods_are_named():
    with pytest.raises(ValueError, match="method 'clip4clip' has unknown key.*sim_head.*did you mean 'sim_header'"):
        create_method("clip4clip", create_backbone("petvr-tiny", device="meta"), sim_head="meanP")
    with pytest.raises(ValueError, match="unknown method 'clip5clip'.*clip4clip"):
        create_method("clip5clip", create_backbone("petvr-tiny", device="meta"))


def test_linear_patch_3d_equals_2d_at_initialisation_and_trains_its_conv():
    torch.manual_seed(0)
    backbone = create_backbone("petvr-tiny").eval()
    frames, mask = torch.randn(2, 4, 3, 64, 64), torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad():
        reference = backbone.encode_frames(frames, mask)
    model = RetrievalModel(backbone, "clip4clip", linear_patch="3d", freeze_layer_num=6)
    with torch.no_grad():
        inflated = model.encode_video(frames, mask)
    torch.testing.assert_close(inflated, reference, atol=1e-5, rtol=1e-5)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "backbone.visual.conv1.conv2.weight" in trainable
    assert not any(".resblocks." in n for n in trainable)  # freeze 6 of 6 vision / 4 text layers: blocks frozen
    # Once the slice for the previous frame is non-zero, frame t's embedding depends on frame t-1 and on no other.
    with torch.no_grad():
        model.backbone.visual.conv1.conv2.weight[:, :, 0].normal_(std=0.02)
        changed = frames.clone()
        changed[:, 1] += 1.0
        before, after = model.encode_video(frames, mask), model.encode_video(changed, mask)
    assert not torch.allclose(before[:, 2], after[:, 2], atol=1e-4)
    torch.testing.assert_close(before[:, 0], after[:, 0])
    torch.testing.assert_close(before[:, 3], after[:, 3])


def test_reproduce_3d_freeze_bug_trains_everything():
    model = meta_model(linear_patch="3d", freeze_layer_num=6, reproduce_3d_freeze_bug=True)
    assert all(p.requires_grad for p in model.parameters())


def test_similarity_shapes_for_every_head():
    torch.manual_seed(0)
    for head in ("meanP", "seqLSTM", "seqTransf", "tightTransf"):
        model = RetrievalModel(create_backbone("petvr-tiny"), "clip4clip", sim_header=head, freeze_layer_num=6).eval()
        token_ids = torch.tensor([[49406, 320, 49407, 0], [49406, 320, 321, 49407], [49406, 49407, 0, 0]])
        frames, mask = torch.randn(2, 3, 3, 64, 64), torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool)
        with torch.no_grad():
            logits = model.similarity(model.encode_text(token_ids, token_ids != 0), model.encode_video(frames, mask), mask)
        assert logits.shape == (3, 2) and torch.isfinite(logits).all()


@pytest.mark.parametrize("head", ["meanP", "seqLSTM", "seqTransf", "tightTransf"])
def test_a_video_without_frames_is_refused_by_the_model_not_scored(head):
    """CLIP4Clip scores such a video NaN (meanP, seqTransf) or raises (seqLSTM); petvr names its batch position."""
    torch.manual_seed(0)
    model = RetrievalModel(create_backbone("petvr-tiny"), "clip4clip", sim_header=head).eval()
    token_ids = torch.tensor([[49406, 320, 49407], [49406, 321, 49407]])
    frames, mask = torch.randn(2, 2, 3, 64, 64), torch.tensor([[True, True], [False, False]])
    with torch.no_grad(), pytest.raises(ValueError, match="video 1 of this batch has no valid frame"):
        model(token_ids, token_ids != 0, frames, mask)
