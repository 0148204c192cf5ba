"""Similarity heads: text embeddings (Nt, D) and per-frame video embeddings (Nv, T, D) -> logits (Nt, Nv).

CLIP4Clip's four heads (reference §1.1) and Cross-Modal Adapter's query scoring (reference §2.3), shared by every
method through ``build_head(name, backbone)``; ``register_head`` adds one from anywhere. Two kinds:

- **Pooled** (CLIP4Clip's "loose" type: ``meanP``, ``seqLSTM``, ``seqTransf``): each video is pooled on its own into
  one L2-normalised vector by ``pool_video``, so evaluation and search pool each video once and score by a matrix
  product. ``pairwise`` is False.
- **Pairwise** (``tightTransf``, ``query_scoring``): the video's score depends on the text, so ``forward`` sees each
  (text, video) pair; ``pairwise`` is True and the engine calls ``forward`` block by block to bound memory.

The heads with transformer layers (seqTransf, tightTransf) copy the first ``num_layers`` blocks of the text tower and
its positional table into blocks of their own (CLIP4Clip's initialisation trick); the backbone is left untouched.
Their LayerNorms use CLIP4Clip's BERT-style epsilon 1e-12 (``HEAD_NORM_EPS``), not the towers' 1e-5; the two differ
most on features of small scale.
They run at width D = ``embed_dim``, so this needs ``embed_dim == text width`` (true for every bundled config);
otherwise ``build_head`` raises rather than silently training a randomly initialised transformer. Build the head
before a method wraps the text blocks: the copy reads the plain block layout.

Padded frames (``frame_mask`` False) never influence a score: every head zeroes them on entry, so even NaN padding is
harmless. A video with no valid frame is refused with an error naming its position in the batch (CLIP4Clip's code
gives NaN or raises there; a silent score would hide a data bug). No path in petvr builds such a row: the data
pipeline refuses a video without frames, evaluation scores the videos it encoded, and the DDP gather concatenates
real batches (the trainer drops incomplete ones), so nothing pads a batch with empty videos.
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..backbone import CLIP, TowerContext, Transformer
from ..backbone.blocks import QuickGELU

INIT_STD = 0.02  # CLIP4Clip's init_weights for new Linear and Embedding layers
HEAD_NORM_EPS = 1e-12  # CLIP4Clip's BERT-style LayerNorm (modules/until_module.py) in its head blocks and pooler

_HEADS: dict[str, type["SimilarityHead"]] = {}


def register_head(name: str):
    """Class decorator (timm style): ``@register_head("meanP")`` makes a ``SimilarityHead`` buildable by name, so a
    method file can bring its own head without editing this file."""

    def decorate(head_class: type["SimilarityHead"]) -> type["SimilarityHead"]:
        if name in _HEADS:
            raise ValueError(f"similarity head {name!r} is registered twice")
        _HEADS[name] = head_class
        return head_class

    return decorate


class SimilarityHead(nn.Module):
    """Interface: ``forward(text_embeddings (Nt, D), frame_embeddings (Nv, T, D), frame_mask (Nv, T) bool,
    logit_scale (scalar, already exponentiated)) -> logits (Nt, Nv)``.

    ``pairwise`` is True when a score needs the (text, video) pair together; such heads are evaluated block-wise.
    ``from_backbone(backbone, num_layers, **options)`` builds the head for a backbone (used by ``build_head``).
    """

    pairwise: bool = False

    @classmethod
    def from_backbone(cls, backbone: CLIP, num_layers: int = 4, **options) -> "SimilarityHead":
        raise NotImplementedError

    def forward(self, text_embeddings: Tensor, frame_embeddings: Tensor, frame_mask: Tensor, logit_scale: Tensor) -> Tensor:
        raise NotImplementedError


class PooledVideoHead(SimilarityHead):
    """A head that pools each video alone (CLIP4Clip's loose type): logits = scale * normalize(text) @ pool_video.T."""

    pairwise = False

    def pool_video(self, frame_embeddings: Tensor, frame_mask: Tensor) -> Tensor:
        """(Nv, T, D), (Nv, T) -> L2-normalised video embeddings (Nv, D)."""
        raise NotImplementedError

    def forward(self, text_embeddings: Tensor, frame_embeddings: Tensor, frame_mask: Tensor, logit_scale: Tensor) -> Tensor:
        _check_shapes(text_embeddings, frame_embeddings, frame_mask)
        videos = self.pool_video(frame_embeddings, frame_mask)
        return logit_scale * F.normalize(text_embeddings, dim=-1) @ videos.T


@register_head("meanP")
class MeanPooling(PooledVideoHead):
    """meanP: normalise each frame, average the valid ones, renormalise. No parameters."""

    @classmethod
    def from_backbone(cls, backbone: CLIP, num_layers: int = 4) -> "MeanPooling":
        return cls()

    def pool_video(self, frame_embeddings: Tensor, frame_mask: Tensor) -> Tensor:
        return mean_pool_normalised(frame_embeddings, frame_mask)


@register_head("seqLSTM")
class SequenceLSTM(PooledVideoHead):
    """seqLSTM: a 1-layer LSTM (D -> D) over the valid frames, added residually to the frames, then meanP.

    The valid frames are moved to the front (in time order) and packed by their count, so the LSTM never reads a
    padded frame, whatever the mask's layout. ``frame_position_embeddings`` (context_length, D) is never used in the
    forward pass and receives no gradient: CLIP4Clip creates it for this head too (initialised from the text
    positions), and we keep it so that the parameter count (2,140,672 on ViT-B/32) and the checkpoint layout match.
    The LSTM keeps PyTorch's default initialisation, as in CLIP4Clip.
    """

    def __init__(self, width: int, context_length: int):
        super().__init__()
        self.lstm = nn.LSTM(input_size=width, hidden_size=width, num_layers=1, batch_first=True, bidirectional=False)
        self.frame_position_embeddings = nn.Embedding(context_length, width)
        nn.init.normal_(self.frame_position_embeddings.weight, std=INIT_STD)

    @classmethod
    def from_backbone(cls, backbone: CLIP, num_layers: int = 4) -> "SequenceLSTM":
        head = cls(backbone.config.embed_dim, backbone.config.text.context_length)
        _copy_text_positions(head.frame_position_embeddings, backbone)
        return head

    def pool_video(self, frame_embeddings: Tensor, frame_mask: Tensor) -> Tensor:
        frame_mask = frame_mask.bool()
        frames = _zero_padded(frame_embeddings, frame_mask)
        num_frames, width = frames.shape[1:]
        valid_first = torch.argsort((~frame_mask).to(torch.int8), dim=1, stable=True)  # (Nv, T)
        restore = torch.argsort(valid_first, dim=1)
        compact = frames.gather(1, valid_first[..., None].expand(-1, -1, width))
        lengths = frame_mask.sum(dim=1).cpu()
        packed = pack_padded_sequence(compact, lengths, batch_first=True, enforce_sorted=False)
        output, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=num_frames)
        output = output.gather(1, restore[..., None].expand(-1, -1, width))  # back to the frames' own positions
        return mean_pool_normalised(output + frames, frame_mask)


