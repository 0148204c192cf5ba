"""Block-wise similarity equals the dense matrix and keeps a pairwise head's intermediates at block size."""
import pytest
import torch

from petvr.evaluation.similarity import blockwise_similarity

NUM_TEXTS, NUM_VIDEOS, FRAMES, DIM = 1000, 1000, 4, 8


class QueryScoring:
    """A pairwise head (query-aware frame pooling, as Cross-Modal Adapter's): it builds (bt, bv, T) and (bt, bv, D)
    tensors, and records the largest one it ever held."""

    def __init__(self):
        self.largest_intermediate = 0
        self.calls = 0

    def __call__(self, texts, videos):
        self.calls += 1
        frames, mask = videos["frames"], videos["frame_mask"]           # (bv, T, D), (bv, T)
        frame_scores = torch.einsum("id,jtd->ijt", texts, frames)       # (bt, bv, T)
        frame_scores = frame_scores.masked_fill(~mask.unsqueeze(0), float("-inf"))
        weights = (frame_scores / 5.0).softmax(dim=-1)
        pooled = torch.einsum("ijt,jtd->ijd", weights, frames)          # (bt, bv, D)
        self.largest_intermediate = max(self.largest_intermediate, frame_scores.numel(), pooled.numel())
        return torch.nn.functional.cosine_similarity(texts.unsqueeze(1), pooled, dim=-1)  # (bt, bv)


def _items():
    generator = torch.Generator().manual_seed(0)
    texts = torch.randn(NUM_TEXTS, DIM, generator=generator)
    frames = torch.randn(NUM_VIDEOS, FRAMES, DIM, generator=generator)
    mask = torch.ones(NUM_VIDEOS, FRAMES, dtype=torch.bool)
    mask[::3, -1] = False
    return texts, {"frames": frames, "frame_mask": mask}


def test_pairwise_head_runs_in_blocks_and_equals_the_dense_result():
    texts, videos = _items()
    head = QueryScoring()
    similarity = blockwise_similarity(head, texts, videos, text_block=128, video_block=100, progress=False)
    assert similarity.shape == (NUM_TEXTS, NUM_VIDEOS) and similarity.dtype == torch.float32
    assert head.calls == 8 * 10
    assert head.largest_intermediate == 128 * 100 * DIM   # never the dense 1000 x 1000 x D

    dense_head = QueryScoring()
    dense = dense_head(texts, videos)
    assert dense_head.largest_intermediate == NUM_TEXTS * NUM_VIDEOS * DIM
    torch.testing.assert_close(similarity, dense, atol=1e-5, rtol=1e-5)


def test_uneven_blocks_and_tensor_items_fill_every_entry():
    texts = torch.randn(7, 3)
    videos = torch.randn(5, 3)
    similarity = blockwise_similarity(lambda t, v: t @ v.t(), texts, videos, text_block=3, video_block=2,
                                      progress=False)
    torch.testing.assert_close(similarity, texts @ videos.t())


def test_runs_without_gradients_and_returns_cpu_float32():
    weight = torch.nn.Parameter(torch.randn(3, 3))
    similarity = blockwise_similarity(lambda t, v: (t @ weight @ v.t()).double(), torch.randn(4, 3),
                                      torch.randn(6, 3), progress=False)
    assert not similarity.requires_grad and similarity.dtype == torch.float32 and similarity.device.type == "cpu"


def test_bad_inputs_are_reported():
    with pytest.raises(ValueError, match="differ in length"):
        blockwise_similarity(lambda t, v: t @ v.t(), torch.randn(3, 2),
                             {"frames": torch.randn(4, 2), "frame_mask": torch.ones(5)}, progress=False)
    with pytest.raises(ValueError, match="expected \\(3, 4\\)"):
        blockwise_similarity(lambda t, v: torch.zeros(3, 3), torch.randn(3, 2), torch.randn(4, 2), progress=False)
    with pytest.raises(ValueError, match="block sizes"):
        blockwise_similarity(lambda t, v: t @ v.t(), torch.randn(3, 2), torch.randn(4, 2), text_block=0)
