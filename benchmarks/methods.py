"""Every method on the embedded default, one protocol: the results table and plot of docs/results.md.

``petvr compare`` on the synthetic recipes (``petvr/recipes/synthetic/``), one run: the same world, data, epochs,
batch and seeds for every method, each seed a separate training run; metrics are the mean (and standard deviation)
over seeds of the final weights on the test split and on the temporal split (every video beside its time
reversal). Beside them, time per training step and peak memory of each method as ratios to full fine-tuning,
measured on the same backbone shape, batch and frames in a child process each (``train_step.measure_step``).

    python benchmarks/methods.py --workdir /tmp/petvr-methods            # 3 seeds, 5 epochs, all synthetic recipes
    python benchmarks/methods.py --seeds 0 --epochs 1 --recipes synthetic/zero_shot synthetic/clip4clip_meanP
    python benchmarks/methods.py --device cuda --model ViT-B-32 --precision bf16 --timing-only   # GPU step ratios
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from report import section_of, with_section
from train_step import add_step_arguments, measure_step

from petvr.compare import ComparisonRow, compare, markdown_table, plot_recall_against_parameters
from petvr.synthetic import generate_world
from petvr.training.recipe import list_recipes, load_recipe
from petvr.training.run import build_model

FULL_FINE_TUNING = "synthetic/clip4clip_full"
ORDER = ["synthetic/zero_shot", "synthetic/clip4clip_meanP", FULL_FINE_TUNING, "synthetic/linear_probe",
         "synthetic/bitfit", "synthetic/lora", "synthetic/prompt", "synthetic/adapter", "synthetic/adaptformer",
         "synthetic/cross_modal_adapter", "synthetic/mv_adapter", "synthetic/dgl", "synthetic/dgl_linear",
         "synthetic/unipt", "synthetic/rap", "synthetic/rap_light"]
TEMPORAL = {"annotation_dir": "temporal", "video_dir": "temporal/videos", "split": "test"}
COLLECTION = "studio"
HEADER = """# Results: every method on the embedded default

Written by `python benchmarks/methods.py` in one run; do not edit by hand. The backbone is `petvr-tiny`, a small
CLIP that petvr pretrained on procedurally generated image-captions (a stand-in: no real CLIP weights or benchmark
videos can be downloaded where petvr is built), and the data is the synthetic world. The numbers show how the methods
compare under one protocol on this stand-in, not what they reach on MSR-VTT with OpenAI's CLIP; `petvr compare`
produces the same table for real recipes.

Protocol: the same world, data, epochs, batch and seeds for every method; each method's own recipe
(`petvr/recipes/synthetic/`) sets its learning rate and options. Metrics are the mean over seeds of the final weights
(no epoch chosen on the test split): text-to-video (t2v) and video-to-text (v2t) R@K in percent, MdR, on the test
split and on the temporal split, where every video is beside its own time reversal (frame averaging is near chance
there). `std` columns are the standard deviation of t2v R@1 across seeds. Time per training step and peak memory are
ratios to full fine-tuning (CLIP4Clip with every block trained) on the same batch.

