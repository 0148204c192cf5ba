"""Training from single timestamps with clip editing, on the synthetic long-video world: the numbers and the timeline
of docs/editing.md.

For each method (CLIP4Clip meanP and Houlsby adapters, the best adapter method of docs/results.md; DGL, ahead of
both, embeds each video whole, so its teacher would score every candidate clip separately) and each training seed,
students that all train the warm-up's number of epochs from the recipe's starting weights (the editing default
``student = "restart"``), so that only the clips differ:

- initial: the warm-up, on the initial clips (midpoint rule);
- edited: each editing round's student, on that round's clips (the teacher edits, then a new student trains); the
  early stop is turned off (patience = rounds) so every seed runs every round;
- ground truth: each caption's annotated span, the upper bound.

Reported: text-to-clip R@1/5/10 on the world's val split (each caption against every val clip) after the last epoch
(for editing, of the last round's student and of the teacher, the best validated stage), the mean IoU of the initial
and the final edited clips with the ground truth, and the cost of editing (the teacher's scoring passes, and whole
rounds) as time relative to the warm-up.

    python benchmarks/editing.py --workdir /tmp/petvr-editing            # writes docs/editing.md's results section
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

from report import with_section

from petvr.editing import EditingRun, initial_clips
from petvr.synthetic.editing_world import EDITING_WORLD_SIZES, generate_editing_world
from petvr.training.recipe import load_recipe

RECIPES = {"clip4clip_meanP": "editing/clip4clip_meanP", "adapter": "editing/adapter"}
LEARNING_RATES = {"clip4clip_meanP": 5e-3, "adapter": 1e-3}  # meanP trains only the projections: a larger step
RESULTS_PAGE_HEADING = """## Training from single timestamps: clip editing

From `benchmarks/editing.py` (its own run; `docs/editing.md` says what the method is, which parts are the paper's,
and what the numbers show).

