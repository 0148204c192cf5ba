"""Training from single timestamps with clip editing, on the synthetic long-video world: the numbers and the timeline
of docs/editing.md.

For each method (CLIP4Clip meanP and Houlsby adapters, the best adapter method of docs/results.md when this was written;
DGL, now ahead, embeds each video whole, so its teacher would score every candidate clip separately), three trainings
with the same total number of epochs, each from the recipe's starting weights:

- initial: the initial clips (midpoint rule) for warm-up + rounds epochs;
- edited: warm-up on the initial clips, then the editing rounds (the teacher edits, the student trains one epoch per
  round); the recipe's early stop is turned off (patience = rounds) so every row trains the same number of epochs;
- ground truth: each caption's annotated span, the upper bound.

Reported: text-to-clip R@1/5/10 on the world's val split (each caption against every val clip) after the last epoch
(and, for editing, of the teacher, the best validated stage), the mean IoU of the initial and the final edited clips
with the ground truth, and the cost of editing (the teacher's scoring passes, and whole rounds) as time relative to
the warm-up.

    python benchmarks/editing.py --workdir /tmp/petvr-editing            # writes docs/editing.md's results section
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from report import with_section

from petvr.editing import EditingRun, initial_clips, mean_iou
from petvr.synthetic.editing_world import EDITING_WORLD_SIZES, generate_editing_world
from petvr.training.recipe import load_recipe

RECIPES = {"clip4clip_meanP": "editing/clip4clip_meanP", "adapter": "editing/adapter"}
LEARNING_RATES = {"clip4clip_meanP": 5e-3, "adapter": 1e-3}  # meanP trains only the projections: a larger step
RESULTS_PAGE_HEADING = """## Training from single timestamps: clip editing

