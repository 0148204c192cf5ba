import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from petvr.backbone import create_backbone, get_model_config
from petvr.methods.heads import (
    MeanPooling, PooledVideoHead, QueryScoringPooling, SequenceLSTM, build_head, list_heads,
)

SCALE = torch.tensor(100.0)


@pytest.fixture(scope="module")
def tiny_backbone():
    torch.manual_seed(0)
    return create_backbone("petvr-tiny")


@pytest.fixture(scope="module")
def width(tiny_backbone):
    return tiny_backbone.config.embed_dim


def tiny_head(name, backbone, **options):
    torch.manual_seed(1)
    return build_head(name, backbone, **options).eval()


@pytest.mark.parametrize(
    "name, expected",
    [("meanP", 0), ("seqLSTM", 2_140_672), ("seqTransf", 12_648_960), ("tightTransf", 12_913_153), ("query_scoring", 0)],
)
def test_parameter_counts_match_clip4clip_on_vit_b32(name, expected):
    backbone = create_backbone("ViT-B-32", device="meta")
    with torch.device("meta"):
        head = build_head(name, backbone)
    assert sum(p.numel() for p in head.parameters()) == expected


def test_registry_names_and_unknown_head(tiny_backbone):
    assert list_heads() == ["meanP", "seqLSTM", "seqTransf", "tightTransf", "query_scoring"]
    assert [build_head(n, tiny_backbone).pairwise for n in list_heads()] == [False, False, False, True, True]
    with pytest.raises(ValueError, match="known heads: meanP, seqLSTM, seqTransf, tightTransf, query_scoring"):
        build_head("meanp", tiny_backbone)


def test_transformer_heads_reject_backbones_they_cannot_initialise_from():
    config = get_model_config("petvr-tiny")
    narrow = create_backbone(dataclasses.replace(config, embed_dim=64), device="meta")
    with torch.device("meta"), pytest.raises(ValueError, match="embed_dim 64"):
        build_head("seqTransf", narrow)
    tiny = create_backbone(config, device="meta")
    with torch.device("meta"), pytest.raises(ValueError, match="num_layers must be in 1..4"):
        build_head("tightTransf", tiny, num_layers=5)


@pytest.mark.parametrize("name, table", [("seqTransf", "frame_position_embeddings"), ("tightTransf", "position_embeddings")])
def test_transformer_heads_start_as_copies_of_the_text_tower(tiny_backbone, name, table):
    before = {k: v.clone() for k, v in tiny_backbone.state_dict().items()}
    head = build_head(name, tiny_backbone, num_layers=3)
    text = tiny_backbone.text
    assert len(head.transformer.resblocks) == 3
    for index, block in enumerate(head.transformer.resblocks):
        source = text.transformer.resblocks[index].state_dict()
        for key, value in block.state_dict().items():
            assert torch.equal(value, source[key]), f"block {index} {key}"
    assert torch.equal(getattr(head, table).weight, text.positional_embedding)

    backbone_params = list(tiny_backbone.parameters())
    assert not {id(p) for p in head.parameters()} & {id(p) for p in backbone_params}
    assert not {p.data_ptr() for p in head.parameters()} & {p.data_ptr() for p in backbone_params}
    with torch.no_grad():  # training the head must not move the backbone
        for p in head.parameters():
            p.add_(1.0)
    after = tiny_backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_seq_lstm_keeps_the_unused_position_table_from_text_positions(tiny_backbone):
    head = build_head("seqLSTM", tiny_backbone)
    assert torch.equal(head.frame_position_embeddings.weight, tiny_backbone.text.positional_embedding)