@register_head("seqTransf")
class SequenceTransformer(PooledVideoHead):
    """seqTransf: frame positions, ``num_layers`` non-causal CLIP blocks (LayerNorm eps 1e-12) over the valid frames,
    residual, then meanP.

    ``frame_position_embeddings`` (context_length, D) starts from CLIP's text positional table and ``transformer``
    from the first ``num_layers`` text blocks (``from_backbone``). Padded frames are masked as keys. 12,648,960
    parameters on ViT-B/32 with 4 layers.
    """

    def __init__(self, width: int, heads: int, context_length: int, num_layers: int, mlp_ratio: float = 4.0, quick_gelu: bool = True):
        super().__init__()
        self.frame_position_embeddings = nn.Embedding(context_length, width)
        self.transformer = Transformer(width, num_layers, heads, mlp_ratio, quick_gelu, norm_eps=HEAD_NORM_EPS)
        nn.init.normal_(self.frame_position_embeddings.weight, std=INIT_STD)

    @classmethod
    def from_backbone(cls, backbone: CLIP, num_layers: int = 4) -> "SequenceTransformer":
        text = _text_config_for_heads(backbone, num_layers)
        head = cls(text.width, text.heads, text.context_length, num_layers, text.mlp_ratio, backbone.config.quick_gelu)
        _copy_text_positions(head.frame_position_embeddings, backbone)
        _copy_text_blocks(head.transformer, backbone)
        return head

    def pool_video(self, frame_embeddings: Tensor, frame_mask: Tensor) -> Tensor:
        frame_mask = frame_mask.bool()
        frames = _zero_padded(frame_embeddings, frame_mask)
        num_videos, num_frames = frames.shape[:2]
        _check_length(num_frames, self.frame_position_embeddings, "frames")
        x = frames + self.frame_position_embeddings.weight[:num_frames]
        context = TowerContext("video", num_videos, num_frames, frame_mask=frame_mask, key_padding_mask=frame_mask)
        x = self.transformer(x, context)  # (Nv, T, D)
        return mean_pool_normalised(x + frames, frame_mask)


