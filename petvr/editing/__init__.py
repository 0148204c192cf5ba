"""Training from single timestamps with teacher-student clip editing (Zhu et al., "Video Editing for Video
Retrieval", arXiv 2402.02335), for any registered method.

- ``clips``: ``EditingConfig`` (a recipe's ``[editing]`` table), initial clips from the timestamps, candidate
  boundaries, the editing decision, IoU with the ground truth.
- ``teacher``: ``TeacherScorer``, a model's caption-clip similarity of candidate spans.
- ``run``: ``run_editing(recipe)``: warm-up on the initial clips, then editing rounds (teacher edits, student trains,
  the teacher takes the student's weights when validation improves), every round's clips in ``clips.jsonl``.
- ``timeline``: the PNG timeline of ground-truth, initial and edited spans.

Timestamps come from the readers (``petvr.data.timestamps``); docs/editing.md says which parts are the paper's and
which are our design.
"""
from .clips import Clip, Edit, EditingConfig, candidate_spans, edit_clips, initial_clips, mean_iou, temporal_iou
from .run import EditingRun, read_clip_rounds, run_editing
from .teacher import TeacherScorer
from .timeline import write_timeline

__all__ = ["Clip", "Edit", "EditingConfig", "EditingRun", "TeacherScorer", "candidate_spans", "edit_clips",
           "initial_clips", "mean_iou", "read_clip_rounds", "run_editing", "temporal_iou", "write_timeline"]
