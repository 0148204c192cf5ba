"""Retrieval metrics against hand-computed ranks: single caption, ties, and the multi-caption protocols."""
import json

import numpy as np
import pytest
import torch

from petvr.evaluation.metrics import (
    format_metrics_table, metrics_from_ranks, ranks_from_similarity, retrieval_metrics,
    video_to_caption_set_similarity,
)

# texts x videos; text i belongs to video i
SQUARE = torch.tensor([
    [0.9, 0.1, 0.5, 0.0],
    [0.2, 0.3, 0.8, 0.1],
    [0.4, 0.7, 0.6, 0.9],
    [0.3, 0.2, 0.1, 0.0],
])


def test_square_ranks_both_directions_by_hand():
    # T2V rows: 0.9 is first -> 0; 0.3 is behind 0.8 -> 1; 0.6 is behind 0.7 and 0.9 -> 2; 0.0 is last -> 3.
    assert ranks_from_similarity(SQUARE, torch.arange(4)).tolist() == [0, 1, 2, 3]
    # V2T columns: [0.9, .2, .4, .3] -> 0; [.1, .3, .7, .2] -> 1; [.5, .8, .6, .1] -> 1; [0, .1, .9, 0] -> 3 (behind .1
    # and .9, and, under the stable rule, behind text 0's tied 0.0 with its lower index).
    assert ranks_from_similarity(SQUARE.t(), torch.arange(4)).tolist() == [0, 1, 1, 3]
    metrics = retrieval_metrics(SQUARE)
    assert metrics["t2v"] == pytest.approx({"R@1": 25.0, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0,
                                            "MdR": 2.5, "MnR": 2.5, "queries": 4})
    assert metrics["v2t"]["R@1"] == 25.0 and metrics["v2t"]["MdR"] == 2.0 and metrics["v2t"]["MnR"] == 2.25


def test_metrics_from_ranks_definitions():
    ranks = np.array([0, 4, 5, 9, 10, 60])
    metrics = metrics_from_ranks(ranks, ks=(1, 5, 10, 50))
    assert metrics["R@1"] == pytest.approx(100 / 6)
    assert metrics["R@5"] == pytest.approx(200 / 6)
    assert metrics["R@10"] == pytest.approx(400 / 6)
    assert metrics["R@50"] == pytest.approx(500 / 6)
    assert metrics["MdR"] == 8.0    # median(5, 9) + 1
    assert metrics["MnR"] == pytest.approx(np.mean(ranks) + 1)


def test_tie_rules():
    row = torch.tensor([[0.5, 0.5, 0.5, 0.2, 0.9]])
    stable = [ranks_from_similarity(row, torch.tensor([gt])).item() for gt in range(5)]
    pessimistic = [ranks_from_similarity(row, torch.tensor([gt]), ties="pessimistic").item() for gt in range(5)]
    assert stable == [1, 2, 3, 4, 0]
    assert pessimistic == [3, 3, 3, 4, 0]
    constant = retrieval_metrics(torch.zeros(10, 10))
    assert constant["t2v"]["R@1"] == 10.0   # a constant matrix scores like chance under the stable rule
    assert retrieval_metrics(torch.zeros(10, 10), ties="pessimistic")["t2v"]["R@1"] == 0.0


def test_stable_rule_matches_numpy_stable_argsort():
    generator = np.random.default_rng(0)
    scores = generator.integers(0, 4, size=(50, 30)).astype(np.float32)   # many ties
    truth = generator.integers(0, 30, size=50)
    order = np.argsort(-scores, axis=1, kind="stable")
    expected = np.array([np.nonzero(order[i] == truth[i])[0][0] for i in range(50)])
    np.testing.assert_array_equal(ranks_from_similarity(scores, truth), expected)


# 5 captions of 3 videos: captions 0, 1 -> video 0; caption 2 -> video 1; captions 3, 4 -> video 2
MULTI = torch.tensor([
    [0.9, 0.2, 0.1],
    [0.1, 0.6, 0.3],
    [0.5, 0.4, 0.0],
    [0.2, 0.3, 0.8],
    [0.7, 0.1, 0.5],
])
CAPTION_TO_VIDEO = [0, 0, 1, 2, 2]


def test_multi_caption_text_to_video_by_hand():
    metrics = retrieval_metrics(MULTI, CAPTION_TO_VIDEO)
    # caption 0 -> video 0 first (0); caption 1 -> video 0 behind .6, .3 (2); caption 2 -> video 1 behind .5 (1);
    # caption 3 -> video 2 first (0); caption 4 -> video 2 behind .7 (1).
    assert metrics["t2v"]["queries"] == 5
    assert metrics["t2v"]["R@1"] == pytest.approx(40.0)
    assert metrics["t2v"]["MnR"] == pytest.approx(1 + 4 / 5)
    assert metrics["t2v"]["MdR"] == 2.0