@register_head("tightTransf")
class TightTransformer(SimilarityHead):
    """tightTransf: a cross-encoder over [text EOT feature; T frame features] for every (text, video) pair.

    Tokens (Nt*Nv, 1+T, D) + position table (context_length, D, from CLIP's text positions), dropout, ``num_layers``
    CLIP blocks (from text blocks 0..num_layers-1, LayerNorm eps 1e-12) with padded frames masked (the text token is
    always valid), then CLIP4Clip's pooler: LayerNorm (eps 1e-12), first token, Linear(D, D), QuickGELU;
    ``similarity_dense`` Linear(D, 1) gives the logit. There is no logit scale: the ``logit_scale`` argument is
    ignored. The LayerNorm sits in the pooler, as in CLIP4Clip's code (its embedding LayerNorm is commented out).
    12,913,153 parameters on ViT-B/32 with 4 layers. ``forward`` builds the pair batch for the whole (Nt, Nv) block it
    is given, so the caller keeps blocks small.
    """

    pairwise = True

    def __init__(
        self, width: int, heads: int, context_length: int, num_layers: int, mlp_ratio: float = 4.0,
        quick_gelu: bool = True, dropout: float = 0.1,
    ):
        super().__init__()
        self.position_embeddings = nn.Embedding(context_length, width)
        self.embedding_dropout = nn.Dropout(dropout)
        self.transformer = Transformer(width, num_layers, heads, mlp_ratio, quick_gelu, norm_eps=HEAD_NORM_EPS)
        self.pooler_norm = nn.LayerNorm(width, eps=HEAD_NORM_EPS)
        self.pooler_dense = nn.Linear(width, width)
        self.pooler_activation = QuickGELU()
        self.similarity_dense = nn.Linear(width, 1)
        for layer in (self.position_embeddings, self.pooler_dense, self.similarity_dense):
            nn.init.normal_(layer.weight, std=INIT_STD)
        nn.init.zeros_(self.pooler_dense.bias)
        nn.init.zeros_(self.similarity_dense.bias)

    @classmethod
    def from_backbone(cls, backbone: CLIP, num_layers: int = 4, dropout: float = 0.1) -> "TightTransformer":
        text = _text_config_for_heads(backbone, num_layers)
        head = cls(text.width, text.heads, text.context_length, num_layers, text.mlp_ratio, backbone.config.quick_gelu, dropout)
        _copy_text_positions(head.position_embeddings, backbone)
        _copy_text_blocks(head.transformer, backbone)
        return head

    def forward(self, text_embeddings: Tensor, frame_embeddings: Tensor, frame_mask: Tensor, logit_scale: Tensor) -> Tensor:
        _check_shapes(text_embeddings, frame_embeddings, frame_mask)
        frame_mask = frame_mask.bool()
        frames = _zero_padded(frame_embeddings, frame_mask)
        num_texts, (num_videos, num_frames, width) = text_embeddings.shape[0], frames.shape
        _check_length(1 + num_frames, self.position_embeddings, "text + frame tokens")
        text_tokens = text_embeddings[:, None, None, :].expand(num_texts, num_videos, 1, width)
        frame_tokens = frames[None].expand(num_texts, -1, -1, -1)
        tokens = torch.cat([text_tokens, frame_tokens], dim=2).reshape(num_texts * num_videos, 1 + num_frames, width)
        text_valid = torch.ones(num_texts, num_videos, 1, dtype=torch.bool, device=frame_mask.device)
        token_mask = torch.cat([text_valid, frame_mask[None].expand(num_texts, -1, -1)], dim=2).flatten(0, 1)

        x = self.embedding_dropout(tokens + self.position_embeddings.weight[: 1 + num_frames])
        context = TowerContext("video", num_texts * num_videos, num_frames, key_padding_mask=token_mask)
        x = self.transformer(x, context)  # (Nt*Nv, 1+T, D)
        pooled = self.pooler_activation(self.pooler_dense(self.pooler_norm(x[:, 0])))
        return self.similarity_dense(pooled).view(num_texts, num_videos)


