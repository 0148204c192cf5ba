"""`petvr convert dgl`: checkpoints of DGL's public code -> adapter folders that score as its forward pass does.

The official file is written here with random prompt weights under the key names of DGL's ``modules/clip.py``
(``clip.`` + the CLIP module's attributes, inside ``{"state_dict": ...}`` with DDP's ``module.`` prefix), and the
converted model is compared with a forward pass written here from the released code's description (reference §1.1):
LND layout, the video as one token-major sequence (index = token * T + frame) with the global prompts first, each
frame's keys built as [global prompts; the frame], the text as [SOT, prefix, words and padding, postfix] under a
40-style causal mask, pooled at EOT + 4.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from petvr.backbone.checkpoints import load_backbone
from petvr.convert import ConversionError, convert_checkpoint
from petvr.methods import RetrievalModel

TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
FRAMES, TEXT_PROMPTS, LOCAL, GLOBAL = 3, 8, 4, 4


@pytest.fixture(scope="module")
def base():
    return load_backbone("petvr-tiny")


def official_state(base, variant, seed=0):
    """A DGL model's state_dict: the CLIP weights (OpenAI names, ``clip.`` prefix), the visual ``position_ids``
    buffer and the prompt modules, with random values."""
    state = {"clip." + (key.removeprefix("text.") if key.removeprefix("text.").startswith(TEXT_KEYS) else key):
             value.clone() for key, value in base.state_dict().items()}
    state["clip.visual.position_ids"] = torch.arange(base.visual.positional_embedding.shape[0])[None]
    generator = torch.Generator().manual_seed(seed)
    width, text_width, layers = base.config.vision.width, base.config.text.width, base.config.vision.layers

    def rand(*shape, scale=0.1):
        return torch.randn(*shape, generator=generator) * scale

    state["clip.visual.prompt_embeddings"] = rand(1, GLOBAL, width, scale=0.5)
    if variant == "transformer":
        state["clip.unified_prompt_embedding.weight"] = rand(TEXT_PROMPTS + LOCAL * FRAMES, layers * width, scale=1.0)
        block = "clip.PromptTransformer.resblocks.0."
        for name, shape in [("attn.in_proj_weight", (3 * width, width)), ("attn.in_proj_bias", (3 * width,)),
                            ("attn.out_proj.weight", (width, width)), ("attn.out_proj.bias", (width,)),
                            ("mlp.c_fc.weight", (4 * width, width)), ("mlp.c_fc.bias", (4 * width,)),
                            ("mlp.c_proj.weight", (width, 4 * width)), ("mlp.c_proj.bias", (width,))]:
            state[block + name] = rand(*shape)
        for norm in ("ln_1", "ln_2"):
            state[f"{block}{norm}.weight"], state[f"{block}{norm}.bias"] = 1 + rand(width), rand(width)
        state["clip.unified_prompt_mlp.c_fc.weight"] = rand(2 * width, width)
        state["clip.unified_prompt_mlp.c_fc.bias"] = rand(2 * width)
        state["clip.unified_prompt_mlp.c_proj.weight"] = rand(text_width, 2 * width)
        state["clip.unified_prompt_mlp.c_proj.bias"] = rand(text_width)
    else:
        state["clip.visual_prompt_embedding"] = rand(1, LOCAL, layers * width, scale=0.5)
        for side in ("prefix", "postfix"):
            state[f"clip.{side}_text_prompt_proj_layer.weight"] = rand(text_width, width)
            state[f"clip.{side}_text_prompt_proj_layer.bias"] = rand(text_width)
    return state


# --- the official forward, from the state dict alone ---------------------------------------------------------------

def layer_norm(x, state, prefix):
    return F.layer_norm(x, x.shape[-1:], state[prefix + ".weight"], state[prefix + ".bias"], 1e-5)


def mha(query, key, state, prefix, heads, mask=None):
    """nn.MultiheadAttention(query, key, key) in LND with the block's weights."""
    return F.multi_head_attention_forward(
        query, key, key, query.shape[-1], heads, state[prefix + "attn.in_proj_weight"],
        state[prefix + "attn.in_proj_bias"], None, None, False, 0.0, state[prefix + "attn.out_proj.weight"],
        state[prefix + "attn.out_proj.bias"], training=False, need_weights=False, attn_mask=mask)[0]


def mlp(x, state, prefix):
    hidden = F.linear(x, state[prefix + "c_fc.weight"], state[prefix + "c_fc.bias"])
    hidden = hidden * torch.sigmoid(1.702 * hidden)
    return F.linear(hidden, state[prefix + "c_proj.weight"], state[prefix + "c_proj.bias"])