def test_multi_caption_text_to_video_median_is_the_lower_middle_rank():
    # CLIP4Clip takes torch.median here: of the middle ranks 0 and 1 the lower, so MdR 1, where np.median gives 1.5.
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.1, 0.7], [0.5, 0.4]])
    metrics = retrieval_metrics(scores, [0, 0, 1, 1])
    assert ranks_from_similarity(scores, torch.tensor([0, 0, 1, 1])).tolist() == [0, 1, 0, 1]
    assert metrics["t2v"]["MdR"] == 1.0 and metrics["t2v"]["MnR"] == 1.5
    # video-to-text over the caption sets keeps np.median, as CLIP4Clip's compute_metrics: ranks 0 and 1 give 1.5
    per_set = video_to_caption_set_similarity(scores, [0, 0, 1, 1])
    assert ranks_from_similarity(per_set, torch.arange(2)).tolist() == [0, 1]
    assert metrics["v2t"]["MdR"] == 1.5


def test_metrics_from_ranks_medians():
    assert metrics_from_ranks(np.array([7, 0, 3, 1]))["MdR"] == 3.0                 # (1 + 3) / 2 + 1
    assert metrics_from_ranks(np.array([7, 0, 3, 1]), median="lower")["MdR"] == 2.0  # 1 + 1
    assert metrics_from_ranks(np.array([7, 0, 3]), median="lower")["MdR"] == 4.0     # odd count: the middle one
    with pytest.raises(ValueError, match="unknown median 'mean'"):
        metrics_from_ranks(np.array([0]), median="mean")


def test_multi_caption_video_to_text_max_over_captions_by_hand():
    # [j, k] = max over captions of video k of S[c, j]
    expected = torch.tensor([
        [0.9, 0.5, 0.7],
        [0.6, 0.4, 0.3],
        [0.3, 0.0, 0.8],
    ])
    torch.testing.assert_close(video_to_caption_set_similarity(MULTI, CAPTION_TO_VIDEO), expected)
    metrics = retrieval_metrics(MULTI, CAPTION_TO_VIDEO, v2t_protocol="max_over_captions")
    # video 0: its set scores 0.9, first (0); video 1: 0.4 behind 0.6 (1); video 2: 0.8 first (0).
    assert metrics["v2t"]["queries"] == 3
    assert metrics["v2t"]["R@1"] == pytest.approx(200 / 3)
    assert metrics["v2t"]["MnR"] == pytest.approx(1 + 1 / 3)
    assert metrics["v2t_protocol"] == "max_over_captions"


def test_multi_caption_video_to_text_best_caption_rank_by_hand():
    # video 0 over captions: [.9, .1, .5, .2, .7] -> caption 0 first (0)
    # video 1 over captions: [.2, .6, .4, .3, .1] -> its caption 2 (0.4) behind .6 (1)
    # video 2 over captions: [.1, .3, 0, .8, .5] -> caption 3 first (0)
    metrics = retrieval_metrics(MULTI, CAPTION_TO_VIDEO, v2t_protocol="best_caption_rank")
    assert metrics["v2t"]["R@1"] == pytest.approx(200 / 3)
    positives = torch.tensor(CAPTION_TO_VIDEO).unsqueeze(0) == torch.arange(3).unsqueeze(1)
    assert ranks_from_similarity(MULTI.t(), positives).tolist() == [0, 1, 0]
    # The protocols differ once both captions of video 2 beat video 1's caption for video 1: per caption they count
    # twice, as one caption set they count once.
    shifted = MULTI.clone()
    shifted[3, 1] = 0.45
    shifted[4, 1] = 0.45
    best = retrieval_metrics(shifted, CAPTION_TO_VIDEO, v2t_protocol="best_caption_rank")["v2t"]
    per_set = retrieval_metrics(shifted, CAPTION_TO_VIDEO, v2t_protocol="max_over_captions")["v2t"]
    assert best["MnR"] == pytest.approx(1 + 3 / 3)   # video 1's caption behind .6, .45, .45
    assert per_set["MnR"] == pytest.approx(1 + 2 / 3)  # its set behind the sets of videos 0 and 2


# texts x videos with ties; text i belongs to video i
TIED = torch.tensor([
    [0.5, 0.5, 0.2],
    [0.9, 0.1, 0.1],
    [0.3, 0.3, 0.3],
])


def test_official_ties_count_every_tied_position_by_hand():
    # T2V: row 0's 0.5 sits at sorted positions 0 and 1; row 1's 0.1 at 1 and 2; row 2's 0.3 at 0, 1 and 2.
    assert ranks_from_similarity(TIED, torch.arange(3), ties="official").tolist() == [0, 1, 1, 2, 0, 1, 2]
    metrics = retrieval_metrics(TIED, ties="official")
    assert metrics["t2v"] == pytest.approx({"R@1": 200 / 7, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0,
                                            "MdR": 2.0, "MnR": 1 + 7 / 7, "queries": 3, "ranked": 7})
    # V2T columns have no tie with their positive: one rank each (1, 2, 0), no "ranked".
    assert metrics["v2t"] == pytest.approx({"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0, "R@50": 100.0,
                                            "MdR": 2.0, "MnR": 2.0, "queries": 3})
    assert retrieval_metrics(TIED)["t2v"]["R@1"] == pytest.approx(100 / 3)   # stable: ranks 0, 1, 2
    assert "t2v ranks 7 tied positions" in format_metrics_table(metrics)


