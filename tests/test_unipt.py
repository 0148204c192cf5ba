"""UniPT: trainable counts (reference §2.3), the frozen towers run without gradient and leave no backbone op in the
loss's graph, the side network against an independently written forward of the released code's equations (through
``petvr convert`` on a state dict in the official layout), the frozen pass's precision, training, and the recipes."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from petvr.backbone import create_backbone
from petvr.convert import ConversionError, convert_checkpoint
from petvr.methods import RetrievalModel
from petvr.training.recipe import load_recipe
from petvr.training.trainer import ContrastiveObjective

TOKENS = torch.tensor([[49406, 320, 1125, 49407, 0, 0], [49406, 500, 49407, 0, 0, 0]])


def tiny(seed=0):
    torch.manual_seed(seed)
    return create_backbone("petvr-tiny")


def video(num_videos=2, num_frames=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_videos, num_frames, 3, 64, 64, generator=generator), torch.ones(num_videos, num_frames,
                                                                                           dtype=torch.bool)


# -- counts --

@pytest.mark.parametrize("backbone_name", ["ViT-B-32", "ViT-B-16"])
def test_trainable_count_is_the_released_codes(backbone_name):
    model = RetrievalModel(create_backbone(backbone_name, device="meta"), "unipt")
    report = model.parameter_report()
    assert (report["trainable"], report["new_parameters"], report["unfrozen_backbone_parameters"]) == (9_584_642,) * 2 + (0,)
    assert sum(p.numel() for p in model.method.vision.parameters()) == 5_644_289
    assert sum(p.numel() for p in model.method.text.parameters()) == 3_940_353
    assert not model.backbone.logit_scale.requires_grad


# -- no gradient through the backbone --

def test_intermediates_with_the_input_hold_layers_plus_one_states():
    backbone = tiny().eval()
    frames, frame_mask = video()
    with torch.no_grad():
        plain = backbone.forward_intermediates(frames=frames, frame_mask=frame_mask, token_ids=TOKENS)
        full = backbone.forward_intermediates(frames=frames, frame_mask=frame_mask, token_ids=TOKENS, include_input=True)
        embedded = backbone.visual.embed(frames.flatten(0, 1), None).view(2, 3, 65, -1)
        text_embedded = backbone.text.embed(TOKENS)
    assert len(full["vision_hidden_states"]) == backbone.config.vision.layers + 1 == 7
    assert len(full["text_hidden_states"]) == backbone.config.text.layers + 1 == 5
    torch.testing.assert_close(full["vision_hidden_states"][0], embedded)
    torch.testing.assert_close(full["text_hidden_states"][0], text_embedded)
    for key in ("vision_hidden_states", "text_hidden_states"):
        assert all(torch.equal(a, b) for a, b in zip(full[key][1:], plain[key], strict=True))


def graph_nodes(tensor):
    """Every autograd node reachable from ``tensor.grad_fn``."""
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return seen


BACKBONE_OPS = ("Convolution", "LayerNorm", "Attention", "Sigmoid", "Embedding")  # patch embedding, norms, QuickGELU


def loss_graph(model):
    frames, frame_mask = video()
    return ContrastiveObjective(model)(TOKENS, TOKENS != 0, frames, frame_mask)["loss"]


def test_no_backbone_tensor_requires_grad_and_the_loss_graph_has_no_backbone_op():
    model = RetrievalModel(tiny(), "unipt").train()
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert not any(p.requires_grad for p in model.backbone.parameters())
    grad_enabled = []
    hooks = [block.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
             for tower in (model.backbone.visual, model.backbone.text) for block in tower.transformer.resblocks]
    loss = loss_graph(model)
    for hook in hooks:
        hook.remove()
    assert grad_enabled and not any(grad_enabled)  # every block ran without gradient
    nodes = graph_nodes(loss)
    names = {type(node).__name__ for node in nodes}
    assert not [name for name in names if any(op in name for op in BACKBONE_OPS)], sorted(names)
    leaves = [node.variable for node in nodes if hasattr(node, "variable")]
    side = {id(p) for p in model.method.parameters()}
    assert leaves and all(id(leaf) in side and id(leaf) not in backbone_ids for leaf in leaves)
    assert len(leaves) == len(side)  # every side-network weight, and nothing else, receives gradient
    # The same walk finds the backbone's ops in a method that back-propagates through the towers.
    adapter_names = {type(node).__name__ for node in graph_nodes(loss_graph(RetrievalModel(tiny(), "cross_modal_adapter")))}
    assert [name for name in adapter_names if "LayerNorm" in name] and [name for name in adapter_names if "Attention" in name]


# -- the side network --

def test_padding_after_the_eot_does_not_change_the_caption():
    model = RetrievalModel(tiny(), "unipt").eval()
    padded = F.pad(TOKENS, (0, 4))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(padded, padded != 0), model.encode_text(TOKENS, TOKENS != 0))


def test_zero_up_projection_embeds_as_the_frozen_backbone_and_otherwise_not():
    frames, frame_mask = video()
    frozen = tiny().eval()
    for zero, same in ((True, True), (False, False)):
        model = RetrievalModel(tiny(), "unipt", zero_init_up=zero).eval()
        with torch.no_grad():
            got = model.encode_video(frames, frame_mask)
            assert torch.allclose(got, frozen.encode_frames(frames, frame_mask), atol=1e-6) == same
            assert torch.allclose(model.encode_text(TOKENS, TOKENS != 0), frozen.encode_text(TOKENS, TOKENS != 0),
                                  atol=1e-6) == same


@pytest.mark.parametrize("precision, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_a_lower_precision_frozen_pass_keeps_the_side_networks_float32(precision, dtype):
    reference = RetrievalModel(tiny(), "unipt").eval()
    model = RetrievalModel(tiny(), "unipt", backbone_precision=precision).eval()
    assert model.backbone.visual.transformer.resblocks[0].attn.in_proj_weight.dtype == dtype
    assert model.backbone.visual.proj.dtype == dtype and model.backbone.logit_scale.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.method.parameters())
    frames, frame_mask = video()
    with torch.no_grad():
        for encode, args in (("encode_video", (frames, frame_mask)), ("encode_text", (TOKENS, TOKENS != 0))):
            got, expected = getattr(model, encode)(*args), getattr(reference, encode)(*args)
            assert got.dtype == torch.float32 and torch.isfinite(got).all()
            assert not torch.equal(got, expected)
            torch.testing.assert_close(got, expected, atol=0.1, rtol=0.05)
    loss = loss_graph(model)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.method.parameters())


@pytest.mark.parametrize("options, error", [({"backbone_precision": "int8"}, "backbone_precision"),
                                            ({"downsample_factor": 3}, "downsample_factor")])
def test_bad_options_are_refused_with_the_reason(options, error):
    with pytest.raises(ValueError, match=error):
        RetrievalModel(tiny(), "unipt", **options)


# -- official checkpoints --

TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def official_state(backbone, layers_vision, layers_text, width, embed_dim, seed=3):
    """A state dict in the released code's layout: ``clip.`` + OpenAI keys with the matrices in fp16 (its
    ``convert_weights``), and ``image_adapter.*`` / ``text_adapter.*`` (float32, built after the conversion)."""
    state = {}
    for key, value in backbone.state_dict().items():
        name = key.removeprefix("text.") if key.removeprefix("text.").startswith(TEXT_KEYS) else key
        matrix = (value.dim() >= 2 and "embedding" not in name) or name.endswith("in_proj_bias") or (
            name.endswith(".bias") and (".attn." in name or ".mlp." in name))
        state["clip." + name] = value.half() if matrix else value.clone()
    generator = torch.Generator().manual_seed(seed)
    for tower, layers, hidden in (("image", layers_vision, width), ("text", layers_text, width)):
        def linear(prefix, fan_in, fan_out):
            state[f"{prefix}.weight"] = torch.randn(fan_out, fan_in, generator=generator) * fan_in**-0.5
            state[f"{prefix}.bias"] = torch.randn(fan_out, generator=generator) * 0.1
        for index in range(layers + 1):
            linear(f"{tower}_adapter.downsample_layers.{index}.1", hidden, embed_dim)
        linear(f"{tower}_adapter.downsample_layer.1", embed_dim, embed_dim)
        linear(f"{tower}_adapter.upsample_layer.1", embed_dim, embed_dim)
        linear(f"{tower}_adapter.gate_layer", embed_dim, 1)
    return state


def official_adapter(state, prefix, hidden_list, raw_anchor, mask=None, position=None):
    """The released ``Our_tuning_for_transformer.forward``, written from its equations (anchor (N, 1, D))."""
    def lin(name, x):
        return F.linear(x, state[f"{prefix}.{name}.weight"], state[f"{prefix}.{name}.bias"])

    anchor_features = lin("downsample_layer.1", torch.relu(raw_anchor))  # (N, 1, d)
    merged, gates = [], []
    for index, hidden in enumerate(hidden_list):
        target = lin(f"downsample_layers.{index}.1", torch.relu(hidden))  # (N, S, d)
        weights = anchor_features @ target.transpose(1, 2)  # (N, 1, S)
        if mask is None:
            summary = target.mean(1)
        else:
            weights = weights * mask[:, None, :]
            summary = (target * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1.0)
        weights = torch.relu(weights)
        weights = weights / weights.abs().sum(-1, keepdim=True).clamp(min=1e-6)
        rows = torch.arange(target.shape[0])
        identity = target[rows, position if position is not None else 0][:, None]
        merged.append(weights @ target + identity)
        gates.append(lin("gate_layer", anchor_features[:, 0] * summary))
    alpha = torch.softmax(torch.cat(gates, 1), 1)
    aggregated = (torch.stack(merged, 1) * alpha[:, :, None, None]).sum(1)
    return (raw_anchor + lin("upsample_layer.1", torch.relu(aggregated)))[:, 0]


def official_similarities(backbone, state, tokens, frames, frame_mask):
    """Text and video through the frozen CLIP (hidden states of each tower: the first block's input and every
    block's output, from a loop over the blocks written here), the two official adapters and meanP."""
    num_videos, num_frames = frames.shape[:2]
    with torch.no_grad():
        x = backbone.visual.embed(frames.flatten(0, 1), None)
        context = backbone.visual.make_context(num_videos, num_frames, frame_mask)
        vision_hidden = [x]
        for block in backbone.visual.transformer.resblocks:
            x = block(x, context)
            vision_hidden.append(x)
        frame_features = backbone.visual.pool(x)
        t = backbone.text.embed(tokens)
        text_context = backbone.text.make_context(tokens, None)
        text_hidden = [t]
        for block in backbone.text.transformer.resblocks:
            t = block(t, text_context)
            text_hidden.append(t)
        text_features = backbone.text.pool(t, tokens.argmax(-1))
        adapted_frames = official_adapter(state, "image_adapter", vision_hidden, frame_features[:, None])
        adapted_text = official_adapter(state, "text_adapter", text_hidden, text_features[:, None],
                                        mask=(tokens != 0).float(), position=tokens.argmax(-1))
        frames_normalised = F.normalize(adapted_frames.view(num_videos, num_frames, -1), dim=-1) * frame_mask[..., None]
        videos = F.normalize(frames_normalised.sum(1) / frame_mask.sum(1, keepdim=True), dim=-1)
        return backbone.logit_scale.exp() * F.normalize(adapted_text, dim=-1) @ videos.T


def test_convert_reads_the_official_layout_and_gives_its_similarities(tmp_path, convert_with_cli):
    base = tiny()
    # The base's matrices rounded to fp16, as the official file holds them: an unchanged CLIP.
    for parameter in base.parameters():
        if parameter.dim() >= 2:
            parameter.data = parameter.data.half().float()
    state = official_state(base, 6, 4, 128, 128)
    as_released, path = convert_with_cli("unipt", state, base, out="as_released")
    released = RetrievalModel.from_adapter(as_released).eval()
    assert released.method_config_dict() == {"sim_header": "meanP", "downsample_factor": 1, "backbone_precision": "fp16",
                                             "zero_init_up": False}
    assert not (as_released / "backbone.safetensors").exists()
    report = convert_checkpoint("unipt", path, tmp_path / "fp32", base=base, overrides={"backbone_precision": "fp32"})
    assert report["trained_tensors"] == 2 * 3 * 2 + 2 * (7 + 5)  # weight and bias: 3 shared layers + one per state
    model = RetrievalModel.from_adapter(tmp_path / "fp32", backbone=base).eval()

    frames, frame_mask = video(3, 4)
    frame_mask[1, 2:] = False
    tokens = torch.tensor([[49406, 320, 1125, 49407, 0], [49406, 500, 49407, 0, 0]])
    expected = official_similarities(base, state, tokens, frames, frame_mask)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, tokens != 0, frames, frame_mask), expected, rtol=1e-5, atol=1e-4)
        # The code's own fp16 frozen pass: the same similarities within fp16's rounding.
        torch.testing.assert_close(released(tokens, tokens != 0, frames, frame_mask), expected, rtol=0.02, atol=0.3)


