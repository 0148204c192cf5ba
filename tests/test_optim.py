"""BertAdam against hand-computed steps, the schedules' values, parameter groups and the optimizer factory."""
import math

import pytest
import torch
from torch import nn

from petvr.training.optim import (
    BertAdam, build_optimizer, build_param_groups, cosine_with_warmup, schedule_lambda_lr, warmup_constant,
    warmup_cosine, warmup_linear,
)


def _step(optimizer, param, grad):
    param.grad = torch.tensor(grad, dtype=param.dtype)
    optimizer.step()


def test_bertadam_two_steps_match_hand_formulas_with_clipping_and_weight_decay():
    lr, wd, b1, b2, e, max_norm = 0.1, 0.2, 0.9, 0.98, 1e-6, 1.0
    w0 = [1.0, -2.0]
    g1 = [3.0, 4.0]     # norm 5: clipped to norm 1
    g2 = [0.1, -0.2]    # norm 0.224: left alone
    param = nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    optimizer = BertAdam([param], lr=lr, t_total=-1, b1=b1, b2=b2, e=e, weight_decay=wd, max_grad_norm=max_norm)

    coef = max_norm / (5.0 + 1e-6)
    g1c = [g * coef for g in g1]
    m1 = [(1 - b1) * g for g in g1c]
    v1 = [(1 - b2) * g * g for g in g1c]
    w1 = [w - lr * (m / (math.sqrt(v) + e) + wd * w) for w, m, v in zip(w0, m1, v1)]
    m2 = [b1 * m + (1 - b1) * g for m, g in zip(m1, g2)]
    v2 = [b2 * v + (1 - b2) * g * g for v, g in zip(v1, g2)]
    w2 = [w - lr * (m / (math.sqrt(v) + e) + wd * w) for w, m, v in zip(w1, m2, v2)]

    _step(optimizer, param, g1)
    torch.testing.assert_close(param.detach(), torch.tensor(w1, dtype=torch.float64), atol=1e-12, rtol=0)
    _step(optimizer, param, g2)
    torch.testing.assert_close(param.detach(), torch.tensor(w2, dtype=torch.float64), atol=1e-12, rtol=0)
    assert optimizer.state[param]["step"] == 2


def test_bertadam_applies_the_schedule_from_its_own_step_count():
    """First update at progress 0 has lr 0 (warmup), the second at progress 1/4 has lr * 0.5 (warmup 0.5)."""
    lr, b1, b2, e = 0.1, 0.9, 0.98, 1e-6
    param = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = BertAdam([param], lr=lr, warmup=0.5, t_total=4, schedule="warmup_cosine", b1=b1, b2=b2, e=e,
                         weight_decay=0.0, max_grad_norm=-1)
    assert optimizer.scheduled_lr() == [0.0]
    _step(optimizer, param, [2.0])
    assert param.item() == 1.0
    assert optimizer.scheduled_lr() == [pytest.approx(0.05)]
    _step(optimizer, param, [1.0])
    m = b1 * (1 - b1) * 2.0 + (1 - b1) * 1.0
    v = b2 * (1 - b2) * 4.0 + (1 - b2) * 1.0
    assert param.item() == pytest.approx(1.0 - 0.05 * m / (math.sqrt(v) + e), abs=1e-12)


def test_bertadam_has_no_bias_correction_unlike_adamw():
    lr = 0.01
    bert_param = nn.Parameter(torch.tensor([1.0]))
    adamw_param = nn.Parameter(torch.tensor([1.0]))
    bert = BertAdam([bert_param], lr=lr, t_total=-1, weight_decay=0.0, max_grad_norm=-1, e=0.0)
    adamw = torch.optim.AdamW([adamw_param], lr=lr, betas=(0.9, 0.98), eps=0.0, weight_decay=0.0)
    bert_param.grad = torch.tensor([0.5])
    adamw_param.grad = torch.tensor([0.5])
    bert.step()
    adamw.step()
    # Without bias correction the first step is (1 - b1) / sqrt(1 - b2) = 0.707 of lr; Adam's is exactly lr.
    assert 1.0 - bert_param.item() == pytest.approx(lr * 0.1 / math.sqrt(0.02), rel=1e-5)
    assert 1.0 - adamw_param.item() == pytest.approx(lr, rel=1e-5)


def test_bertadam_skips_parameters_without_gradient_and_keeps_per_parameter_steps():
    a = nn.Parameter(torch.ones(2))
    b = nn.Parameter(torch.ones(2))
    optimizer = BertAdam([a, b], lr=0.1, t_total=-1)
    a.grad = torch.ones(2)
    optimizer.step()
    assert optimizer.state[a]["step"] == 1 and b not in optimizer.state
    assert torch.equal(b.detach(), torch.ones(2))


