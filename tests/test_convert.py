"""`petvr convert`: official CLIP4Clip / Cross-Modal Adapter checkpoints -> adapter folders.

The official files are written here with random weights under the key names of the official model code (hard-coded
below, independently of petvr's mapping), and the converted model is compared with a forward pass written here from
the official modules' structure (OpenAI-style blocks with an additive -1e6 key mask, BERT-eps LayerNorms).
"""
from __future__ import annotations

import argparse
import copy
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from petvr.backbone import create_backbone
from petvr.backbone.checkpoints import load_backbone
from petvr.convert import ConversionError, convert_checkpoint
from petvr.methods import RetrievalModel

TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class OfficialBlock(nn.Module):
    """CLIP4Clip's head block: attn, ln_1, mlp.{c_fc, c_proj}, ln_2 (eps 1e-12)."""

    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=1e-12)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width, eps=1e-12)
        self.heads = heads

    def forward(self, x, mask):  # x (L, N, D), mask (N, L) valid
        additive = ((1.0 - mask.float()) * -1e6)[:, None, :].expand(-1, mask.shape[1], -1)
        additive = additive.repeat_interleave(self.heads, dim=0)
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=additive)[0]
        return x + self.mlp.c_proj(quick_gelu(self.mlp.c_fc(self.ln_2(x))))


class Stack(nn.Module):
    def __init__(self, width, heads, layers):
        super().__init__()
        self.resblocks = nn.ModuleList(OfficialBlock(width, heads) for _ in range(layers))

    def forward(self, x, mask):
        for block in self.resblocks:
            x = block(x, mask)
        return x


def randomise(module):
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.05)
    return module


class OfficialSeqTransf(nn.Module):
    def __init__(self, width, heads, context, layers):
        super().__init__()
        self.frame_position_embeddings = nn.Embedding(context, width)
        self.transformerClip = Stack(width, heads, layers)

    def logits(self, text, frames, mask, scale):
        x = frames + self.frame_position_embeddings.weight[: frames.shape[1]]
        x = self.transformerClip(x.permute(1, 0, 2), mask).permute(1, 0, 2) + frames
        x = F.normalize(x, dim=-1) * mask[..., None]
        video = F.normalize(x.sum(1) / mask.sum(1, keepdim=True), dim=-1)
        return scale * F.normalize(text, dim=-1) @ video.T


class OfficialTight(nn.Module):
    def __init__(self, width, heads, context, layers):
        super().__init__()
        self.cross = nn.Module()
        self.cross.embeddings = nn.Module()
        self.cross.embeddings.position_embeddings = nn.Embedding(context, width)
        self.cross.transformer = Stack(width, heads, layers)
        self.cross.pooler = nn.Module()
        self.cross.pooler.ln_pool = nn.LayerNorm(width, eps=1e-12)
        self.cross.pooler.dense = nn.Linear(width, width)
        self.similarity_dense = nn.Linear(width, 1)

    def logits(self, text, frames, mask):
        rows = []
        for t in text:
            tokens = torch.cat([t.expand(frames.shape[0], 1, -1), frames], dim=1)
            token_mask = torch.cat([torch.ones(frames.shape[0], 1), mask.float()], dim=1)
            x = tokens + self.cross.embeddings.position_embeddings.weight[: tokens.shape[1]]
            x = self.cross.transformer(x.permute(1, 0, 2), token_mask).permute(1, 0, 2)
            pooled = quick_gelu(self.cross.pooler.dense(self.cross.pooler.ln_pool(x)[:, 0]))
            rows.append(self.similarity_dense(pooled)[:, 0])
        return torch.stack(rows)


@pytest.fixture(scope="module")
def base():
    return load_backbone("petvr-tiny")


def official_clip_keys(backbone) -> dict:
    """The backbone under CLIP4Clip's names: ``clip.`` + OpenAI's (text tower keys at the top level)."""
    return {"clip." + (key.removeprefix("text.") if key.removeprefix("text.").startswith(TEXT_KEYS) else key): value.clone()
            for key, value in backbone.state_dict().items()}


def perturb(state, *keys):
    for key in keys:
        state[key] = state[key] + 0.01