def official_prompts(state, variant, layers, width):
    """encode_prompt: text prompts (layers, 8, W_t) and frame prompts (layers, T or 1, 4, W_v)."""
    if variant == "transformer":
        table = state["clip.unified_prompt_embedding.weight"]
        x = table.view(table.shape[0], layers, width)  # (P, layers, W): LND with the layers as the batch
        block = "clip.PromptTransformer.resblocks.0."
        h = layer_norm(x, state, block + "ln_1")
        x = x + mha(h, h, state, block, width // 64)
        x = x + mlp(layer_norm(x, state, block + "ln_2"), state, block + "mlp.")
        x = x.permute(1, 0, 2)  # (layers, P, W)
        text = mlp(x[:, :TEXT_PROMPTS], state, "clip.unified_prompt_mlp.")
        return text, x[:, TEXT_PROMPTS:].reshape(layers, FRAMES, LOCAL, width)
    prompts = state["clip.visual_prompt_embedding"][0].view(LOCAL, layers, width).permute(1, 0, 2)
    text = torch.cat([F.linear(prompts, state[f"clip.{side}_text_prompt_proj_layer.weight"],
                               state[f"clip.{side}_text_prompt_proj_layer.bias"]) for side in ("prefix", "postfix")], 1)
    return text, prompts[:, None]


def official_video(state, frames, frame_prompts, heads):
    batch, num_frames = frames.shape[:2]
    conv = state["clip.visual.conv1.weight"]
    x = F.conv2d(frames.flatten(0, 1), conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)
    width = x.shape[-1]
    x = torch.cat([state["clip.visual.class_embedding"].expand(x.shape[0], 1, -1), x], 1)
    x = layer_norm(x + state["clip.visual.positional_embedding"], state, "clip.visual.ln_pre")
    x = x.view(batch, num_frames, -1, width)
    local = frame_prompts[0].expand(num_frames, -1, -1)[None].expand(batch, -1, -1, -1)
    x = torch.cat([x[:, :, :1], local, x[:, :, 1:]], 2)  # (B, T, n, W)
    tokens = x.shape[2]
    x = x.permute(0, 2, 1, 3).reshape(batch, tokens * num_frames, width)  # token-major
    x = torch.cat([state["clip.visual.prompt_embeddings"].expand(batch, -1, -1), x], 1).permute(1, 0, 2)  # LND
    layers = len({key.split(".")[4] for key in state if key.startswith("clip.visual.transformer.resblocks.")})
    for layer in range(layers):
        block = f"clip.visual.transformer.resblocks.{layer}."
        if layer > 0:  # the deep frame prompts replace rows 1..4 of every frame
            frame_part = x[GLOBAL:].reshape(tokens, num_frames, batch, width)
            fresh = frame_prompts[layer].expand(num_frames, -1, -1).permute(1, 0, 2)[:, :, None].expand(-1, -1, batch, -1)
            frame_part = torch.cat([frame_part[:1], fresh, frame_part[1 + LOCAL:]], 0)
            x = torch.cat([x[:GLOBAL], frame_part.reshape(tokens * num_frames, batch, width)], 0)
        g = layer_norm(x[:GLOBAL], state, block + "ln_1")
        f = layer_norm(x[GLOBAL:].reshape(tokens, num_frames * batch, width), state, block + "ln_1")  # column t*B+b
        keys = torch.cat([g.repeat(1, num_frames, 1), f], 0)
        local_out = mha(f, keys, state, block, heads).reshape(tokens * num_frames, batch, width)
        global_out = mha(g, torch.cat([g, f.reshape(tokens * num_frames, batch, width)], 0), state, block, heads)
        x = x + torch.cat([global_out, local_out], 0)
        x = x + mlp(layer_norm(x, state, block + "ln_2"), state, block + "mlp.")
    return layer_norm(x[0], state, "clip.visual.ln_post") @ state["clip.visual.proj"]


def official_text(state, token_ids, text_prompts, heads):
    x = F.embedding(token_ids, state["clip.token_embedding.weight"])
    x = x + state["clip.positional_embedding"][:token_ids.shape[1]]
    half = TEXT_PROMPTS // 2
    batch = x.shape[0]
    x = torch.cat([x[:, :1], text_prompts[0][:half].expand(batch, -1, -1), x[:, 1:],
                   text_prompts[0][half:].expand(batch, -1, -1)], 1).permute(1, 0, 2)
    length = x.shape[0]
    causal = torch.full((length, length), float("-inf")).triu(1)
    layers = len({key.split(".")[3] for key in state if key.startswith("clip.transformer.resblocks.")})
    for layer in range(layers):
        block = f"clip.transformer.resblocks.{layer}."
        if layer > 0:
            x = torch.cat([x[:1], text_prompts[layer][:half, None].expand(-1, batch, -1), x[1 + half:length - half],
                           text_prompts[layer][half:, None].expand(-1, batch, -1)], 0)
        h = layer_norm(x, state, block + "ln_1")
        x = x + mha(h, h, state, block, heads, causal)
        x = x + mlp(layer_norm(x, state, block + "ln_2"), state, block + "mlp.")
    x = layer_norm(x.permute(1, 0, 2), state, "clip.ln_final") @ state["clip.text_projection"]
    return x[torch.arange(batch), token_ids.argmax(-1) + half]


def official_logits(state, variant, base, token_ids, frames):
    vision, text = base.config.vision, base.config.text
    with torch.no_grad():
        text_prompts, frame_prompts = official_prompts(state, variant, vision.layers, vision.width)
        videos = F.normalize(official_video(state, frames, frame_prompts, vision.heads), dim=-1)
        texts = F.normalize(official_text(state, token_ids, text_prompts, text.heads), dim=-1)
    return state["clip.logit_scale"].exp() * texts @ videos.T


def inputs():
    generator = torch.Generator().manual_seed(5)
    frames = torch.randn(3, FRAMES, 3, 64, 64, generator=generator)
    token_ids = torch.tensor([[49406, 320, 1125, 49407, 0, 0, 0, 0], [49406, 77, 49407, 0, 0, 0, 0, 0],
                              [49406, 5, 6, 7, 8, 9, 10, 49407]])
    return token_ids, frames


@pytest.mark.parametrize("variant", ["transformer", "linear"])
def test_a_converted_checkpoint_scores_as_the_official_forward(base, tmp_path, variant):
    state = official_state(base, variant)
    path = tmp_path / "ckpt.best.pth.tar"
    torch.save({"epoch": 5, "state_dict": {"module." + key: value for key, value in state.items()}, "best_acc1": 45.8},
               path)
    report = convert_checkpoint("dgl", path, tmp_path / "out", base=base)
    assert report["backbone_file"] is None  # every CLIP weight is the base's
    model = RetrievalModel.from_adapter(tmp_path / "out", backbone=base).eval()
    config = model.method_config_dict()
    assert (config["shared_latent_space"], config["postfix_position"], config["global_prompts"]) == (
        variant, "after_padding", GLOBAL)
    if variant == "transformer":
        assert config["num_frames"] == FRAMES

    token_ids, frames = inputs()
    frame_mask = torch.ones(3, FRAMES, dtype=torch.bool)
    with torch.no_grad():
        got = model(token_ids, token_ids != 0, frames, frame_mask)
    expected = official_logits(state, variant, base, token_ids, frames)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert (expected - expected.mean()).abs().max() > 0.1  # the scores are not all alike


def test_the_cli_converts_and_a_changed_clip_weight_writes_a_backbone(base, convert_with_cli):
    state = official_state(base, "linear")
    state["clip.visual.transformer.resblocks.1.mlp.c_fc.bias"] = state["clip.visual.transformer.resblocks.1.mlp.c_fc.bias"] + 0.01
    out, _ = convert_with_cli("dgl", state, base)
    assert (out / "backbone.safetensors").exists()
    model = RetrievalModel.from_adapter(out).eval()
    token_ids, frames = inputs()
    with torch.no_grad():
        got = model(token_ids, token_ids != 0, frames, torch.ones(3, FRAMES, dtype=torch.bool))
    torch.testing.assert_close(got, official_logits(state, "linear", base, token_ids, frames), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("change, named", [
    ("missing", "missing weight method.latent.text_mlp.c_proj.bias"),
    ("frame_embedding", "clip.visual.frame_embedding"),  # time_embedding=1, which DGL's released runs leave off
])
def test_missing_and_unknown_keys_are_named(base, tmp_path, change, named):
    state = official_state(base, "transformer")
    if change == "missing":
        del state["clip.unified_prompt_mlp.c_proj.bias"]
    else:
        state["clip.visual.frame_embedding"] = torch.zeros(FRAMES, 1, 128)
    path = tmp_path / "ckpt.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(ConversionError, match="not a dgl checkpoint") as error:
        convert_checkpoint("dgl", path, tmp_path / "out", base=base)
    assert named in str(error.value)
    assert not (tmp_path / "out").exists()
