"""Training from single timestamps: initial clips, warm-up, then teacher-student editing rounds (``run_editing``).

The run folder holds, besides one ordinary ``Trainer`` run folder per stage (``warmup/``, ``round-01/``, ...):

- ``clips.jsonl``: every round's clip of every training caption (round 0 = the initial clips), one JSON object a line
  with its timestamp, span, score and, where known, the ground-truth span;
- ``editing.json``: the stages done, each round's validation metrics, whether the teacher took the student's weights,
  the mean IoU of the clips with the ground truth, the time each stage took;
- ``adapter/``: the teacher, i.e. the best validated weights since the first teacher (``petvr eval RUN/adapter``);
- ``start/``: the recipe's starting weights, where every round's student begins (``student = "restart"``) and the
  first teacher when ``first_teacher = "start"``;
- ``timeline.png``: ground-truth, initial and edited spans of each caption per round, for a few videos.

Resuming (the default) skips the finished stages, reuses the clips a round already wrote (so an interrupted round
trains on exactly the clips it had), and lets each stage's ``Trainer`` resume from its own checkpoints.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..adapters import load_adapter_weights
from ..atomic import atomic_write, atomic_write_json
from ..backbone import create_backbone
from ..backbone.tokenizer import Tokenizer
from ..data.cache import build_cache
from ..data.dataset import CaptionVideoDataset, FrameSource
from ..data.records import CaptionPair, RetrievalSplit
from ..data.video import probe_video
from ..errors import RecipeError
from ..evaluation.evaluate import evaluate_split
from ..training.distributed import seed_everything
from ..training.recipe import sampling_config, with_absolute_paths
from ..training.run import build_model, read_split
from ..training.trainer import TrainConfig, Trainer
from ..typed_config import dataclass_from_dict
from .clips import Clip, EditingConfig, edit_clips, initial_clips, mean_iou
from .teacher import TeacherScorer
from .timeline import write_timeline

CLIPS_FILE = "clips.jsonl"
STATE_FILE = "editing.json"
TEACHER = "adapter"
START = "start"  # the recipe's starting weights, where every round's student begins (student = "restart")
TIMELINE = "timeline.png"


def timestamped_videos(split: RetrievalSplit, where: str) -> list[tuple]:
    """``(video_id, path, duration, captions, timestamps, reference spans)`` of every video of a timestamp-supervised
    split; the duration is the file's (from its header), capped by the annotated one."""
    videos = []
    for record in split.videos:
        if record.caption_timestamps is None:
            raise RecipeError(f"{where}: video {record.video_id!r} has no timestamps; editing trains from one timestamp "
                              "per caption: set timestamps = \"uniform\" in [data.train] (ActivityNet Captions, "
                              "YouCook2, DiDeMo in sentence mode) or give a timestamp column in your caption file")
        duration = probe_video(record.path).duration
        if record.duration is not None:
            duration = min(duration, record.duration)
        videos.append((record.video_id, record.path, duration, record.captions, record.caption_timestamps,
                       record.reference_times))
    return videos


def clip_rows(round_number: int, clips: list[Clip], scores: list[float | None]) -> list[dict]:
    return [{"round": round_number, "video_id": clip.video_id, "caption_number": clip.caption_number,
             "caption": clip.caption, "timestamp": clip.timestamp, "start": clip.start, "end": clip.end,
             "score": score, "reference": list(clip.reference) if clip.reference is not None else None}
            for clip, score in zip(clips, scores)]


def read_clip_rounds(path: Path) -> dict[int, dict[tuple[str, int], dict]]:
    """``clips.jsonl`` as ``{round: {(video_id, caption_number): row}}`` (empty when there is no file)."""
    rounds: dict[int, dict[tuple[str, int], dict]] = {}
    if not path.is_file():
        return rounds
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
                rounds.setdefault(int(row["round"]), {})[(row["video_id"], int(row["caption_number"]))] = row
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}: line {number} is not a clip row ({error}); delete the run folder or "
                                 "start over (--no-resume)") from None
    return rounds


