"""The timeline picture: for a few training videos, each caption's ground-truth span, its initial clip and its clip
after every editing round, with the timestamp marked (matplotlib, written as ``timeline.png`` in the run folder)."""
from __future__ import annotations

from pathlib import Path


def write_timeline(rounds: dict[int, dict[tuple[str, int], dict]], path: str | Path, num_videos: int = 4,
                   video_ids: list[str] | None = None) -> Path | None:
    """Draw ``rounds`` (``read_clip_rounds``' form) for ``video_ids`` (default: the first ``num_videos`` videos of
    round 0) into ``path``; returns it, or ``None`` when there is nothing to draw."""
    if not rounds or 0 not in rounds or (num_videos < 1 and not video_ids):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(dict.fromkeys(video_id for video_id, _ in rounds[0]))
    video_ids = video_ids or order[:num_videos]
    numbers = sorted(rounds)
    colours = plt.get_cmap("viridis")(
        [0.15 + 0.7 * index / max(1, len(numbers) - 1) for index in range(len(numbers))])
    figure, axes = plt.subplots(len(video_ids), 1, figsize=(10, 1.0 + 0.9 * sum(
        1 + max(number for video, number in rounds[0] if video == video_id) for video_id in video_ids)), squeeze=False)
    band = 0.7 / (len(numbers) + 1)
    for axis, video_id in zip(axes[:, 0], video_ids):
        captions = sorted(number for video, number in rounds[0] if video == video_id)
        for row, number in enumerate(captions):
            first = rounds[0][(video_id, number)]
            top = row + 0.1  # the y axis points down: ground truth on top, then the initial clip, then each round
            if first.get("reference") is not None:
                start, end = first["reference"]
                axis.broken_barh([(start, end - start)], (top, band * 0.9), color="0.55",
                                 label="ground truth" if row == 0 else None)
            for index, round_number in enumerate(numbers):
                clip = rounds[round_number].get((video_id, number))
                if clip is None:
                    continue
                label = ("initial" if round_number == 0 else f"round {round_number}") if row == 0 else None
                axis.broken_barh([(clip["start"], clip["end"] - clip["start"])],
                                 (top + band * (index + 1), band * 0.9), color=colours[index], label=label)
            axis.plot([first["timestamp"]], [top + 0.8], marker="^", color="crimson", markersize=7,
                      label="timestamp" if row == 0 else None, linestyle="none")
        axis.set_yticks([row + 0.5 for row in range(len(captions))])
        axis.set_yticklabels([_short(rounds[0][(video_id, number)]["caption"]) for number in captions], fontsize=7)
        axis.invert_yaxis()
        axis.set_title(video_id, fontsize=9, loc="left")
        axis.set_xlabel("seconds", fontsize=8)
        axis.grid(axis="x", alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=min(6, len(numbers) + 2))
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _short(caption: str, limit: int = 38) -> str:
    return caption if len(caption) <= limit else caption[:limit - 1] + "…"