@register_head("query_scoring")
class QueryScoringPooling(SimilarityHead):
    """Query scoring (CLIP-Hitchhiker; Cross-Modal Adapter's parameter-free head, reference §2.3).

    For every pair: scores a_j = <t, f_j> over the valid frames, weights softmax(a / temperature), pooled video
    v = sum_j w_j f_j, logit = logit_scale * cos(t, v). Defaults follow CMA's code: raw (unnormalised) features and
    temperature 5. ``normalize_features=True`` L2-normalises text and frames first (scores and pooling both use the
    normalised features), as some papers do. Intermediates are (Nt, Nv, T) and (Nt, Nv, D).
    """

    pairwise = True

    def __init__(self, temperature: float = 5.0, normalize_features: bool = False):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"query scoring temperature must be positive, got {temperature}")
        self.temperature = temperature
        self.normalize_features = normalize_features

    @classmethod
    def from_backbone(
        cls, backbone: CLIP, num_layers: int = 4, temperature: float = 5.0, normalize_features: bool = False
    ) -> "QueryScoringPooling":
        return cls(temperature, normalize_features)

    def forward(self, text_embeddings: Tensor, frame_embeddings: Tensor, frame_mask: Tensor, logit_scale: Tensor) -> Tensor:
        _check_shapes(text_embeddings, frame_embeddings, frame_mask)
        frame_mask = frame_mask.bool()
        texts, frames = text_embeddings, _zero_padded(frame_embeddings, frame_mask)
        if self.normalize_features:
            texts, frames = F.normalize(texts, dim=-1), F.normalize(frames, dim=-1)
        scores = torch.einsum("nd,vtd->nvt", texts, frames)  # (Nt, Nv, T)
        scores = scores.masked_fill(~frame_mask[None], -math.inf)
        weights = torch.softmax(scores / self.temperature, dim=-1)
        pooled = torch.einsum("nvt,vtd->nvd", weights, frames)  # (Nt, Nv, D)
        cosine = (F.normalize(pooled, dim=-1) * F.normalize(texts, dim=-1)[:, None, :]).sum(dim=-1)
        return logit_scale * cosine

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, normalize_features={self.normalize_features}"


def list_heads() -> list[str]:
    """The registered head names (CLIP4Clip's ``--sim_header`` spellings, ``query_scoring``, and any a method adds)."""
    return list(_HEADS)


def build_head(name: str, backbone: CLIP, num_layers: int = 4, **options) -> SimilarityHead:
    """Build head ``name`` for ``backbone``; ``num_layers`` is the transformer depth of seqTransf / tightTransf
    (CLIP4Clip's ``cross_num_hidden_layers``); ``options`` go to the head (``dropout``, ``temperature``, ...)."""
    if name not in _HEADS:
        raise ValueError(f"unknown similarity head {name!r}; known heads: {', '.join(list_heads())}")
    return _HEADS[name].from_backbone(backbone, num_layers, **options)