"""


def train_on_ground_truth(recipe: dict, run_dir: Path, epochs: int) -> dict:
    """Train on each caption's annotated span for ``epochs`` from the recipe's starting weights (in
    ``run_dir/ground-truth``); the last epoch's metrics. The initial clips need no run of their own: the warm-up is
    that training."""
    run = EditingRun(recipe, run_dir, progress=False)
    run.prepare()
    clips = [replace(clip, start=clip.reference[0], end=clip.reference[1])
             for clip in initial_clips(run.videos, run.config)]
    return run.train_stage("ground-truth", clips, epochs, None)


RECALL_KEYS = ("R@1", "R@5", "R@10", "MdR")


def recall(metrics: dict) -> str:
    return " | ".join(f"{metrics['t2v'][key]:.1f}" for key in RECALL_KEYS)


def spread(values: list[float]) -> str:
    """Mean, and ± the standard deviation across seeds when there are several."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def recall_over_seeds(metrics: list[dict]) -> str:
    return " | ".join(spread([m["t2v"][key] for m in metrics]) for key in RECALL_KEYS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="bench-editing")
    parser.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeline-videos", type=int, default=3)
    parser.add_argument("--max-frames", type=int, default=4, help="frames per clip (the recipes say 6)")
    parser.add_argument("--batch-size", type=int, default=16, help="the recipes say 32; smaller: more steps")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per method (the clicks stay the same)")
    parser.add_argument("--first-teachers", nargs="+", default=["warmup", "start"], choices=["warmup", "start"],
                        help="who edits first: the warmed-up model (the paper's order) and/or the starting weights")
    parser.add_argument("--keep-finished", action="store_true",
                        help="reuse the runs in --workdir that finished (same settings assumed) instead of redoing "
                             "them")
    parser.add_argument("--world-size", default="medium", choices=sorted(EDITING_WORLD_SIZES),
                        help="the long-video world (medium: 400 training and 100 validation videos)")
    parser.add_argument("--out", default="docs", help="where editing.md (its results section), editing.json and "
                                                      "editing_timeline_*.png go")
    parser.add_argument("--report-only", action="store_true",
                        help="write the results section from the run folders already in --workdir (what finished)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    workdir, out = Path(args.workdir), Path(args.out)
    started = time.perf_counter()
    folder = generate_editing_world(workdir / "world", size=args.world_size)
    for label in [] if args.report_only else args.methods:
        for seed in range(args.seeds):
            overrides = [f'data.root="{folder}"', f'data.cache_dir="{workdir / "cache"}"',
                         f"train.epochs={args.warmup_epochs}", f"editing.rounds={args.rounds}",
                         f"editing.patience={args.rounds}", f"editing.timeline_videos={args.timeline_videos}",
                         f"data.sampling.max_frames={args.max_frames}", f"train.batch_size={args.batch_size}",
                         f"train.lr={LEARNING_RATES[label]}", f"train.seed={seed}", 'editing.student="restart"']
            runs = workdir / "runs" / label / f"seed-{seed}"
            for teacher in args.first_teachers:
                if args.keep_finished and finished_editing(runs / f"edited-{teacher}") is not None:
                    continue
                recipe = load_recipe(RECIPES[label], [*overrides, f'editing.first_teacher="{teacher}"'])
                EditingRun(recipe, runs / f"edited-{teacher}", progress=False).run(resume=False)
            if args.keep_finished and last_evaluation(runs, args.warmup_epochs) is not None:
                continue
            shutil.rmtree(runs / "ground-truth", ignore_errors=True)
            metrics = train_on_ground_truth(load_recipe(RECIPES[label], overrides), runs / "ground-truth",
                                            args.warmup_epochs)
            print(f"{label}, seed {seed}, ground truth: t2v R@1/5/10/MdR {recall(metrics)}")
    results = {label: [rows for seed in range(args.seeds)
                       if (rows := collected(workdir / "runs" / label / f"seed-{seed}", args))]
               for label in args.methods}
    results = {label: seeds for label, seeds in results.items() if seeds}
    for label, seeds in results.items():
        for teacher, edited in seeds[0]["edited"].items():
            shutil.copyfile(edited["timeline"], out / f"editing_timeline_{label}_{teacher}.png")
    elapsed = time.perf_counter() - started
    (out / "editing.json").write_text(json.dumps({"results": results, "seconds": elapsed, "warmup_epochs":
                                                  args.warmup_epochs, "rounds": args.rounds}, indent=1, default=str))
    section = report(results, args, elapsed, folder)
    print(section)
    for document, name, text in ((out / "editing.md", "results", section),
                                 (out / "results.md", "editing", RESULTS_PAGE_HEADING + section)):
        document.write_text(with_section(document.read_text() if document.is_file() else "", name, text))
    print(f"written: {out / 'editing.md'}, {out / 'results.md'} (its editing part), {out / 'editing.json'}, "
          f"{out}/editing_timeline_*.png")


def finished_editing(folder: Path) -> dict | None:
    """An editing run's state when it finished, else None."""
    state_file = folder / "editing.json"
    if not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    return state if state.get("stopped") is not None else None


def last_evaluation(runs: Path, epochs: int) -> dict | None:
    """The ground-truth training's last evaluation when it reached ``epochs``, else None."""
    log = runs / "ground-truth" / "ground-truth" / "metrics.jsonl"
    evaluations = [json.loads(line) for line in log.read_text().splitlines() if '"eval"' in line] \
        if log.is_file() else []
    return evaluations[-1]["eval"] if evaluations and evaluations[-1]["epoch"] == epochs else None


def collected(runs: Path, args) -> dict:
    """What finished in one seed's run folders: each first teacher's editing state (every warm-up is the same
    training on the initial clips), and the ground-truth training's last evaluation."""
    edited = {}
    for teacher in args.first_teachers:
        state = finished_editing(runs / f"edited-{teacher}")
        if state is not None:
            edited[teacher] = {**state, "timeline": str(runs / f"edited-{teacher}" / "timeline.png")}
    if not edited:
        return {}
    warmup = next(iter(edited.values()))["warmup"]
    rows = {"seed": int(runs.name.split("-")[-1]), "edited": edited,
            "initial": {"metrics": warmup["metrics"], "mean_iou": warmup["mean_iou"]}}
    truth = last_evaluation(runs, args.warmup_epochs)
    if truth is not None:
        rows["ground truth"] = {"metrics": truth, "mean_iou": 1.0}
    return rows


def teacher_metrics(edited: dict) -> dict:
    """The validation metrics of the stage the teacher's weights came from."""
    stage = edited["teacher"]["stage"]
    if stage in ("warmup", "start"):
        return edited[stage]["metrics"]
    return next(r["metrics"] for r in edited["rounds"] if f"round-{r['round']:02d}" == stage)


FIRST_TEACHER_NAMES = {"warmup": "the warm-up (the paper's order)", "start": "the starting weights (ours)"}


def report(results: dict, args, elapsed: float, folder: Path) -> str:
    world = EDITING_WORLD_SIZES[args.world_size]
    queries = next((seeds[0]["initial"]["metrics"]["t2v"].get("queries", "?") for seeds in results.values()), "?")
    counts = sorted({len(seeds) for seeds in results.values()})
    metric = " / ".join(sorted({edited["editing"]["metric"] for seeds in results.values() for rows in seeds
                                for edited in rows["edited"].values()}))
    origin = ("`python benchmarks/editing.py --report-only` from the run folders of its workdir" if args.report_only
              else f"`python benchmarks/editing.py` in one run ({elapsed / 60:.1f} min on 2 CPU cores)")
    if args.keep_finished and not args.report_only:
        origin += " (runs finished by an earlier invocation with the same settings reused)"
    lines = [f"Written by {origin}; "
             f"do not edit by hand. World: the synthetic long-video world, size {args.world_size} "
             f"(`{folder.parent.name}/{folder.name}`: {world.train} training videos, {world.val} val videos, "
             f"{queries} val queries); text-to-clip R@K in percent on its val clips, mean ± standard deviation over "
             f"{' or '.join(map(str, counts))} training seeds (the same clicks). Every student trains "
             f"{args.warmup_epochs} epochs from the recipe's starting weights; editing runs {args.rounds} rounds after "
             f"the warm-up, with the first teacher either the warm-up or the starting weights; "
             f"{args.max_frames} frames per clip, batch {args.batch_size}, lr "
             + ", ".join(f"{LEARNING_RATES[label]:g} ({label})" for label in results)
             + ". MdR: median rank of the right clip. A teacher row is the stage with the best validation "
               f"{metric}, chosen on these same val clips (so it is optimistic).", "",
             "| method | clips trained on | t2v R@1 | t2v R@5 | t2v R@10 | t2v MdR | mean IoU with ground truth "
             "|", "|---|---|---|---|---|---|---|"]
    for label, seeds in results.items():
        initial = [rows["initial"]["metrics"] for rows in seeds]
        truth = [rows["ground truth"]["metrics"] for rows in seeds if "ground truth" in rows]
        lines.append(f"| {label} | initial (midpoint): the warm-up | {recall_over_seeds(initial)} | "
                     f"{seeds[0]['initial']['mean_iou']:.3f} |")
        for teacher, name in FIRST_TEACHER_NAMES.items():
            edited = [rows["edited"][teacher] for rows in seeds if teacher in rows["edited"]]
            if not edited:
                continue
            iou = statistics.fmean(e["rounds"][-1]["mean_iou"] for e in edited)
            stages = ", ".join(e["teacher"]["stage"] for e in edited)
            last = recall_over_seeds([e["rounds"][-1]["metrics"] for e in edited])
            lines += [f"| {label} | edited, first teacher {name}: last round's student | {last} | {iou:.3f} |",
                      f"| {label} | edited, first teacher {name}: teacher ({stages}) | "
                      f"{recall_over_seeds([teacher_metrics(e) for e in edited])} | |"]
        lines.append(f"| {label} | ground truth (upper bound) | "
                     f"{recall_over_seeds(truth) + ' | 1.000' if truth else 'not finished | | | |'} |")
    lines += ["", "Per seed and round (the validation metric, whether the teacher took the student's weights, clips "
              "moved, mean IoU of the round's clips) and the cost of editing:", ""]
    for label, seeds in results.items():
        for rows in seeds:
            seed = rows["seed"]
            for teacher, edited in rows["edited"].items():
                warmup, metric = edited["warmup"]["seconds"], edited["editing"]["metric"]
                scoring = sum(entry["edit_seconds"] for entry in edited["rounds"])
                rounds = sum(entry["seconds"] for entry in edited["rounds"])
                first = (f"the starting weights ({metric} {edited['start']['score']:.1f})" if teacher == "start"
                         else "the warm-up")
                steps = ", ".join(f"round {entry['round']}: {entry['score']:.1f}"
                                  f"{' (teacher updated)' if entry['teacher_updated'] else ''}, {entry['moved']} "
                                  f"moved, IoU {entry['mean_iou']:.3f}" for entry in edited["rounds"])
                lines.append(f"- {label}, seed {seed}, first teacher {first}: warm-up {metric} "
                             f"{edited['warmup']['score']:.1f}, IoU {edited['warmup']['mean_iou']:.3f}; {steps}. "
                             f"Warm-up {warmup:.0f} s ({args.warmup_epochs} epochs); the teacher's scoring passes took "
                             f"{scoring:.0f} s in all ({scoring / warmup:.2f}x the warm-up, "
                             f"{scoring / len(edited['rounds']):.0f} s a round); whole rounds (scoring + "
                             f"{args.warmup_epochs} epochs + validation) "
                             f"{rounds:.0f} s ({rounds / warmup:.2f}x the warm-up).")
    lines += ["", "Timelines (the first seed of each method):", ""]
    lines += [f"![timeline, {label}, first teacher: {teacher}](editing_timeline_{label}_{teacher}.png)"
              for label, seeds in results.items() for teacher in seeds[0]["edited"]] + [""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
