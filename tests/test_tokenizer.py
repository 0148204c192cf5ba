"""petvr's tokenizer gives open_clip's token ids (CLIP4Clip framing: SOT, BPE tokens, EOT, zero padding)."""
from __future__ import annotations

import open_clip
import pytest
import torch

from petvr.backbone.tokenizer import EOT_TOKEN, SOT_TOKEN, Tokenizer

CAPTIONS = [
    "A man is playing a guitar on stage.",
    "Ein Mädchen fährt Fahrrad — café, naïve, 東京の夜景, emoji 🎸🔥",
    "Tom &amp; Jerry &lt;cartoon&gt; &quot;chase&quot; &#39;scene&#39; &amp;amp; more",
    "  lots   of\twhitespace \n and NEWLINES  ",
    "",
    "a very long caption " + "that keeps going and going with many more words " * 12,
    "fish-eye lens, 4k HDR footage (2019) at 60fps: 100% real!",
]


@pytest.mark.parametrize("max_words", [8, 32, 77])
def test_token_ids_match_open_clip(max_words):
    token_ids, attention_mask = Tokenizer(max_words)(CAPTIONS)
    expected = open_clip.tokenize(CAPTIONS, context_length=max_words)
    assert token_ids.dtype == torch.long and token_ids.shape == (len(CAPTIONS), max_words)
    assert torch.equal(token_ids, expected)
    assert torch.equal(attention_mask, expected != 0)


def test_truncation_keeps_eot_last():
    long_caption = CAPTIONS[5]
    token_ids, attention_mask = Tokenizer(16)([long_caption])
    assert token_ids[0, 0] == SOT_TOKEN and token_ids[0, -1] == EOT_TOKEN
    assert attention_mask.all()
    assert token_ids[0].argmax() == 15  # EOT is the largest id, where the text tower pools


def test_empty_caption_and_mask():
    token_ids, attention_mask = Tokenizer(6)("")
    assert token_ids.tolist() == [[SOT_TOKEN, EOT_TOKEN, 0, 0, 0, 0]]
    assert attention_mask.tolist() == [[True, True, False, False, False, False]]


def test_decode_round_trip():
    tokenizer = Tokenizer(32)
    token_ids, _ = tokenizer(["a man is playing a guitar on stage."])
    assert tokenizer.decode(token_ids[0]) == "a man is playing a guitar on stage ."


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2"):
        Tokenizer(1)
    with pytest.raises(TypeError, match="caption must be a string"):
        Tokenizer(8)([None])
