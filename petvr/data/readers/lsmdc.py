"""LSMDC 2016 in the CLIP4Clip layout.

Tab-separated files without a header, six fields per line: clip_id, start_aligned, end_aligned, start_extracted,
end_extracted, sentence. ``LSMDC16_annos_training.csv`` (101,079 clips), ``LSMDC16_annos_val.csv`` (7,408) and
``LSMDC16_challenge_1000_publictect.csv`` (the 1,000-clip public test; the misspelling is the real name).

Clips are already cut, so a record spans its whole file. The release puts clips in one sub-folder per movie
(``0001_American_Beauty/0001_American_Beauty_00.00.51.926-00.00.54.129.avi``): the video folder is walked once and
clips are found by stem.
"""
from __future__ import annotations

from pathlib import Path

from petvr.data.readers.common import CaptionGroups, CsvTable, Problems, SplitBuilder, VideoIndex, caption_text
from petvr.data.records import RetrievalSplit

SPLIT_FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}
COLUMNS = ("clip_id", "start_aligned", "end_aligned", "start_extracted", "end_extracted", "sentence")


def read_lsmdc(annotation_dir: str | Path, video_dir: str | Path, split: str = "test",
               skip_unreadable: bool = False) -> RetrievalSplit:
    """Read LSMDC ``split`` ("train", "val" or "test"): one record per clip with its sentence."""
    if split not in SPLIT_FILES:
        raise ValueError(f"LSMDC split must be one of {sorted(SPLIT_FILES)}, got {split!r}")
    path = Path(annotation_dir) / SPLIT_FILES[split]
    table = CsvTable(path, columns=COLUMNS, delimiter="\t")
    videos = VideoIndex(video_dir)
    problems = Problems(skip_unreadable)
    groups = CaptionGroups(split)
    for line, fields in table.rows:
        with problems.item():
            row = table.row(line, fields)
            clip_id = row["clip_id"].strip()
            caption = caption_text(row["sentence"], path, line)
            groups.add(clip_id, videos.lookup((clip_id,), path, line), caption, line)
    builder = SplitBuilder("lsmdc", split, [path], problems)
    groups.add_to(builder, path)
    return builder.finish()
