"""The ``petvr`` command: pretrain, train, eval, compare, demo, cache, data preview, methods, recipes.

Bad input never ends in a traceback: ``main`` prints ``petvr: error: <message>`` (the message names the file, the
table and the key) and exits with status 1; ``petvr --debug ...`` shows the traceback too. Ctrl-C says how to resume.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# petvr.convert.OFFICIAL_METHODS, listed here so that building the parser does not import torch (a test keeps them equal)
CONVERTIBLE = ("clip4clip", "cross_modal_adapter", "mv_adapter", "unipt", "dgl")

# Bad input, as petvr raises it: ValueError (DataError, CheckpointError, RecipeError, bad JSON), OSError (a missing
# or unreadable file), FloatingPointError (a run stopped on a non-finite loss). Anything else is a bug: traceback.
USER_ERRORS = (ValueError, OSError, FloatingPointError)
INTERRUPTED = 130  # the shell's status for Ctrl-C


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from .synthetic.pretrain import ASSETS, PretrainConfig, pretrain

    config = PretrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed, lr=args.lr,
                            threads=args.threads)
    record = pretrain(config, args.output or ASSETS, command=" ".join(["petvr", *sys.argv[1:]]))
    print(json.dumps(record["metrics"], indent=2))


def _cmd_train(args: argparse.Namespace) -> None:
    from .training.recipe import load_recipe
    from .training.run import run_recipe

    recipe = load_recipe(args.recipe, args.set)
    if "editing" in recipe:  # timestamp supervision with clip editing (petvr.editing): its own stages and run folder
        from .editing import run_editing

        result = run_editing(recipe, args.output_dir, resume=not args.no_resume)
        print(f"teacher adapter written to {result['adapter']}; clips per round in {result['clips']}")
        return
    result = run_recipe(recipe, args.output_dir, resume=not args.no_resume)
    print(f"adapter written to {result['adapter']}")


def _cmd_eval(args: argparse.Namespace) -> None:
    from .evaluation.metrics import format_metrics_table
    from .methods import RetrievalModel
    from .training.recipe import apply_override, load_recipe, validate_recipe
    from .training.run import make_evaluator

    backbone = None
    if args.backbone_checkpoint:  # the recorded checkpoint has moved: load this one (its weight hash is checked)
        from .adapters import read_adapter_description, resolve_adapter_folder
        from .backbone.checkpoints import load_backbone

        recorded = read_adapter_description(resolve_adapter_folder(Path(args.checkpoint)))["backbone"]
        backbone = load_backbone(recorded.get("name"), args.backbone_checkpoint)
    model = RetrievalModel.from_adapter(args.checkpoint, backbone=backbone, device=args.device)
    description = model.adapter_description
    recipe = load_recipe(args.recipe, args.set) if args.recipe else description.get("recipe") or {}
    if not args.recipe:
        if "data" not in recipe:
            raise ValueError(f"{args.checkpoint}: the adapter records no recipe; pass --recipe RECIPE to say what to "
                             "evaluate on")
        for assignment in args.set:
            apply_override(recipe, assignment)
        validate_recipe(recipe, f"{args.checkpoint} (the recipe in its adapter.json)")
    metrics = make_evaluator(recipe, model, args.device)(model)
    print(format_metrics_table(metrics))
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2))


def _cmd_compare(args: argparse.Namespace) -> None:
    from .compare import compare, markdown_table, write_results

    extra_splits = {}
    for assignment in args.split:
        name, _, table = assignment.partition("=")
        try:
            extra_splits[name] = json.loads(table)
        except json.JSONDecodeError as error:
            raise ValueError(f"--split {assignment!r}: expected NAME='{{\"annotation_dir\": ...}}' (JSON): {error}")
    rows = compare(args.entries, args.runs_dir, args.set, extra_splits, args.device)
    paths = write_results(rows, args.out, title=args.title)
    print(markdown_table(rows))
    print("written: " + ", ".join(str(path) for path in paths.values()))


def _cmd_demo(args: argparse.Namespace) -> None:
    from .demo import DEFAULT_EPOCHS, run_demo

    run_demo(Path(args.workdir), epochs=DEFAULT_EPOCHS if args.epochs is None else args.epochs)


def _cmd_cache(args: argparse.Namespace) -> None:
    from .backbone import create_backbone
    from .training.recipe import load_recipe, sampling_config
    from .training.run import read_split

    recipe = load_recipe(args.recipe, args.set)
    if not recipe["data"].get("cache_dir"):
        raise ValueError(f"{args.recipe}: [data] has no cache_dir to fill")
    recipe["data"]["num_workers"] = args.workers
    shape_only = create_backbone(recipe["backbone"]["name"], device="meta")  # the frames' size comes from its config
    for which in ("train", "test"):
        if which in recipe["data"]:
            split = read_split(recipe, which, sampling_config(recipe, shape_only, train=False), args.report_dir)
            print(f"{which}: {len(split)} videos cached")


def _cmd_preview(args: argparse.Namespace) -> None:
    from .data.preview import write_contact_sheet
    from .data.video import SamplingConfig

    if args.recipe:  # an annotation row: the recipe's reader finds the file and span, its sampling is used
        from .backbone import create_backbone
        from .training.recipe import load_recipe, sampling_config
        from .training.run import read_split

        recipe = load_recipe(args.recipe, args.set)
        split = read_split(recipe, args.split)
        record = next((video for video in split.videos if video.video_id == args.video), None)
        if record is None:
            raise ValueError(f"{args.recipe}: no video {args.video!r} in the {args.split} split "
                             f"(first ids: {', '.join(v.video_id for v in split.videos[:5])})")
        config = sampling_config(recipe, create_backbone(recipe["backbone"]["name"], device="meta"), train=False)
        path, start, end = record.path, record.start, record.end
    else:
        config = SamplingConfig(max_frames=args.max_frames, feature_framerate=args.fps, subsample=args.subsample,
                                sampler=args.sampler, image_size=args.image_size)
        path, start, end = Path(args.video), args.start, args.end
    out = args.out or Path(path).with_suffix(".preview.png").name
    print(write_contact_sheet(path, config, out, start=start, end=end))


def _cmd_methods(args: argparse.Namespace) -> None:
    from .methods import list_methods, method_options, method_summary

    for name in [args.name] if args.name else list_methods():
        print(f"{name}: {method_summary(name)}")
        for option in method_options(name):
            allowed = f"; allowed: {option.allowed}" if option.allowed else ""
            print(f"  {option.name} ({option.type}, default {option.default!r}): {option.help}{allowed}")


def _cmd_recipes(args: argparse.Namespace) -> None:
    from .training.recipe import list_recipes, shipped_recipes_dir

    print(f"shipped recipes ({shipped_recipes_dir()}):")
    for name in list_recipes():
        print(f"  {name}")


def _cmd_convert(args: argparse.Namespace) -> None:
    from .convert import convert_checkpoint, parse_overrides

    report = convert_checkpoint(args.method, args.checkpoint, args.out_folder, args.backbone, args.backbone_checkpoint,
                                parse_overrides(args.method, args.set))
    backbone = f" + {report['backbone_file']} ({report['backbone_bytes']:,} bytes)" if report["backbone_file"] else ""
    print(f"{args.out_folder}: adapter {report['adapter_bytes']:,} bytes{backbone}; official checkpoint "
          f"{report['official_bytes']:,} bytes")


def _add_search_commands(commands) -> None:
    """``petvr index``, ``petvr search`` and ``petvr serve``: thin layers over ``petvr.search``."""
    index = commands.add_parser("index", help="index a folder of videos for search (resumable, incremental)")
    index.add_argument("folder", help="the folder of videos (searched recursively)")
    index.add_argument("--adapter", default=None, help="adapter folder (default: the bundled default, zero-shot)")
    index.add_argument("--out", default=None, help="the index folder (default: FOLDER/.petvr-index)")
    index.add_argument("--segment-seconds", type=float, default=30.0,
                       help="videos longer than this are embedded in windows of at most this length")
    index.add_argument("--batch-videos", type=int, default=8, help="videos per committed batch")
    index.add_argument("--workers", type=int, default=1, help="decoding processes")
    index.add_argument("--index-kind", default="auto", choices=("auto", "flat", "pq4", "sq8", "hnsw"),
                       help="faiss index; auto: flat up to 200,000 vectors, pq4 above (docs/search.md)")
    index.add_argument("--frame-cache", default=None, metavar="DIR",
                       help="keep decoded frames here, so re-indexing with another adapter decodes nothing")
    index.add_argument("--device", default="cuda" if _cuda() else "cpu", help="default: cuda when available")
    index.set_defaults(run=_cmd_index)

    search = commands.add_parser("search", help="search an index by text, image or video clip")
    search.add_argument("index", help="an index folder (made by petvr index)")
    search.add_argument("query", nargs="?", help="the text query (or an image / video file)")
    search.add_argument("-k", type=int, default=10, help="how many videos to list")
    search.add_argument("--image", help="query by this image")
    search.add_argument("--clip", help="query by this short video clip")
    search.add_argument("--adapter", default=None, help="the adapter (default: the one recorded in the index)")
    search.add_argument("--json", action="store_true", help="print the result as JSON")
    search.set_defaults(run=_cmd_search)

    serve = commands.add_parser("serve", help="serve indexes over HTTP with a web page (FastAPI)")
    serve.add_argument("indexes", nargs="+", metavar="INDEX", help="index folders, each with its own adapter")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_cmd_serve)


def _cmd_index(args: argparse.Namespace) -> None:
    from .search import Retriever
    from .search.indexer import build_index

    retriever = Retriever.from_adapter(args.adapter, device=args.device, frame_cache=args.frame_cache)
    report = build_index(retriever, args.folder, args.out, segment_seconds=args.segment_seconds,
                         batch_videos=args.batch_videos, workers=args.workers, vector_kind=args.index_kind)
    from .training.distributed import destroy_distributed, is_main_process

    if is_main_process():
        print(report.summary())
    destroy_distributed()


def _cmd_search(args: argparse.Namespace) -> None:
    from .search.collection import open_collection

    collection = open_collection(args.index, args.adapter)
    result = collection.search(args.query, args.k, image=args.image, video=args.clip)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    if result.note:
        print(f"note: {result.note}", file=sys.stderr)
    for hit in result:
        print(f"{hit.rank:>3}. {hit.score:7.4f}  {hit.path}  [{_clock(hit.start)}-{_clock(hit.end)}] "
              f"best at {_clock(hit.time)}")


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes)}:{seconds:04.1f}"


def _cmd_serve(args: argparse.Namespace) -> None:
    from .search.server import serve

    serve(args.indexes, host=args.host, port=args.port)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petvr", description="Parameter-efficient text-video retrieval on CLIP.")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback too")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_search_commands(commands)

    pretrain = commands.add_parser("pretrain", help="pretrain the small embedded CLIP on synthetic image-captions")
    pretrain.add_argument("--steps", type=int, default=2500)
    pretrain.add_argument("--batch-size", type=int, default=128)
    pretrain.add_argument("--lr", type=float, default=5e-4)
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--threads", type=int, default=2)
    pretrain.add_argument("--output", help="folder for the weights (default: the package's assets)")
    pretrain.set_defaults(run=_cmd_pretrain)

    train = commands.add_parser("train", help="train a recipe (TOML)")
    train.add_argument("recipe", help="a TOML file, or a shipped recipe's name such as msrvtt/clip4clip")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. train.lr=1e-5")
    train.add_argument("--output-dir")
    train.add_argument("--no-resume", action="store_true", help="start over even if the output dir has a checkpoint")
    train.set_defaults(run=_cmd_train)

    evaluate = commands.add_parser("eval", help="evaluate an adapter folder")
    evaluate.add_argument("checkpoint", help="an adapter folder (adapter.safetensors + adapter.json)")
    evaluate.add_argument("--recipe", help="evaluate on this recipe's test split (default: the adapter's own)")
    evaluate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                          help="override a key of that recipe, e.g. data.batch_size_val=32")
    evaluate.add_argument("--json", help="also write the metrics to this JSON file")
    evaluate.add_argument("--backbone-checkpoint", metavar="PATH",
                          help="the backbone's checkpoint, when the one recorded in adapter.json has moved")
    evaluate.add_argument("--device", default="cuda" if _cuda() else "cpu", help="default: cuda when available")
    evaluate.set_defaults(run=_cmd_eval)

    comparison = commands.add_parser(
        "compare", help="train what is not trained yet, evaluate, and write the PETL results table and plot")
    comparison.add_argument("entries", nargs="+", help="recipes (files or shipped names) or run folders")
    comparison.add_argument("--runs-dir", default="runs", help="where recipes are trained (one folder each)")
    comparison.add_argument("--out", default="comparison", help="folder for comparison.md / .csv / .png")
    comparison.add_argument("--set", action="append", default=[], help="override for every recipe: section.key=value")
    comparison.add_argument("--split", action="append", default=[],
                            help="an extra test split: NAME='{JSON [data.test] table}' (e.g. the temporal split)")
    comparison.add_argument("--title", default="", help="the plot's title")
    comparison.add_argument("--device", default="cuda" if _cuda() else "cpu", help="default: cuda when available")
    comparison.set_defaults(run=_cmd_compare)

    demo = commands.add_parser("demo", help="zero-shot vs trained on the synthetic world, end to end")
    demo.add_argument("--workdir", default="demo-run")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's 2)")
    demo.set_defaults(run=_cmd_demo)

    cache = commands.add_parser("cache", help="decode a recipe's videos into its frame cache")
    cache.add_argument("recipe")
    cache.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    cache.add_argument("--workers", type=int, default=2)
    cache.add_argument("--report-dir", default=".", help="where skipped-<split>.jsonl reports go")
    cache.set_defaults(run=_cmd_cache)

    data = commands.add_parser("data", help="data tools").add_subparsers(dest="data_command", required=True)
    preview = data.add_parser("preview", help="PNG contact sheet of the frames the model sees",
                              description="VIDEO is a file, or with --recipe a video id of the recipe's split.")
    preview.add_argument("video")
    preview.add_argument("--recipe", help="read VIDEO as an annotation row (video id) of this recipe's split")
    preview.add_argument("--split", default="test", choices=("train", "test"))
    preview.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    preview.add_argument("--out", help="PNG to write (default: <video name>.preview.png here)")
    preview.add_argument("--max-frames", type=int, default=12)
    preview.add_argument("--fps", type=float, default=1.0)
    preview.add_argument("--subsample", default="uniform", choices=("uniform", "head", "tail"))
    preview.add_argument("--sampler", default="per_second", choices=("per_second", "segment"))
    preview.add_argument("--image-size", type=int, default=224)
    preview.add_argument("--start", type=float)
    preview.add_argument("--end", type=float)
    preview.set_defaults(run=_cmd_preview)

    methods = commands.add_parser("methods", help="list the methods and their options")
    methods.add_argument("name", nargs="?", help="show this method only")
    methods.set_defaults(run=_cmd_methods)

    recipes = commands.add_parser("recipes", help="list the recipes shipped with petvr (petvr train NAME runs one)")
    recipes.set_defaults(run=_cmd_recipes)

    convert = commands.add_parser("convert", help="convert a checkpoint of the official code into an adapter folder")
    convert.add_argument("method", choices=CONVERTIBLE)
    convert.add_argument("checkpoint")
    convert.add_argument("out_folder")
    convert.add_argument("--backbone", default=None, help="the base backbone's model config name")
    convert.add_argument("--backbone-checkpoint", default=None, help="the base backbone's weights")
    convert.add_argument("--set", action="append", default=[], metavar="METHOD.OPTION=VALUE",
                         help="method option the file does not show, e.g. clip4clip.freeze_layer_num=12")
    convert.set_defaults(run=_cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run a command; bad input (a missing file, a malformed annotation, a wrong option) ends with its message and
    status 1, Ctrl-C with how to resume and status 130; ``--debug`` re-raises either with its traceback."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(_interrupted_message(args), file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    except USER_ERRORS as error:
        if args.debug:
            raise
        raise SystemExit(f"petvr: error: {error}") from None


def _interrupted_message(args: argparse.Namespace) -> str:
    if args.command not in ("train", "compare"):
        return "petvr: interrupted"
    return ("petvr: interrupted; run the same command again to resume from the last checkpoint "
            "(add --no-resume to start over)")


if __name__ == "__main__":
    main()