def test_convert_lists_missing_and_unplaceable_keys(tmp_path):
    base = tiny()
    state = official_state(base, 6, 4, 128, 128)
    del state["text_adapter.gate_layer.bias"]
    path = tmp_path / "broken.bin"
    torch.save(state, path)
    with pytest.raises(ConversionError, match="missing weight method.text.gate.bias"):
        convert_checkpoint("unipt", path, tmp_path / "out", base=base)
    state["image_adapter.downsample_layers.3.0.weight"] = torch.zeros(1)  # a ReLU has no weight
    torch.save(state, path)
    with pytest.raises(ConversionError, match="unmapped key image_adapter.downsample_layers.3.0.weight"):
        convert_checkpoint("unipt", path, tmp_path / "out", base=base)


# -- training and recipes --

def test_training_lowers_the_loss(pattern_videos):
    # The random tiny backbone embeds every video almost alike (cosine ~0.99), so the residual takes some steps.
    model = RetrievalModel(tiny(), "unipt").train()
    losses = pattern_videos().full_batch_losses(model, steps=18)
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses


@pytest.mark.parametrize("dataset", ["msrvtt", "msvd"])
def test_the_dataset_recipes_follow_the_released_script(dataset):
    recipe = load_recipe(f"{dataset}/unipt")
    method = dict(recipe["method"])
    assert method.pop("name") == "unipt" and method["backbone_precision"] == "fp16"
    assert recipe["backbone"]["name"] == "ViT-B-32-quickgelu" and recipe["data"]["dataset"] == dataset
    model = RetrievalModel(create_backbone(recipe["backbone"]["name"], device="meta"), "unipt", **method)
    assert model.parameter_report()["trainable"] == 9_584_642
    train = recipe["train"]
    assert (train["optimizer"], train["lr"], train["epochs"], train["batch_size"], train["weight_decay"]) == \
        ("bertadam", 1e-4, 5, 128, 0.2)
    assert (recipe["data"]["sampling"]["max_frames"], recipe["data"]["max_words"]) == (12, 32)