def test_bertadam_state_dict_round_trip_continues_identically(tmp_path):
    torch.manual_seed(0)
    original = nn.Linear(4, 3)
    copy = nn.Linear(4, 3)
    first = BertAdam(original.parameters(), lr=0.05, warmup=0.2, t_total=10)
    grads = [[torch.randn_like(p) for p in original.parameters()] for _ in range(4)]
    for step_grads in grads[:3]:
        for p, g in zip(original.parameters(), step_grads):
            p.grad = g.clone()
        first.step()
    copy.load_state_dict(original.state_dict())
    second = BertAdam(copy.parameters(), lr=0.05, warmup=0.2, t_total=10)
    torch.save(first.state_dict(), tmp_path / "optimizer.pt")
    second.load_state_dict(torch.load(tmp_path / "optimizer.pt"))
    assert second.scheduled_lr() == first.scheduled_lr()
    for model, optimizer in ((original, first), (copy, second)):
        for p, g in zip(model.parameters(), grads[3]):
            p.grad = g.clone()
        optimizer.step()
    for p, q in zip(original.parameters(), copy.parameters()):
        assert torch.equal(p, q)
    assert all(state["step"] == 4 for state in second.state.values())


def test_bertadam_rejects_bad_arguments():
    param = nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match="unknown schedule"):
        BertAdam([param], lr=0.1, schedule="warmup_sine")
    with pytest.raises(ValueError, match="warmup"):
        BertAdam([param], lr=0.1, warmup=1.5)
    with pytest.raises(ValueError, match="lr"):
        BertAdam([param], lr=-1.0)