def test_mean_pooling_matches_hand_computation_and_ignores_padding(width):
    torch.manual_seed(2)
    frames = torch.randn(2, 3, width)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    text = torch.randn(4, width)
    expected_videos = torch.stack([
        F.normalize(F.normalize(frames[0, :2], dim=-1).mean(0), dim=0),
        F.normalize(F.normalize(frames[1], dim=-1).mean(0), dim=0),
    ])
    expected = SCALE * F.normalize(text, dim=-1) @ expected_videos.T

    head = MeanPooling()
    torch.testing.assert_close(head.pool_video(frames, mask), expected_videos)
    torch.testing.assert_close(head(text, frames, mask, SCALE), expected)

    garbage = torch.full((2, 2, width), float("nan"))
    padded_frames = torch.cat([frames, garbage], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 2, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(head(text, padded_frames, padded_mask, SCALE), expected)


@pytest.mark.parametrize("name", ["seqLSTM", "seqTransf", "tightTransf", "query_scoring"])
def test_padded_frame_content_does_not_change_scores(tiny_backbone, width, name):
    torch.manual_seed(3)
    head = tiny_head(name, tiny_backbone)
    text = torch.randn(3, width)
    frames = torch.randn(2, 6, width)
    mask = torch.tensor([[True, True, True, True, False, False], [True, True, True, True, True, True]])
    reference = head(text, frames, mask, SCALE)
    assert reference.shape == (3, 2)

    noisy = frames.clone()
    noisy[0, 4:] = torch.randn(2, width) * 50
    torch.testing.assert_close(head(text, noisy, mask, SCALE), reference)
    noisy[0, 4:] = float("nan")
    torch.testing.assert_close(head(text, noisy, mask, SCALE), reference)
    # the short video alone, without padding, scores the same
    torch.testing.assert_close(head(text, frames[:1, :4], mask[:1, :4], SCALE), reference[:, :1])


def test_seq_lstm_reads_valid_frames_in_order_wherever_the_mask_puts_them(tiny_backbone, width):
    torch.manual_seed(4)
    head = tiny_head("seqLSTM", tiny_backbone)
    valid = torch.randn(1, 3, width)
    scattered = torch.full((1, 5, width), float("nan"))
    scattered[0, [0, 2, 4]] = valid[0]
    scattered_mask = torch.tensor([[True, False, True, False, True]])
    torch.testing.assert_close(
        head.pool_video(scattered, scattered_mask), head.pool_video(valid, torch.ones(1, 3, dtype=torch.bool))
    )


@pytest.mark.parametrize("name", list_heads())
def test_videos_without_valid_frames_are_refused_by_position(tiny_backbone, width, name):
    """CLIP4Clip gives NaN or raises on such a video; a silent score of 0 would hide a data bug."""
    head = tiny_head(name, tiny_backbone)
    frames = torch.randn(4, 3, width)
    text = torch.randn(2, width)
    one_empty = torch.tensor([[True, True, False], [True, False, False], [False] * 3, [True] * 3])
    with pytest.raises(ValueError, match=r"^video 2 of this batch has no valid frame \(frame_mask all False\)"):
        head(text, frames, one_empty, SCALE)
    two_empty = one_empty.clone()
    two_empty[0] = False
    with pytest.raises(ValueError, match=r"^videos 0, 2 of this batch have no valid frame"):
        head(text, frames, two_empty, SCALE)
    if isinstance(head, PooledVideoHead):
        with pytest.raises(ValueError, match="video 2 of this batch"):
            head.pool_video(frames, one_empty)


def test_tight_transformer_scores_each_pair_as_if_alone(tiny_backbone, width):
    torch.manual_seed(5)
    head = tiny_head("tightTransf", tiny_backbone)
    text = torch.randn(3, width)
    frames = torch.randn(4, 5, width)
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, 3:] = False
    mask[3, 1:] = False
    logits = head(text, frames, mask, SCALE)
    assert logits.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            alone = head(text[i : i + 1], frames[j : j + 1], mask[j : j + 1], SCALE)
            torch.testing.assert_close(alone[0, 0], logits[i, j], atol=1e-5, rtol=1e-5)
    # no logit scale: the scale argument is ignored
    torch.testing.assert_close(head(text, frames, mask, torch.tensor(1.0)), logits)


def test_query_scoring_limits(width):
    torch.manual_seed(6)
    text = torch.randn(3, width)
    frames = torch.randn(2, 4, width) * 3
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])

    flat = QueryScoringPooling(temperature=1e6)(text, frames, mask, SCALE)
    raw_mean = torch.stack([frames[0, :3].mean(0), frames[1, 0]])
    expected = SCALE * F.normalize(text, dim=-1) @ F.normalize(raw_mean, dim=-1).T
    torch.testing.assert_close(flat, expected, atol=1e-3, rtol=1e-4)

    sharp = QueryScoringPooling()(text, frames, mask, SCALE)
    single = SCALE * F.cosine_similarity(text, frames[1, 0][None], dim=-1)
    torch.testing.assert_close(sharp[:, 1], single)
    assert not torch.allclose(sharp[:, 0], flat[:, 0], atol=1e-2)  # tau = 5 does weight the frames