def official_square_ranks(scores):
    """CLIP4Clip's compute_metrics rule, written out: every position of the sorted row equal to the positive's score."""
    ranks = []
    for i, row in enumerate(scores):
        ordered = sorted(row.tolist(), reverse=True)
        ranks += [position for position, value in enumerate(ordered) if value == row[i]]
    return np.array(ranks)


def test_official_ties_on_a_heavily_tied_matrix_match_the_rule_written_out():
    scores = np.random.default_rng(0).integers(0, 4, size=(200, 200)).astype(np.float32)
    for direction, matrix in (("t2v", scores), ("v2t", scores.T)):
        expected = official_square_ranks(matrix)
        metrics = retrieval_metrics(scores, ties="official")[direction]
        assert metrics["queries"] == 200 and metrics["ranked"] == len(expected) > 9_000
        assert metrics["MdR"] == np.median(expected) + 1 and metrics["MnR"] == pytest.approx(np.mean(expected) + 1)
        for k in (1, 5, 10, 50):
            assert metrics[f"R@{k}"] == pytest.approx(100 * np.mean(expected < k))
    untied = torch.randn(30, 30, generator=torch.Generator().manual_seed(2))
    assert retrieval_metrics(untied, ties="official")["t2v"] == retrieval_metrics(untied)["t2v"]


def test_official_ties_with_several_captions_per_video():
    scores = torch.tensor(np.random.default_rng(1).integers(0, 3, size=(12, 4)).astype(np.float32))
    caption_to_video = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    official = retrieval_metrics(scores, caption_to_video, ties="official")
    # text-to-video: CLIP4Clip's argsort leaves the order among ties unspecified; ours is the stable rule
    assert official["t2v"] == retrieval_metrics(scores, caption_to_video)["t2v"]
    # video-to-text: compute_metrics on the max-over-captions matrix, every tied position counted
    expected = official_square_ranks(video_to_caption_set_similarity(scores, caption_to_video).numpy())
    assert official["v2t"]["ranked"] == len(expected) > 4
    assert official["v2t"]["MnR"] == pytest.approx(np.mean(expected) + 1)
    with pytest.raises(ValueError, match="not CLIP4Clip's protocol"):
        retrieval_metrics(scores, caption_to_video, v2t_protocol="best_caption_rank", ties="official")
    with pytest.raises(ValueError, match="one ground-truth column per query"):
        ranks_from_similarity(scores, scores > 1, ties="official")


def test_one_caption_per_video_mapping_equals_square_protocol():
    scores = torch.randn(7, 7, generator=torch.Generator().manual_seed(1))
    for ties in ("stable", "official"):
        plain = retrieval_metrics(scores, ties=ties)
        for protocol in ("max_over_captions", "best_caption_rank"):
            mapped = retrieval_metrics(scores, list(range(7)), v2t_protocol=protocol, ties=ties)
            assert mapped["t2v"] == plain["t2v"] and mapped["v2t"] == plain["v2t"]


def test_errors_are_explicit():
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="needs caption_to_video"):
        retrieval_metrics(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="video 1 has no caption"):
        retrieval_metrics(torch.zeros(3, 3), [0, 0, 2])
    with pytest.raises(ValueError, match="one video index per caption"):
        retrieval_metrics(torch.zeros(3, 3), [0, 1])
    with pytest.raises(ValueError, match="unknown tie rule"):
        ranks_from_similarity(SQUARE, torch.arange(4), ties="random")
    with pytest.raises(ValueError, match="unknown video-to-text protocol"):
        retrieval_metrics(SQUARE, v2t_protocol="mean")


def test_result_is_json_serialisable_and_prints_as_a_table():
    metrics = retrieval_metrics(MULTI, CAPTION_TO_VIDEO)
    assert json.loads(json.dumps(metrics)) == metrics
    table = format_metrics_table(metrics)
    lines = table.splitlines()
    assert lines[0].split() == ["direction", "R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "queries"]
    assert lines[1].split() == ["t2v", "40.0", "100.0", "100.0", "100.0", "2.0", "1.8", "5"]
    assert lines[2].split()[0] == "v2t" and lines[2].split()[-1] == "3"
    assert "max_over_captions" in lines[3]


def test_evaluate_split_passes_the_tie_rule_on(monkeypatch):
    from pathlib import Path

    from petvr.data.records import RetrievalSplit, VideoRecord
    from petvr.evaluation import evaluate

    videos = [VideoRecord(f"v{i}", Path(f"v{i}.mp4"), "test", [f"caption {i}"]) for i in range(3)]
    monkeypatch.setattr(evaluate, "encode_captions", lambda *args, **kwargs: None)
    monkeypatch.setattr(evaluate, "encode_videos", lambda *args, **kwargs: (None, None))
    monkeypatch.setattr(evaluate, "similarity_matrix", lambda *args, **kwargs: TIED)
    metrics = evaluate.evaluate_split(torch.nn.Module(), RetrievalSplit("toy", "test", videos), None, None,
                                      progress=False, ties="official")
    assert metrics["ties"] == "official" and metrics["t2v"]["ranked"] == 7