def mean_pool_normalised(frame_embeddings: Tensor, frame_mask: Tensor) -> Tensor:
    """meanP pooling: (Nv, T, D), (Nv, T) -> normalise frames, masked mean, renormalise -> (Nv, D)."""
    frame_mask = frame_mask.bool()
    frames = _zero_padded(F.normalize(frame_embeddings, dim=-1), frame_mask)
    count = frame_mask.sum(dim=1, keepdim=True).to(frames.dtype)
    return F.normalize(frames.sum(dim=1) / count, dim=-1)


def _zero_padded(frame_embeddings: Tensor, frame_mask: Tensor) -> Tensor:
    """Replace padded frames by zeros (``where``, not a product, so NaN or inf padding cannot leak), after refusing a
    video without a valid frame: (Nv, T, D), (Nv, T) bool -> (Nv, T, D)."""
    has_frame = frame_mask.any(dim=1)
    if not has_frame.all():
        empty = (~has_frame).nonzero().flatten().tolist()
        which = f"video {empty[0]} of this batch has" if len(empty) == 1 else \
            f"videos {', '.join(map(str, empty))} of this batch have"
        raise ValueError(
            f"{which} no valid frame (frame_mask all False); a head scores only videos with at least one frame "
            "(the data pipeline refuses a video it cannot decode)"
        )
    return torch.where(frame_mask[..., None], frame_embeddings, frame_embeddings.new_zeros(()))


def _check_shapes(text_embeddings: Tensor, frame_embeddings: Tensor, frame_mask: Tensor) -> None:
    if text_embeddings.dim() != 2 or frame_embeddings.dim() != 3:
        raise ValueError(
            f"expected text embeddings (Nt, D) and frame embeddings (Nv, T, D), "
            f"got {tuple(text_embeddings.shape)} and {tuple(frame_embeddings.shape)}"
        )
    if frame_mask.shape != frame_embeddings.shape[:2]:
        raise ValueError(f"frame mask {tuple(frame_mask.shape)} does not match frame embeddings {tuple(frame_embeddings.shape)}")
    if text_embeddings.shape[1] != frame_embeddings.shape[2]:
        raise ValueError(f"text width {text_embeddings.shape[1]} differs from frame width {frame_embeddings.shape[2]}")


def _check_length(length: int, table: nn.Embedding, what: str) -> None:
    if length > table.num_embeddings:
        raise ValueError(f"{length} {what} exceed the head's position table of {table.num_embeddings}")


def _text_config_for_heads(backbone: CLIP, num_layers: int):
    """The text config, after checking that the text tower can initialise a head of ``num_layers`` blocks at width D."""
    config = backbone.config
    if config.text.width != config.embed_dim:
        raise ValueError(
            f"the head runs at embed_dim {config.embed_dim} but is initialised from text blocks of width "
            f"{config.text.width}; this backbone cannot initialise seqTransf / tightTransf"
        )
    if not 1 <= num_layers <= config.text.layers:
        raise ValueError(f"num_layers must be in 1..{config.text.layers} (the text tower's depth), got {num_layers}")
    return config.text


def _copy_text_positions(table: nn.Embedding, backbone: CLIP) -> None:
    with torch.no_grad():
        table.weight.copy_(backbone.text.positional_embedding)


def _copy_text_blocks(transformer: Transformer, backbone: CLIP) -> None:
    """Load the first ``len(transformer.resblocks)`` text blocks' weights into the head's own blocks."""
    for index, block in enumerate(transformer.resblocks):
        source = backbone.text.transformer.resblocks[index]
        try:
            block.load_state_dict(source.state_dict())
        except RuntimeError as error:
            raise ValueError(
                f"text block {index} does not have the plain CLIP block layout (was it wrapped by a method before the "
                f"head was built?): {error}"
            ) from error
