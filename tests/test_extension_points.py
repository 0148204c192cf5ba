"""The backbone's method-agnostic extension points, each shown with a small test-only module."""
import torch
from torch import nn

from petvr.backbone import TowerContext

torch.manual_seed(0)


def random_video(batch=2, frames=3, size=64):
    return torch.randn(batch, frames, 3, size, size)


TOKENS = torch.tensor([[49406, 320, 736, 7117, 49407, 0, 0, 0], [49406, 320, 49407, 0, 0, 0, 0, 0]])


class AddKnownTensor(nn.Module):
    """Test-only wrapper: calls the frozen original and adds a known tensor; records the context it received."""

    def __init__(self, original: nn.Module, offset: torch.Tensor):
        super().__init__()
        self.original = original
        self.offset = offset
        self.contexts: list[TowerContext] = []

    def forward(self, x, context):
        self.contexts.append(context)
        return self.original(x, context) + self.offset


def test_wrapping_mlp_adds_exactly_the_wrapper_branch(tiny_backbone):
    model = tiny_backbone
    frames = random_video()
    with torch.no_grad():
        block = model.visual.transformer.resblocks[-1]
        hidden = []
        model.visual(frames, None, hidden)
        reference = model.encode_frames(frames)
        offset = torch.randn(model.config.vision.width)
        block.mlp = AddKnownTensor(block.mlp, offset)
        wrapped = model.encode_frames(frames)
        # Adding `offset` to the last block's residual stream changes the output by ln_post/proj of the shifted CLS.
        last_tokens = hidden[-1] + offset
        expected = model.visual.pool(last_tokens).view(2, 3, -1)
    assert not torch.allclose(wrapped, reference)
    torch.testing.assert_close(wrapped, expected, atol=1e-5, rtol=1e-5)


def test_vision_blocks_receive_the_video_context(tiny_backbone):
    model = tiny_backbone
    block = model.visual.transformer.resblocks[0]
    block.attn = AddKnownTensor(block.attn, torch.zeros(()))
    frame_mask = torch.tensor([[True, True, False], [True, False, False]])
    with torch.no_grad():
        model.encode_frames(random_video(), frame_mask)
    (context,) = block.attn.contexts
    assert context.modality == "vision" and context.batch_size == 2 and context.num_frames == 3
    assert torch.equal(context.frame_mask, frame_mask)


def test_text_blocks_receive_a_causal_context_with_the_eot_position(tiny_backbone):
    model = tiny_backbone
    block = model.text.transformer.resblocks[0]
    block.mlp = AddKnownTensor(block.mlp, torch.zeros(()))
    with torch.no_grad():
        model.encode_text(TOKENS)
    (context,) = block.mlp.contexts
    assert context.causal and context.modality == "text"
    assert context.pool_index.tolist() == [4, 2]
    assert context.token_mask.sum(1).tolist() == [5, 3]


class PrependPrompt(nn.Module):
    """Test-only prompt hook: inserts learnable tokens after the first token and shifts the pool index."""

    def __init__(self, width: int, count: int):
        super().__init__()
        self.prompt = nn.Parameter(torch.randn(count, width))

    def forward(self, x, context):
        prompt = self.prompt.expand(x.shape[0], -1, -1)
        if context.pool_index is not None:
            context.pool_index = context.pool_index + self.prompt.shape[0]
        return torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)


def test_token_hook_inserts_prompts_and_gets_gradient(tiny_backbone):
    model = tiny_backbone
    model.requires_grad_(False)
    hook = PrependPrompt(model.config.vision.width, 4)
    model.visual.transformer.add_token_hook(0, hook)
    hidden = []
    out = model.visual(random_video(), None, hidden)
    assert hidden[0].shape[1] == 1 + 64 + 4  # CLS + 8x8 patches + 4 prompts
    out.sum().backward()
    assert hook.prompt.grad is not None and hook.prompt.grad.abs().sum() > 0


def test_text_prompt_hook_keeps_pooling_at_the_eot_token(tiny_backbone):
    model = tiny_backbone
    hook = PrependPrompt(model.config.text.width, 3)
    model.text.transformer.add_token_hook(1, hook)  # between block 0 and block 1
    hidden = []
    with torch.no_grad():
        prompted = model.text(TOKENS, None, hidden)
    assert hidden[0].shape[1] == 8 and hidden[1].shape[1] == 11
    # The EOT sits at 4 and 2 before the hook and 3 tokens later after it (7 and 5): pooling must read there.
    eot = TOKENS.argmax(-1)
    assert eot.tolist() == [4, 2]
    last = hidden[-1]
    torch.testing.assert_close(prompted, model.text.pool(last, eot + 3))
    assert not torch.allclose(prompted, model.text.pool(last, eot), atol=1e-3)


def test_intermediates_under_no_grad_build_no_graph(tiny_backbone):
    model = tiny_backbone
    with torch.no_grad():
        out = model.forward_intermediates(frames=random_video(), token_ids=TOKENS)
    assert len(out["vision_hidden_states"]) == model.config.vision.layers
    assert out["vision_hidden_states"][0].shape == (2, 3, 65, model.config.vision.width)
    assert len(out["text_hidden_states"]) == model.config.text.layers
    assert all(not h.requires_grad for h in out["vision_hidden_states"] + out["text_hidden_states"])
    # The last hidden state pooled gives the embeddings: intermediates are the real forward pass.
    pooled = model.visual.pool(out["vision_hidden_states"][-1].flatten(0, 1)).view(2, 3, -1)
    torch.testing.assert_close(pooled, out["frame_embeddings"])
    text_pooled = model.text.pool(out["text_hidden_states"][-1], TOKENS.argmax(-1))
    torch.testing.assert_close(text_pooled, out["text_embeddings"])