From `benchmarks/editing.py` (its own run; `docs/editing.md` says what the method is and which parts are the paper's).

"""


def condition(recipe: dict, run_dir: Path, which: str, epochs: int) -> dict:
    """Train on the initial clips or the ground-truth spans for ``epochs`` from the recipe's starting weights."""
    run = EditingRun(recipe, run_dir, progress=False)
    run.prepare()
    clips = initial_clips(run.videos, run.config)
    if which == "ground truth":
        clips = [replace(clip, start=clip.reference[0], end=clip.reference[1]) for clip in clips]
    started = time.perf_counter()
    metrics = run.train_stage(which.replace(" ", "-"), clips, epochs, None)
    return {"metrics": metrics, "mean_iou": mean_iou(clips), "seconds": time.perf_counter() - started}


def recall(metrics: dict) -> str:
    return " | ".join(f"{metrics['t2v'][key]:.1f}" for key in ("R@1", "R@5", "R@10", "MdR"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="bench-editing")
    parser.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeline-videos", type=int, default=3)
    parser.add_argument("--max-frames", type=int, default=4, help="frames per clip (the recipes say 6)")
    parser.add_argument("--batch-size", type=int, default=16, help="the recipes say 32; smaller: more steps")
    parser.add_argument("--world-size", default="medium", choices=sorted(EDITING_WORLD_SIZES),
                        help="the long-video world (medium: 96 training and 96 validation videos)")
    parser.add_argument("--out", default="docs", help="where editing.md (its results section), editing.json and "
                                                      "editing_timeline.png go")
    parser.add_argument("--report-only", action="store_true",
                        help="write the results section from the run folders already in --workdir (what finished)")
    args = parser.parse_args()
    workdir, out = Path(args.workdir), Path(args.out)
    started = time.perf_counter()
    folder = generate_editing_world(workdir / "world", size=args.world_size)
    total_epochs = args.warmup_epochs + args.rounds
    for label in [] if args.report_only else args.methods:
        overrides = [f'data.root="{folder}"', f'data.cache_dir="{workdir / "cache"}"',
                     f"train.epochs={args.warmup_epochs}", f"editing.rounds={args.rounds}",
                     f"editing.patience={args.rounds}", f"editing.timeline_videos={args.timeline_videos}",
                     f"data.sampling.max_frames={args.max_frames}", f"train.batch_size={args.batch_size}",
                     f"train.lr={LEARNING_RATES[label]}"]
        recipe = load_recipe(RECIPES[label], overrides)
        runs = workdir / "runs" / label
        shutil.rmtree(runs, ignore_errors=True)
        EditingRun(recipe, runs / "edited", progress=False).run(resume=False)
        for which in ("initial", "ground truth"):
            row = condition(recipe, runs / which.replace(" ", "-"), which, total_epochs)
            print(f"{label}, {which}: t2v R@1/5/10 {recall(row['metrics'])}")
    results = {label: collected(workdir / "runs" / label, total_epochs) for label in args.methods}
    results = {label: rows for label, rows in results.items() if rows}
    for label, rows in results.items():
        shutil.copyfile(rows["edited"]["timeline"], out / f"editing_timeline_{label}.png")
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


def collected(runs: Path, epochs: int) -> dict:
    """What finished in a method's run folders: the editing state, and the last evaluation of the initial and
    ground-truth trainings when they reached ``epochs``."""
    state_file = runs / "edited" / "editing.json"
    if not state_file.is_file() or json.loads(state_file.read_text()).get("stopped") is None:
        return {}
    edited = json.loads(state_file.read_text())
    edited["timeline"] = str(runs / "edited" / "timeline.png")
    rows = {"edited": edited}
    for which in ("initial", "ground truth"):
        stage = which.replace(" ", "-")
        log = runs / stage / stage / "metrics.jsonl"
        evaluations = [json.loads(line) for line in log.read_text().splitlines() if '"eval"' in line] \
            if log.is_file() else []
        if evaluations and evaluations[-1]["epoch"] == epochs:
            rows[which] = {"metrics": evaluations[-1]["eval"],
                           "mean_iou": edited["warmup"]["mean_iou"] if which == "initial" else 1.0}
    return rows


def report(results: dict, args, elapsed: float, folder: Path) -> str:
    world = EDITING_WORLD_SIZES[args.world_size]
    queries = next((rows["edited"]["warmup"]["metrics"]["t2v"].get("queries", "?") for rows in results.values()), "?")
    origin = ("`python benchmarks/editing.py --report-only` from one run's folders" if args.report_only
              else f"`python benchmarks/editing.py` in one run ({elapsed / 60:.1f} min on 2 CPU cores)")
    lines = [f"Written by {origin}; "
             f"do not edit by hand. World: the synthetic long-video world, size {args.world_size} "
             f"(`{folder.parent.name}/{folder.name}`: {world.train} training videos, {world.val} val videos, "
             f"{queries} val queries); text-to-clip R@K in percent "
             f"on its val clips. Every row trains {args.warmup_epochs + args.rounds} epochs; editing = "
             f"{args.warmup_epochs} warm-up epochs + {args.rounds} rounds of 1 epoch; {args.max_frames} frames per clip, "
             f"batch {args.batch_size}, lr " + ", ".join(f"{LEARNING_RATES[label]:g} ({label})" for label in results)
             + ". MdR: median rank of the right clip.", "",
             "| method | clips trained on | t2v R@1 | t2v R@5 | t2v R@10 | t2v MdR | mean IoU with ground truth |",
             "|---|---|---|---|---|---|---|"]
    for label, rows in results.items():
        edited = rows["edited"]
        last = edited["rounds"][-1]
        teacher = edited["teacher"]
        teacher_metrics = (edited["warmup"]["metrics"] if teacher["stage"] == "warmup"
                           else next(r["metrics"] for r in edited["rounds"] if f"round-{r['round']:02d}" == teacher["stage"]))
        missing = "not finished | | | |"
        initial = rows.get("initial")
        truth = rows.get("ground truth")
        lines += [f"| {label} | initial (midpoint), warm-up only ({args.warmup_epochs} epochs) | "
                  f"{recall(edited['warmup']['metrics'])} | {edited['warmup']['mean_iou']:.3f} |",
                  f"| {label} | initial (midpoint) | {recall(initial['metrics']) if initial else missing} | "
                  f"{edited['warmup']['mean_iou']:.3f} |",
                  f"| {label} | edited, last round | {recall(last['metrics'])} | {last['mean_iou']:.3f} |",
                  f"| {label} | edited, teacher ({teacher['stage']}) | {recall(teacher_metrics)} | |",
                  f"| {label} | ground truth (upper bound) | {recall(truth['metrics']) if truth else missing} | 1.000 |"]
    lines += ["", "Per round (validation t2v R@1, whether the teacher took the student's weights, clips moved, "
              "mean IoU of the round's clips) and the cost of editing:", ""]
    for label, rows in results.items():
        edited = rows["edited"]
        warmup = edited["warmup"]["seconds"]
        scoring = sum(entry["edit_seconds"] for entry in edited["rounds"])
        rounds = sum(entry["seconds"] for entry in edited["rounds"])
        steps = ", ".join(f"round {entry['round']}: R@1 {entry['score']:.1f}"
                          f"{' (teacher updated)' if entry['teacher_updated'] else ''}, {entry['moved']} moved, "
                          f"IoU {entry['mean_iou']:.3f}" for entry in edited["rounds"])
        lines.append(f"- {label}: warm-up R@1 {edited['warmup']['score']:.1f}, IoU {edited['warmup']['mean_iou']:.3f}; "
                     f"{steps}. Warm-up {warmup:.0f} s ({args.warmup_epochs} epochs); the teacher's scoring passes "
                     f"took {scoring:.0f} s in all ({scoring / warmup:.2f}x the warm-up, {scoring / args.rounds:.0f} s "
                     f"a round); whole rounds (scoring + 1 epoch + validation) {rounds:.0f} s ({rounds / warmup:.2f}x "
                     "the warm-up).")
    lines += [""] + [f"![timeline, {label}](editing_timeline_{label}.png)" for label in results] + [""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