class EditingRun:
    """One timestamp-supervised run of a recipe with an ``[editing]`` table; ``run()`` does every stage."""

    def __init__(self, recipe: dict, output_dir: str | Path | None = None, device: torch.device | str = "cpu",
                 progress: bool = True):
        self.recipe = with_absolute_paths(recipe)
        train_table = dict(self.recipe["train"])
        self.run_dir = Path(output_dir or train_table.pop("output_dir", None) or Path("runs") / recipe["name"])
        train_table.pop("output_dir", None)
        self.train_config = dataclass_from_dict(TrainConfig, train_table, "[train]")
        self.config = EditingConfig.from_recipe(self.recipe)
        self.device, self.progress = torch.device(device), progress
        data = self.recipe["data"]
        self.cache_dir = Path(data.get("cache_dir") or self.run_dir / "frames")
        self.num_workers = data.get("num_workers", 0)
        self.tokenizer = Tokenizer(data.get("max_words", 32))

    # -- state --
    def _state(self) -> dict:
        path = self.run_dir / STATE_FILE
        if not path.is_file():
            return {"editing": asdict(self.config), "warmup": None, "teacher": None, "rounds": [], "stopped": None}
        try:
            state = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"{path}: cannot read the editing state ({error}); start over (--no-resume)") from None
        if state.get("editing") != asdict(self.config):
            raise ValueError(f"{path}: this run was made with other [editing] settings, or by an older petvr "
                             f"({state.get('editing')}); use "
                             "another output folder or start over (--no-resume)")
        return state

    def _save_state(self, state: dict) -> None:
        atomic_write_json(self.run_dir / STATE_FILE, state)

    def _write_round(self, round_number: int, clips: list[Clip], scores: list[float | None]) -> None:
        """Append one round's clips to ``clips.jsonl`` (the whole file rewritten atomically, earlier rounds kept)."""
        path = self.run_dir / CLIPS_FILE
        kept = [line for line in (path.read_text().splitlines() if path.is_file() else [])
                if line.strip() and json.loads(line)["round"] < round_number]
        lines = kept + [json.dumps(row) for row in clip_rows(round_number, clips, scores)]
        atomic_write(path, lambda tmp: tmp.write_text("\n".join(lines) + "\n"))

    # -- pieces --
    def prepare(self) -> None:
        """Read the splits, fill the frame cache with whole videos, build the model and the teacher's scorer."""
        recipe = self.recipe
        seed_everything(self.train_config.seed)
        shape_only = create_backbone(recipe["backbone"]["name"], device="meta")
        self.train_sampling = sampling_config(recipe, shape_only, train=True)
        self.eval_sampling = sampling_config(recipe, shape_only, train=False)
        train = read_split(recipe, "train", report_dir=self.run_dir)
        self.validation = read_split(recipe, "test", report_dir=self.run_dir).clips()
        paths = sorted({str(video.path) for video in train.videos} | {str(video.path) for video in self.validation.videos})
        report = build_cache(paths, self.eval_sampling, self.cache_dir, num_workers=self.num_workers,
                             skip_unreadable=False)
        print(f"frame cache (whole videos, {self.eval_sampling.feature_framerate:g} frames/s): "
              f"{report.summary().splitlines()[0]}")
        self.videos = timestamped_videos(train, f"{recipe['name']} [data.train]")
        self.model = build_model(recipe, self.device)
        print(self.model.format_parameter_report())
        self.train_frames = FrameSource(self.train_sampling, self.cache_dir, whole_video=True)
        self.eval_frames = FrameSource(self.eval_sampling, self.cache_dir, whole_video=True)
        self.scorer = TeacherScorer(self.model, self.eval_frames, self.tokenizer, self.config.score_batch_size,
                                    self.device, self.progress)

    def evaluate(self, model) -> dict:
        """Text-to-clip metrics on the validation clips (the recipe's test split, each caption's ground-truth span)."""
        data = self.recipe["data"]
        return evaluate_split(model, self.validation, self.eval_frames, self.tokenizer,
                              batch_size=data.get("batch_size_val", 16), num_workers=self.num_workers,
                              device=self.device, progress=self.progress, ties=data.get("ties", "stable"))

    def _score(self, metrics: dict) -> float:
        direction, key = self.config.metric.split("/")
        return float(metrics[direction][key])

    def train_stage(self, name: str, clips: list[Clip], epochs: int, start_from: Path | None) -> dict:
        """Train the student on ``clips`` for ``epochs`` in ``run_dir/name`` (a ``Trainer`` run folder, resumed when
        it has checkpoints, else started from the adapter at ``start_from``); returns the last epoch's metrics."""
        samples = [CaptionPair(clip.video_id, clip.path, clip.caption, clip.start, clip.end, "train") for clip in clips]
        dataset = CaptionVideoDataset(samples, self.train_frames, self.tokenizer, seed=self.train_config.seed)
        trainer = Trainer(self.model, dataset, replace(self.train_config, epochs=epochs), self.run_dir / name,
                          evaluate=self.evaluate, recipe=self.recipe, device=self.device,
                          selection_metric=self.config.metric, num_workers=self.num_workers)
        if trainer.resume():
            print(f"{name}: resumed from step {trainer.step}")
        elif start_from is not None:
            load_adapter_weights(self.model, start_from)
        trainer.train()
        return trainer.last_metrics

    def _clips_of(self, rows: dict[tuple[str, int], dict], template: list[Clip]) -> list[Clip]:
        """The clips a round wrote, in the order of ``template`` (the initial clips)."""
        try:
            return [replace(clip, start=rows[(clip.video_id, clip.caption_number)]["start"],
                            end=rows[(clip.video_id, clip.caption_number)]["end"]) for clip in template]
        except KeyError as error:
            raise ValueError(f"{self.run_dir / CLIPS_FILE}: no clip for caption {error} of the training split; the "
                             "split changed since the run began: start over (--no-resume)") from None

    # -- the run --
    def run(self, resume: bool = True) -> dict:
        if not resume:  # forget every stage and every round's clips (the frame cache stays)
            for name in (STATE_FILE, CLIPS_FILE, TIMELINE):
                (self.run_dir / name).unlink(missing_ok=True)
            for folder in [self.run_dir / TEACHER, self.run_dir / START, self.run_dir / "warmup",
                           *self.run_dir.glob("round-*")]:
                shutil.rmtree(folder, ignore_errors=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        state = self._state()
        uses_start = self.config.student == "restart" or self.config.first_teacher == "start"
        if uses_start and not (self.run_dir / START).is_dir():
            self.model.save_adapter(self.run_dir / START, self.recipe)
        written = read_clip_rounds(self.run_dir / CLIPS_FILE)
        clips = initial_clips(self.videos, self.config)
        if 0 in written:
            clips = self._clips_of(written[0], clips)
        else:
            self._write_round(0, clips, [None] * len(clips))
        if state["warmup"] is None:
            started = time.perf_counter()
            metrics = self.train_stage("warmup", clips, self.train_config.epochs, None)
            state["warmup"] = {"metrics": metrics, "score": self._score(metrics), "mean_iou": mean_iou(clips),
                               "seconds": time.perf_counter() - started}
            if self.config.first_teacher == "warmup":
                self.model.save_adapter(self.run_dir / TEACHER, self.recipe, metrics)
                state["teacher"] = {"stage": "warmup", "score": state["warmup"]["score"]}
            self._save_state(state)
        if self.config.first_teacher == "start" and state.get("teacher") is None:  # the starting weights, validated
            load_adapter_weights(self.model, self.run_dir / START)
            metrics = self.evaluate(self.model)
            self.model.save_adapter(self.run_dir / TEACHER, self.recipe, metrics)
            state["start"] = {"metrics": metrics, "score": self._score(metrics)}
            state["teacher"] = {"stage": "start", "score": state["start"]["score"]}
            self._save_state(state)
        print(f"warm-up: {self.config.metric} {state['warmup']['score']:.2f}, initial clips' mean IoU with the "
              f"ground truth {_format(state['warmup']['mean_iou'])}; first teacher: {state['teacher']['stage']} "
              f"({state['teacher']['score']:.2f})")
        previous_stage = "warmup"
        for done in state["rounds"]:
            clips = self._clips_of(written[done["round"]], clips)
            previous_stage = f"round-{done['round']:02d}"
        while state["stopped"] is None:
            round_number = len(state["rounds"]) + 1
            if round_number > self.config.rounds:
                state["stopped"] = f"{self.config.rounds} rounds done"
                break
            stage = f"round-{round_number:02d}"
            started = time.perf_counter()
            if round_number in written:
                clips = self._clips_of(written[round_number], clips)
                moved, edit_seconds = None, 0.0
            else:
                load_adapter_weights(self.model, self.run_dir / TEACHER)
                edits = edit_clips(clips, self.scorer, self.config)
                edit_seconds = time.perf_counter() - started
                clips = [edit.clip for edit in edits]
                moved = sum(edit.moved for edit in edits)
                self._write_round(round_number, clips, [edit.score for edit in edits])
                written[round_number] = read_clip_rounds(self.run_dir / CLIPS_FILE)[round_number]
            student_start = START if self.config.student == "restart" else f"{previous_stage}/adapter"
            epochs = self.config.epochs_per_round or self.train_config.epochs
            metrics = self.train_stage(stage, clips, epochs, self.run_dir / student_start)
            score = self._score(metrics)
            improved = score > state["teacher"]["score"]
            if improved:
                self.model.save_adapter(self.run_dir / TEACHER, self.recipe, metrics)
                state["teacher"] = {"stage": stage, "score": score}
            state["rounds"].append({"round": round_number, "metrics": metrics, "score": score,
                                    "teacher_updated": improved, "moved": moved, "mean_iou": mean_iou(clips),
                                    "edit_seconds": edit_seconds, "seconds": time.perf_counter() - started})
            print(f"round {round_number}: {moved if moved is not None else 'the written'} clips moved, "
                  f"{self.config.metric} {score:.2f} ({'teacher updated' if improved else 'no improvement'}), "
                  f"mean IoU with the ground truth {_format(mean_iou(clips))}")
            recent = state["rounds"][-self.config.patience:]
            if len(recent) == self.config.patience and not any(entry["teacher_updated"] for entry in recent):
                state["stopped"] = f"no improvement in {self.config.patience} round(s)"
            self._save_state(state)
            previous_stage = stage
        self._save_state(state)
        timeline = write_timeline(read_clip_rounds(self.run_dir / CLIPS_FILE), self.run_dir / TIMELINE,
                                  self.config.timeline_videos)
        print(f"editing stopped: {state['stopped']}; teacher from {state['teacher']['stage']} "
              f"({self.config.metric} {state['teacher']['score']:.2f}) in {self.run_dir / TEACHER}; timeline "
              f"{timeline}")
        return {**state, "adapter": str(self.run_dir / TEACHER), "timeline": str(timeline),
                "clips": str(self.run_dir / CLIPS_FILE)}


def _format(value: float | None) -> str:
    return "unknown (no ground truth)" if value is None else f"{value:.3f}"


def run_editing(recipe: dict, output_dir: str | Path | None = None, resume: bool = True,
                device: torch.device | str | None = None) -> dict:
    """Train ``recipe`` (with an ``[editing]`` table) from timestamps with clip editing; returns the editing state
    plus the paths of the teacher adapter, the timeline and the clips."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return EditingRun(recipe, output_dir, device).run(resume)