def test_schedule_values_including_the_jump_at_the_warmup_end():
    assert warmup_cosine(0.0, 0.1) == 0.0
    assert warmup_cosine(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(0.0999, 0.1) == pytest.approx(0.999)
    assert warmup_cosine(0.1, 0.1) == pytest.approx(0.5 * (1 + math.cos(0.1 * math.pi)))  # 0.9755: the jump
    assert warmup_cosine(0.1, 0.1) == pytest.approx(0.97553, abs=1e-5)
    assert warmup_cosine(0.5, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)
    assert warmup_constant(0.05, 0.1) == pytest.approx(0.5)
    assert warmup_constant(0.7, 0.1) == 1.0
    assert warmup_linear(0.1, 0.1) == pytest.approx(1.0)
    assert warmup_linear(0.55, 0.1) == pytest.approx(0.5)
    assert warmup_linear(1.0, 0.1) == 0.0
    assert cosine_with_warmup(0.05, 0.1) == pytest.approx(0.5)
    assert cosine_with_warmup(0.1, 0.1) == pytest.approx(1.0)   # re-based: no jump
    assert cosine_with_warmup(0.55, 0.1) == pytest.approx(0.5)
    assert cosine_with_warmup(1.0, 0.1) == pytest.approx(0.0, abs=1e-12)


def test_lambda_lr_factory_drives_adamw_through_the_schedule():
    param = nn.Parameter(torch.ones(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = schedule_lambda_lr(optimizer, "cosine_with_warmup", warmup=0.25, total_steps=8)
    seen = []
    for _ in range(8):
        seen.append(optimizer.param_groups[0]["lr"])
        param.grad = torch.ones(1)
        optimizer.step()
        scheduler.step()
    expected = [cosine_with_warmup(step / 8, 0.25) for step in range(8)]
    assert seen == pytest.approx(expected)
    assert seen[:3] == pytest.approx([0.0, 0.5, 1.0])
    restored = schedule_lambda_lr(torch.optim.AdamW([nn.Parameter(torch.ones(1))], lr=1.0), "warmup_linear", 0.5, 2)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.lr_lambdas[0].schedule == "cosine_with_warmup" and restored.last_epoch == 8


def _named(shapes):
    return [(name, nn.Parameter(torch.zeros(shape))) for name, shape in shapes]


NAMES = [
    ("backbone.visual.transformer.resblocks.0.ln_1.weight", (4,)),
    ("backbone.visual.transformer.resblocks.0.ln_1.bias", (4,)),
    ("backbone.visual.transformer.resblocks.0.attn.in_proj_weight", (12, 4)),
    ("backbone.visual.transformer.resblocks.0.attn.in_proj_bias", (12,)),
    ("backbone.visual.positional_embedding", (5, 4)),
    ("backbone.logit_scale", ()),
    ("head.LayerNorm.weight", (4,)),
    ("head.LayerNorm.bias", (4,)),
    ("head.dense.weight", (4, 4)),
]


def _group_of(groups, name):
    (group,) = [g for g in groups if name in g["param_names"]]
    return group


def test_param_groups_follow_clip4clip_decay_rule_and_backbone_lr():
    named = _named(NAMES) + [("head.frozen.weight", nn.Parameter(torch.zeros(2, 2), requires_grad=False))]
    groups = build_param_groups(named, lr=1e-4, weight_decay=0.2, group_of=_prefix_groups,
                                lr_multipliers={"backbone": 1e-3, "new": 1.0})
    assert sorted(g["name"] for g in groups) == ["backbone/decay", "backbone/no_decay", "new/decay", "new/no_decay"]
    no_decay = {n for g in groups if g["weight_decay"] == 0.0 for n in g["param_names"]}
    assert no_decay == {"backbone.visual.transformer.resblocks.0.ln_1.bias",
                        "backbone.visual.transformer.resblocks.0.attn.in_proj_bias",
                        "head.LayerNorm.weight", "head.LayerNorm.bias"}
    # CLIP's ln_* gains, embeddings and the logit scale ARE decayed under CLIP4Clip's literal rule.
    assert _group_of(groups, "backbone.visual.transformer.resblocks.0.ln_1.weight")["weight_decay"] == 0.2
    assert _group_of(groups, "backbone.logit_scale")["weight_decay"] == 0.2
    assert _group_of(groups, "backbone.visual.positional_embedding")["lr"] == pytest.approx(1e-7)
    assert _group_of(groups, "head.dense.weight")["lr"] == 1e-4
    assert all("head.frozen.weight" not in g["param_names"] for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(NAMES)


def test_param_groups_modern_rule_exempts_norms_embeddings_and_logit_scale():
    groups = build_param_groups(_named(NAMES), lr=1e-4, weight_decay=0.2, no_decay_norms_and_embeddings=True)
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["param_names"]}
    assert decayed == {"backbone.visual.transformer.resblocks.0.attn.in_proj_weight", "head.dense.weight"}


def _prefix_groups(name):
    return "backbone" if name.startswith("backbone.") else "new"


def test_param_groups_follow_the_labels_and_refuse_a_label_without_a_multiplier():
    named = [("backbone.blocks.0.proj", (2, 2)), ("backbone.blocks.0.adapter.down", (2, 2)), ("head.proj", (2, 2)),
             ("backbone.blocks.0.proj.bias", (2,))]
    labels = {"backbone.blocks.0.proj": "backbone", "backbone.blocks.0.adapter.down": "new", "head.proj": "new",
              "backbone.blocks.0.proj.bias": "bias"}
    groups = build_param_groups(_named(named), lr=1.0, weight_decay=0.1, group_of=labels.__getitem__,
                                lr_multipliers={"backbone": 0.5, "new": 1.0, "bias": 2.0})
    assert _group_of(groups, "backbone.blocks.0.proj")["lr"] == 0.5
    assert _group_of(groups, "backbone.blocks.0.adapter.down")["lr"] == 1.0  # new weights inside the backbone
    assert _group_of(groups, "head.proj")["lr"] == 1.0
    assert _group_of(groups, "backbone.blocks.0.proj.bias")["lr"] == 2.0
    assert _group_of(groups, "backbone.blocks.0.proj.bias")["name"] == "bias/no_decay"
    with pytest.raises(ValueError, match=r"backbone.blocks.0.proj.bias is in learning-rate group 'bias'"):
        build_param_groups(_named(named), lr=1.0, weight_decay=0.1, group_of=labels.__getitem__,
                           lr_multipliers={"backbone": 0.5, "new": 1.0})


def test_build_optimizer_bertadam_and_adamw():
    model = nn.ModuleDict({"backbone": nn.Linear(3, 3), "head": nn.Linear(3, 1)})
    optimizer, scheduler = build_optimizer("bertadam", model, lr=1e-4, total_steps=100, group_of=_prefix_groups,
                                           lr_multipliers={"backbone": 1e-3, "new": 1.0})
    assert isinstance(optimizer, BertAdam) and scheduler is None
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(
        {"backbone/decay": 1e-7, "backbone/no_decay": 1e-7, "new/decay": 1e-4, "new/no_decay": 1e-4})
    assert all(g["schedule"] == "warmup_cosine" and g["t_total"] == 100 for g in optimizer.param_groups)
    optimizer, scheduler = build_optimizer("adamw", model, lr=1e-4, total_steps=100, warmup=0.1)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert scheduler.lr_lambdas[0].schedule == "cosine_with_warmup"
    assert [g["lr"] for g in optimizer.param_groups] == [0.0] * len(optimizer.param_groups)  # warmup starts at 0
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("sgd", model, lr=1e-4, total_steps=10)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer("bertadam", model, lr=1e-4, total_steps=10)