def inputs(backbone, num_videos=3, num_frames=4):
    torch.manual_seed(1)
    size = backbone.config.vision.image_size
    frames = torch.randn(num_videos, num_frames, 3, size, size)
    frame_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    tokens = torch.randint(1, 400, (2, 8))
    return tokens, torch.ones_like(tokens, dtype=torch.bool), frames, frame_mask


def reference_features(base, official, tokens, token_mask, frames, frame_mask):
    """Text and frame features of the official checkpoint's CLIP (loaded through petvr's OpenAI reader path)."""
    tuned = copy.deepcopy(base)
    tuned.load_state_dict({key: official["clip." + (key.removeprefix("text.") if key.removeprefix("text.").startswith(TEXT_KEYS) else key)]
                           for key in tuned.state_dict()})
    zero_shot = RetrievalModel(tuned, "zero_shot")
    with torch.no_grad():
        return zero_shot.encode_text(tokens, token_mask), zero_shot.encode_video(frames, frame_mask), tuned.logit_scale.exp()


def test_clip4clip_seqtransf_matches_official_forward_and_cli(base, convert_with_cli):
    torch.manual_seed(0)
    head = randomise(OfficialSeqTransf(128, 2, 32, 2)).eval()
    official = official_clip_keys(base)
    perturb(official, "clip.visual.transformer.resblocks.3.mlp.c_fc.weight", "clip.transformer.resblocks.3.ln_1.bias",
            "clip.logit_scale", "clip.visual.proj")
    official.update(head.state_dict())
    out, _ = convert_with_cli("clip4clip", official, base)
    model = RetrievalModel.from_adapter(out).eval()
    config = model.method_config_dict()
    assert (config["sim_header"], config["cross_num_hidden_layers"], config["freeze_layer_num"]) == ("seqTransf", 2, 3)
    assert not (out / "backbone.safetensors").exists()  # every changed weight is a trained one

    tokens, token_mask, frames, frame_mask = inputs(base)
    text, video, scale = reference_features(base, official, tokens, token_mask, frames, frame_mask)
    with torch.no_grad():
        expected = head.logits(text, video, frame_mask, scale)
        got = model(tokens, token_mask, frames, frame_mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_clip4clip_tight_transf_3d_and_frozen_change_writes_backbone(base, tmp_path):
    torch.manual_seed(0)
    head = randomise(OfficialTight(128, 2, 32, 1)).eval()
    official = official_clip_keys(base)
    perturb(official, "clip.visual.transformer.resblocks.0.attn.in_proj_weight", "clip.token_embedding.weight")
    conv = official["clip.visual.conv1.weight"]
    official["clip.visual.conv2.weight"] = torch.stack([0.1 * conv, conv, -0.1 * conv], dim=2)
    official.update(head.state_dict())
    path = tmp_path / "tight.bin"
    torch.save(official, path)

    report = convert_checkpoint("clip4clip", path, tmp_path / "out", base=base, overrides={"freeze_layer_num": 4})
    assert report["backbone_file"] == "backbone.safetensors" and report["method_config"]["linear_patch"] == "3d"
    model = RetrievalModel.from_adapter(tmp_path / "out").eval()  # finds the recorded backbone file
    assert model.method_config_dict()["sim_header"] == "tightTransf"

    tokens, token_mask, frames, frame_mask = inputs(base)
    text, _, _ = reference_features(base, official, tokens, token_mask, frames, frame_mask)
    with torch.no_grad():
        video = model.encode_video(frames, frame_mask)
        expected = head.logits(text, video, frame_mask)
        got = model(tokens, token_mask, frames, frame_mask)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    conv3d = model.backbone.visual.conv1.conv2.weight
    assert torch.equal(conv3d, official["clip.visual.conv2.weight"])


def test_cross_modal_adapter_checkpoint(tmp_path):
    config_path = tmp_path / "tiny4.json"
    config_path.write_text('{"embed_dim": 128, "quick_gelu": true, "vision": {"image_size": 32, "patch_size": 8, '
                           '"width": 128, "layers": 2, "heads": 2}, "text": {"context_length": 16, "vocab_size": 500, '
                           '"width": 128, "heads": 2, "layers": 2}}')
    torch.manual_seed(0)
    base = create_backbone(str(config_path))
    official = {key: value.half() if value.dim() == 2 and "embedding" not in key else value
                for key, value in official_clip_keys(base).items()}  # the code stores its CLIP in fp16
    layers, width, r, shared = 2, 128, 8, 16
    for tower in ("visual", "text"):
        official[f"clip.{tower}_adapter_down_weight"] = torch.randn(2 * layers, r, width)
        official[f"clip.{tower}_adapter_down_bias"] = torch.randn(2 * layers, r)
        official[f"clip.{tower}_adapter_up_unique_weight"] = torch.randn(2 * layers, width - shared, r)
        official[f"clip.{tower}_adapter_up_unique_bias"] = torch.randn(2 * layers, width - shared)
    official["clip.vt_adapter_up_share_weight"] = torch.randn(2 * layers, shared, r)
    official["clip.vt_adapter_up_share_bias"] = torch.randn(2 * layers, shared)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": official, "optimizer": {}, "epoch": 4, "args": argparse.Namespace(adapter_share_dim=16)}, path)

    report = convert_checkpoint("cross_modal_adapter", path, tmp_path / "out", base=base)
    assert report["backbone_file"] is None and report["method_config"]["shared_dim"] == shared
    assert report["adapter_bytes"] < report["official_bytes"] / 4
    model = RetrievalModel.from_adapter(tmp_path / "out", backbone=copy.deepcopy(base))
    assert all(".adapter." in name or name.startswith("method.shared_up.") for name in model.trainable_state_dict())
    hidden = torch.randn(3, 5, width)
    for tower, bank in (("visual", "visual"), ("text", "text")):
        for block in range(layers):
            for sub, name in enumerate(("attn", "mlp")):
                index = 2 * block + sub
                z = quick_gelu(F.linear(hidden, official[f"clip.{bank}_adapter_down_weight"][index],
                                        official[f"clip.{bank}_adapter_down_bias"][index]))
                expected = torch.cat([F.linear(z, official[f"clip.{bank}_adapter_up_unique_weight"][index],
                                               official[f"clip.{bank}_adapter_up_unique_bias"][index]),
                                      F.linear(z, official["clip.vt_adapter_up_share_weight"][index],
                                               official["clip.vt_adapter_up_share_bias"][index])], dim=-1)
                wrapper = getattr(getattr(model.backbone, tower).transformer.resblocks[block], name)
                with torch.no_grad():
                    torch.testing.assert_close(wrapper.adapter(hidden), expected)


def test_missing_and_extra_keys_are_listed(base, tmp_path):
    torch.manual_seed(0)
    official = official_clip_keys(base)
    official.update(randomise(OfficialSeqTransf(128, 2, 32, 1)).state_dict())
    del official["transformerClip.resblocks.0.ln_1.weight"], official["clip.ln_final.bias"]
    official["q_score_proj.weight"] = torch.zeros(2, 2)
    official["clip.visual.extra_table"] = torch.zeros(3)
    torch.save(official, tmp_path / "broken.bin")
    with pytest.raises(ConversionError) as caught:
        convert_checkpoint("clip4clip", tmp_path / "broken.bin", tmp_path / "out", base=base)
    message = str(caught.value)
    for key in ("q_score_proj.weight", "clip.visual.extra_table", "ln_final.bias"):
        assert key in message
    assert not (tmp_path / "out").exists()

    del official["clip.visual.extra_table"], official["q_score_proj.weight"]
    official["clip.ln_final.bias"] = base.text.ln_final.bias.clone()
    torch.save(official, tmp_path / "broken.bin")
    with pytest.raises(ConversionError, match=r"missing weight method\.head\.transformer\.resblocks\.0\.ln_1\.weight"):
        convert_checkpoint("clip4clip", tmp_path / "broken.bin", tmp_path / "out", base=base)


def test_cli_offers_every_official_layout_and_refuses_others(tmp_path):
    from petvr.cli import CONVERTIBLE
    from petvr.convert import OFFICIAL_METHODS

    assert CONVERTIBLE == OFFICIAL_METHODS
    with pytest.raises(ConversionError, match="unknown official layout 'clip5clip'; known: clip4clip"):
        convert_checkpoint("clip5clip", tmp_path / "x.bin", tmp_path / "out")


# MV-Adapter: the official code saves only its trainable parameters (adapters in fp16, LayerNorms, positional tables,
# [CC] and the CMT factors in fp32) and, with its released optimiser groups, every CLIP bias in its own block layout
# (attention split into q/k/v/out_proj, pre-attention norm ``attn.ln``, pre-MLP norm ``mlp.ln``).
MVA_D, MVA_FRAMES, MVA_WORDS, MVA_TIED = 64, 4, 8, (2, 3)


def official_mv_adapter_state(base):
    """An official MV-Adapter file for petvr-tiny (both towers 128 wide; the widths enter Down, Up, ``ln_in`` and
    Down-In's ``md_proj`` only), with random weights, CMT Down-In on blocks 2 and 3, and trained CLIP biases."""
    torch.manual_seed(0)
    d, state = MVA_D, {}

    def rand(*shape, half=True, around=0.0):
        value = around + 0.2 * torch.randn(*shape)
        return value.half() if half else value

    for k in range(len(MVA_TIED)):
        state[f"clip.prompt.{k}"] = rand(32, half=False)
    for tower, prefix, depth in (("visual", "clip.visual.transformer.resblocks", base.config.vision.layers),
                                 ("text", "clip.transformer.resblocks", base.config.text.layers)):
        width = 128
        for block in range(depth):
            a = f"{prefix}.{block}.mlp.adapter."
            state |= {a + "down.weight": rand(d, width), a + "down.bias": rand(d), a + "up.weight": rand(width, d),
                      a + "up.bias": rand(width), a + "ln_pre.weight": rand(d, half=False, around=1.0),
                      a + "ln_pre.bias": rand(d, half=False),
                      a + "block.attn.in_proj_weight": rand(3 * d, d), a + "block.attn.in_proj_bias": rand(3 * d),
                      a + "block.attn.out_proj.weight": rand(d, d), a + "block.attn.out_proj.bias": rand(d),
                      a + "block.ln_1.weight": rand(d, half=False, around=1.0), a + "block.ln_1.bias": rand(d, half=False),
                      a + "block.ln_2.weight": rand(d, half=False, around=1.0), a + "block.ln_2.bias": rand(d, half=False),
                      a + "block.mlp.c_fc.weight": rand(4 * d, d), a + "block.mlp.c_fc.bias": rand(4 * d),
                      a + "block.mlp.c_proj.weight": rand(d, 4 * d), a + "block.mlp.c_proj.bias": rand(d)}
            if tower == "visual":
                state |= {a + "positional_embedding": rand(2 * MVA_FRAMES + 1, d, half=False), a + "cc": rand(d, half=False),
                          a + "conv_rf_c.g.weight": rand(d, d), a + "conv_rf_c.g.bias": rand(d),
                          a + "conv_rf_c.a.weight": rand(16, 2 * d), a + "conv_rf_c.a.bias": rand(16),
                          a + "conv_rf_c.b.weight": rand(d, 16)}
            else:
                state[a + "positional_embedding"] = rand(MVA_WORDS, d, half=False)
            if block in MVA_TIED:
                state |= {a + "md_proj.weight": rand(width, 32), a + "md_proj.bias": rand(width, around=1.0)}
            c = f"{prefix}.{block}."
            for name in ("attn.q_proj.bias", "attn.k_proj.bias", "attn.v_proj.bias", "attn.out_proj.bias",
                         "mlp.c_proj.bias"):
                state[c + name] = rand(width)
            state[c + "mlp.c_fc.bias"] = rand(4 * width)
            state[c + "attn.ln.bias"] = rand(width, half=False)
            state[c + "mlp.ln.bias"] = rand(width, half=False)
    for name in ("clip.visual.ln_pre.bias", "clip.visual.ln_post.bias", "clip.ln_final.bias"):
        state[name] = rand(128, half=False)
    return state


def official_trm(x, p, additive_mask):
    """The official adapter's TRM block on (N, L, d) (pre-LN, 2 heads, QuickGELU MLP), from its raw tensors."""
    p = {key: value.float() for key, value in p.items()}
    n, length, d = x.shape
    h = F.layer_norm(x, (d,), p["block.ln_1.weight"], p["block.ln_1.bias"])
    q, k, v = (t.view(n, length, 2, d // 2).transpose(1, 2)
               for t in F.linear(h, p["block.attn.in_proj_weight"], p["block.attn.in_proj_bias"]).chunk(3, dim=-1))
    weights = torch.softmax(q @ k.transpose(-1, -2) / (d // 2) ** 0.5 + additive_mask, dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(n, length, d)
    x = x + F.linear(attended, p["block.attn.out_proj.weight"], p["block.attn.out_proj.bias"])
    h = F.layer_norm(x, (d,), p["block.ln_2.weight"], p["block.ln_2.bias"])
    return x + F.linear(quick_gelu(F.linear(h, p["block.mlp.c_fc.weight"], p["block.mlp.c_fc.bias"])),
                        p["block.mlp.c_proj.weight"], p["block.mlp.c_proj.bias"])


def official_video_adapter(f, p, factor, frame_mask):
    """Tied (Down-In) video adapter of the official code, batch-first: f (B*T, 1+N, W) -> (B*T, 1+N, W)."""
    p = {key: value.float() for key, value in p.items()}
    batch, frames = frame_mask.shape
    beta = F.linear(factor, p["md_proj.weight"], p["md_proj.bias"])
    h = quick_gelu(F.linear(f, p["down.weight"] * beta[None, :], p["down.bias"]))
    h = h.view(batch, frames, *h.shape[1:])
    cls, patches = h[:, :, 0], h[:, :, 1:]
    sequence = torch.cat([p["cc"].expand(batch, 1, -1), cls, patches.mean(dim=2)], dim=1)
    sequence = F.layer_norm(sequence + p["positional_embedding"][: 2 * frames + 1], (MVA_D,), p["ln_pre.weight"], p["ln_pre.bias"])
    valid = torch.cat([torch.ones(batch, 1), frame_mask.float(), frame_mask.float()], dim=1)
    sequence = quick_gelu(official_trm(sequence, p, ((1 - valid) * -1e6)[:, None, None, :]))
    cc_out, cls_out, patch_out = sequence[:, 0], sequence[:, 1: frames + 1], sequence[:, frames + 1:]
    g = F.linear(cc_out, p["conv_rf_c.g.weight"], p["conv_rf_c.g.bias"])[:, None].expand_as(cls_out)
    calibration_input = torch.cat([cls_out + patch_out, g], dim=-1) * frame_mask[..., None].float()
    alpha = 1 + F.linear(F.relu(F.linear(calibration_input, p["conv_rf_c.a.weight"], p["conv_rf_c.a.bias"])),
                         p["conv_rf_c.b.weight"])
    cls_up = F.linear(alpha * cls_out, p["up.weight"], p["up.bias"])
    patch_up = F.linear(patches, p["up.weight"], p["up.bias"])
    return 0.1 * torch.cat([cls_up[:, :, None], patch_up], dim=2)  # (B, T, 1+N, W)


def official_text_adapter(f, p, factor):
    """Tied (Down-In) text adapter of the official code: f (B, max_words, W) -> (B, max_words, W)."""
    p = {key: value.float() for key, value in p.items()}
    beta = F.linear(factor, p["md_proj.weight"], p["md_proj.bias"])
    h = F.linear(f, p["down.weight"] * beta[None, :], p["down.bias"]) + p["positional_embedding"]
    h = F.layer_norm(h, (MVA_D,), p["ln_pre.weight"], p["ln_pre.bias"])
    causal = torch.full((f.shape[1], f.shape[1]), float("-inf")).triu(1)
    return 0.1 * F.linear(quick_gelu(official_trm(h, p, causal)), p["up.weight"], p["up.bias"])


def adapter_tensors(state, prefix):
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


def test_mv_adapter_checkpoint_matches_official_adapters(base, tmp_path):
    from petvr.backbone import TowerContext

    official = official_mv_adapter_state(base)
    path = tmp_path / "5e_t2v4620_v2t4720.pth"
    torch.save(official, path)
    report = convert_checkpoint("mv_adapter", path, tmp_path / "out", base=base, overrides={"scale": 0.1})
    assert report["backbone_file"] is None
    model = RetrievalModel.from_adapter(tmp_path / "out", backbone=copy.deepcopy(base)).eval()
    config = model.method_config_dict()
    assert (config["max_frames"], config["max_words"], config["bottleneck_width"]) == (MVA_FRAMES, MVA_WORDS, MVA_D)
    assert (tuple(config["tying_layers"]), config["tying_position"], config["factor_dim"]) == (MVA_TIED, "down_in", 32)
    assert config["train_backbone_biases"] and config["calibration"] and config["calibration_cc_projection"]
    assert not config["input_norm"] and config["layers"] is None
    assert all(value.dtype == torch.float32 for value in model.trainable_state_dict().values())

    # The CLIP biases: q/k/v fused into in_proj_bias, attn.ln / mlp.ln -> ln_1 / ln_2.
    block = model.backbone.text.transformer.resblocks[1]
    c = "clip.transformer.resblocks.1."
    torch.testing.assert_close(block.attn.in_proj_bias, torch.cat([official[c + f"attn.{x}_proj.bias"] for x in "qkv"]).float())
    torch.testing.assert_close(block.ln_1.bias, official[c + "attn.ln.bias"])
    torch.testing.assert_close(block.ln_2.bias, official[c + "mlp.ln.bias"])
    torch.testing.assert_close(model.backbone.visual.ln_post.bias, official["clip.visual.ln_post.bias"])

    torch.manual_seed(2)
    frame_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    f = torch.randn(2 * MVA_FRAMES, 5, 128)
    factor = official["clip.prompt.0"]
    expected = official_video_adapter(f, adapter_tensors(official, "clip.visual.transformer.resblocks.2.mlp.adapter."),
                                      factor, frame_mask)
    adapter = model.backbone.visual.transformer.resblocks[2].mlp.adapter
    with torch.no_grad():
        got = adapter(f, TowerContext("video", 2, MVA_FRAMES, frame_mask=frame_mask)).view(2, MVA_FRAMES, 5, 128)
    torch.testing.assert_close(got[frame_mask], expected[frame_mask], rtol=1e-4, atol=1e-5)  # padded frames: unused

    text = torch.randn(3, MVA_WORDS, 128)
    expected = official_text_adapter(text, adapter_tensors(official, "clip.transformer.resblocks.3.mlp.adapter."),
                                     official["clip.prompt.1"])
    with torch.no_grad():
        got = model.backbone.text.transformer.resblocks[3].mlp.adapter(text, TowerContext("text", 3))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)

    # --set wins over what the file shows (the file cannot tell Down-In from Up-Out).
    report = convert_checkpoint("mv_adapter", path, tmp_path / "out2", base=base, overrides={"tying_position": "up_out"})
    assert report["method_config"]["tying_position"] == "up_out"


def test_mv_adapter_unmapped_missing_and_extra_keys_are_listed(base, tmp_path):
    official = official_mv_adapter_state(base)
    a = "clip.visual.transformer.resblocks.0.mlp.adapter."
    del official["clip.transformer.resblocks.2.attn.q_proj.bias"]  # k and v cannot be fused without it
    official[a + "conv_rf_p.a.weight"] = torch.zeros(16, 128)  # the code's patch calibration: no petvr equivalent
    official["clip.visual.extra_table"] = torch.zeros(3)
    official["logit_bias"] = torch.zeros(1)
    torch.save(official, tmp_path / "broken.pth")
    with pytest.raises(ConversionError) as caught:
        convert_checkpoint("mv_adapter", tmp_path / "broken.pth", tmp_path / "out", base=base)
    message = str(caught.value)
    for key in ("clip.transformer.resblocks.2.attn.k_proj.bias", "clip.transformer.resblocks.2.attn.v_proj.bias",
                a + "conv_rf_p.a.weight", "clip.visual.extra_table", "logit_bias"):
        assert key in message
    assert not (tmp_path / "out").exists()

    official = official_mv_adapter_state(base)
    del official[a + "ln_pre.bias"], official["clip.visual.ln_post.bias"]
    official["clip.prompt.2"] = torch.zeros(32)  # a third factor for two tied layers
    torch.save(official, tmp_path / "broken.pth")
    with pytest.raises(ConversionError) as caught:
        convert_checkpoint("mv_adapter", tmp_path / "broken.pth", tmp_path / "out", base=base)
    message = str(caught.value)
    for text in ("missing weight backbone.visual.transformer.resblocks.0.mlp.adapter.ln_pre.bias",
                 "missing weight clip.visual.ln_post.bias", "leftover key for method.tying_factors.2"):
        assert text in message