"""


def default_recipes() -> list[str]:
    """Every shipped synthetic recipe, in ``ORDER`` first, then any others by name."""
    shipped = [name for name in list_recipes() if name.startswith("synthetic/")]
    return [name for name in ORDER if name in shipped] + sorted(set(shipped) - set(ORDER))


def mean_over_seeds(runs: list[ComparisonRow]) -> ComparisonRow:
    """One row: each metric's mean over the seeds' runs, with the standard deviation of R@1 as extra columns."""
    first = runs[0]
    metrics = {}
    for split, reference in first.metrics.items():
        metrics[split] = {direction: {key: statistics.fmean(run.metrics[split][direction][key] for run in runs)
                                      for key in reference[direction]} for direction in ("t2v", "v2t")}
    extra = {}
    if len(runs) > 1:
        for split in first.metrics:
            extra[f"{split} t2v R@1 std"] = statistics.stdev(run.metrics[split]["t2v"]["R@1"] for run in runs)
    return ComparisonRow(first.label, first.method, first.parameters, metrics, first.run_dir, extra)


def separation(rows: list[ComparisonRow], seeds: int, split: str = "test") -> str:
    """Does the world separate the methods? Two rows differ when their mean t2v R@1 differ by more than twice the
    standard error of the difference over seeds (sqrt(std_a^2 / n + std_b^2 / n)). Returns a Markdown paragraph."""
    if seeds < 2:
        return "One seed: no spread to judge separation by.\n"
    trained = [row for row in rows if row.parameters["trainable"] > 0]
    recall = {row.label: row.metrics[split]["t2v"]["R@1"] for row in trained}
    spread = {row.label: row.extra[f"{split} t2v R@1 std"] for row in trained}

    def differ(a: str, b: str) -> bool:
        return abs(recall[a] - recall[b]) > 2 * ((spread[a] ** 2 + spread[b] ** 2) / seeds) ** 0.5

    pairs = [(a, b) for i, a in enumerate(recall) for b in list(recall)[i + 1:]]
    separated = sum(differ(a, b) for a, b in pairs)
    full = FULL_FINE_TUNING.removeprefix("synthetic/")
    above = [label for label in recall if label != full and recall[label] > recall[full] and differ(label, full)]
    tied = [label for label in recall if label != full and not differ(label, full)]
    below = [label for label in recall if label not in above + tied + [full]]
    return (f"Separation ({split} t2v R@1, {seeds} seeds; two methods differ when their means are more than two "
            f"standard errors apart): {separated} of {len(pairs)} pairs of trained methods differ. Against full "
            f"fine-tuning ({recall[full]:.1f}): above it {', '.join(above) or 'none'}; tied with it "
            f"{', '.join(tied) or 'none'}; below it {', '.join(below) or 'none'}.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="bench-methods")
    parser.add_argument("--recipes", nargs="+", default=None, help="default: every synthetic recipe")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default="docs", help="where results.md / results.png / results.json go")
    parser.add_argument("--timing-only", action="store_true", help="only the time and memory ratios")
    add_step_arguments(parser, model="petvr-tiny", batch=16, frames=8)  # the demo recipe's frames
    args = parser.parse_args()
    recipes = args.recipes or default_recipes()
    if FULL_FINE_TUNING not in recipes:
        recipes.append(FULL_FINE_TUNING)  # the reference of the ratios
    workdir = Path(args.workdir)
    started = time.time()

    timings = {}
    for name in recipes:
        recipe = load_recipe(name)
        if build_model(recipe, shape_only=True).parameter_report()["trainable"] == 0:
            continue  # nothing to train, no training step to time
        method = dict(recipe["method"])
        timings[name] = measure_step(args, method.pop("name"), method)
        print(f"{name}: {timings[name]['seconds_per_step']:.3f} s/step, peak {timings[name]['peak_mb']:.0f} MB")
    full = timings[FULL_FINE_TUNING]
    if args.timing_only:
        for name, timing in timings.items():
            print(f"{name:<36} time {timing['seconds_per_step'] / full['seconds_per_step']:5.2f}x  "
                  f"peak memory {timing['peak_mb'] / full['peak_mb']:5.2f}x of full fine-tuning")
        return

    world = generate_world(workdir / "world", size="small")
    per_seed = []
    for seed in args.seeds:
        overrides = [f"data.root=\"{world.root / COLLECTION}\"", f"data.cache_dir=\"{workdir / 'cache'}\"",
                     f"train.seed={seed}", f"train.epochs={args.epochs}"]
        per_seed.append(compare(recipes, workdir / f"runs-seed{seed}", overrides, {"temporal": TEMPORAL}))
    rows = []
    for index, name in enumerate(recipes):
        row = mean_over_seeds([seed_rows[index] for seed_rows in per_seed])
        row.label = name.removeprefix("synthetic/")
        if name in timings:
            row.extra["time/step vs full"] = timings[name]["seconds_per_step"] / full["seconds_per_step"]
            row.extra["peak memory vs full"] = timings[name]["peak_mb"] / full["peak_mb"]
        rows.append(row)

    out = Path(args.out)
    plot = plot_recall_against_parameters(rows, out / "results.png", title=(
        f"embedded default (petvr-tiny), synthetic '{COLLECTION}' test split, mean of {len(args.seeds)} seed(s)"))
    setup = (f"{len(args.seeds)} seed(s) ({', '.join(map(str, args.seeds))}), {args.epochs} epochs each, the synthetic "
             f"'{COLLECTION}' collection (small world); time and memory: {args.model} shape, batch {args.batch} x "
             f"{args.frames} frames, {args.words} words, {args.device} {args.precision}, median of {args.steps} steps; "
             f"{time.time() - started:.0f} s in all")
    (out / "results.json").write_text(json.dumps({"setup": setup, "rows": [row.__dict__ for row in rows]}, indent=2))
    findings = "\n".join(separation(rows, len(args.seeds), split) for split in ("test", "temporal"))
    page = (HEADER + markdown_table(rows) + f"\nSetup: {setup}.\n\n{findings}\n"
            f"![t2v R@1 against trainable parameters]({plot.name})\n")
    previous = (out / "results.md").read_text() if (out / "results.md").is_file() else ""
    editing = section_of(previous, "editing")  # benchmarks/editing.py's part of the page: kept
    (out / "results.md").write_text(page if editing is None else with_section(page, "editing", editing))
    print(setup)
    print(markdown_table(rows))
    print(f"plot: {plot}")


if __name__ == "__main__":
    main()