def test_query_scoring_weights_raw_versus_normalised_features(width):
    torch.manual_seed(7)
    text = torch.randn(1, width)
    loud = torch.randn(1, width) * 10
    frames = torch.stack([torch.cat([text, loud])])  # frame 0 is the text itself, frame 1 is large and unrelated
    mask = torch.ones(1, 2, dtype=torch.bool)
    raw = QueryScoringPooling(temperature=5.0)(text, frames, mask, SCALE)
    normalised = QueryScoringPooling(temperature=0.01, normalize_features=True)(text, frames, mask, SCALE)
    manual_scores = torch.softmax((frames[0] @ text[0]) / 5.0, dim=0)
    manual = SCALE * F.cosine_similarity(text, (manual_scores[:, None] * frames[0]).sum(0, keepdim=True))
    torch.testing.assert_close(raw[0], manual, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(normalised[0, 0], SCALE, atol=1e-3, rtol=1e-4)  # all weight on the matching frame


@pytest.mark.parametrize("name", ["seqLSTM", "seqTransf", "tightTransf"])
def test_gradients_reach_head_parameters(tiny_backbone, width, name):
    torch.manual_seed(8)
    head = build_head(name, tiny_backbone).train()
    text = torch.randn(3, width)
    frames = torch.randn(2, 4, width)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    head(text, frames, mask, SCALE).logsumexp(dim=1).sum().backward()
    for parameter_name, parameter in head.named_parameters():
        if isinstance(head, SequenceLSTM) and parameter_name == "frame_position_embeddings.weight":
            assert parameter.grad is None  # kept only for CLIP4Clip's layout
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name


class BertStyleLayerNorm(nn.Module):
    """CLIP4Clip's head LayerNorm (modules/until_module.py), written out: epsilon 1e-12 inside the square root."""

    def __init__(self, width, eps=1e-12):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x):
        centred = x - x.mean(-1, keepdim=True)
        return self.weight * centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + self.eps) + self.bias


def head_and_clip4clip_reference(name, backbone):
    """Head ``name`` and CLIP4Clip's cross blocks written with open_clip's Transformer (nn.MultiheadAttention blocks)
    and the BERT-style LayerNorm, fed the head's weights; non-zero LayerNorm biases first, so a mix-up of weights would
    show. Returns (head, reference blocks, number of attention heads)."""
    from open_clip.transformer import QuickGELU, Transformer

    head = tiny_head(name, backbone)
    heads = backbone.config.text.heads
    for block in head.transformer.resblocks:
        block.ln_1.bias.data.normal_(std=0.1)
    reference = Transformer(backbone.config.embed_dim, len(head.transformer.resblocks), heads, act_layer=QuickGELU,
                            norm_layer=BertStyleLayerNorm, batch_first=True)
    reference.load_state_dict(head.transformer.state_dict())
    return head, reference, heads


def additive_key_mask(key_mask, heads):
    """CLIP4Clip's additive -1e6 mask on padded keys, for every query row: (N, L) -> (N * heads, L, L)."""
    additive = (1.0 - key_mask.float())[:, None, :] * -1e6
    return additive.expand(-1, key_mask.shape[1], -1).repeat_interleave(heads, dim=0)


FEATURE_SCALES = [1.0, 1e-3]  # at 1e-3 the LayerNorm epsilon shows: 1e-5 instead of 1e-12 moves seqTransf by 2e-2


@pytest.mark.parametrize("scale", FEATURE_SCALES)
def test_seq_transformer_matches_clip4clip_computed_with_open_clip_blocks(tiny_backbone, width, scale):
    head, reference, heads = head_and_clip4clip_reference("seqTransf", tiny_backbone)

    frames = torch.randn(3, 5, width) * scale
    frame_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        x = frames + head.frame_position_embeddings.weight[:5]
        x = reference(x, attn_mask=additive_key_mask(frame_mask, heads)) + frames
        x = F.normalize(x, dim=-1) * frame_mask[..., None]
        expected = F.normalize(x.sum(1) / frame_mask.sum(1, keepdim=True), dim=-1)
        pooled = head.pool_video(frames, frame_mask)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", FEATURE_SCALES)
def test_tight_transformer_matches_clip4clip_computed_with_open_clip_blocks(tiny_backbone, width, scale):
    head, reference, heads = head_and_clip4clip_reference("tightTransf", tiny_backbone)
    with torch.no_grad():
        head.pooler_norm.bias.normal_(std=0.1)
        head.similarity_dense.bias.normal_(std=0.1)
    pooler_norm = BertStyleLayerNorm(width)
    pooler_norm.load_state_dict(head.pooler_norm.state_dict())

    text = torch.randn(2, width) * scale
    frames = torch.randn(3, 4, width) * scale
    frame_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    expected = torch.empty(2, 3)
    with torch.no_grad():
        for i in range(2):
            for j in range(3):
                tokens = torch.cat([text[i][None], frames[j]])[None] + head.position_embeddings.weight[:5]
                key_mask = torch.cat([torch.ones(1, dtype=torch.bool), frame_mask[j]])[None]
                x = reference(tokens, attn_mask=additive_key_mask(key_mask, heads))
                pooled = head.pooler_activation(head.pooler_dense(pooler_norm(x)[:, 0]))
                expected[i, j] = head.similarity_dense(pooled)[0, 0]
        logits = head(text, frames, frame_mask, SCALE)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_head_blocks_take_clip4clips_layer_norm_epsilon_and_the_backbone_keeps_clips(tiny_backbone):
    for name in ("seqTransf", "tightTransf"):
        head = build_head(name, tiny_backbone)
        assert {m.eps for m in head.modules() if isinstance(m, nn.LayerNorm)} == {1e-12}
    assert {m.eps for m in tiny_backbone.modules() if isinstance(m, nn.LayerNorm)} == {1e-5}
