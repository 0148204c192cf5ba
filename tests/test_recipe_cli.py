"""Recipes and the `petvr` command end to end on a tiny synthetic world: train, checkpoint, eval, adapter files."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from petvr.backbone import create_backbone
from petvr.backbone.checkpoints import load_backbone
from petvr.cli import main
from petvr.methods import RetrievalModel
from petvr.training.recipe import apply_override, load_recipe, shipped_recipes_dir

RECIPE = shipped_recipes_dir() / "synthetic" / "clip4clip_meanP.toml"


def test_overrides_parse_toml_values_and_create_tables():
    recipe = {"train": {"lr": 1.0}}
    apply_override(recipe, "train.lr=1e-5")
    apply_override(recipe, "method.sim_header=seqTransf")
    apply_override(recipe, "data.sampling.max_frames=4")
    assert recipe == {"train": {"lr": 1e-5}, "method": {"sim_header": "seqTransf"}, "data": {"sampling": {"max_frames": 4}}}
    with pytest.raises(ValueError, match="section.key=value"):
        apply_override(recipe, "train.lr")


def test_bad_recipes_name_the_file(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nlr = 1")
    with pytest.raises(ValueError, match="broken.toml: not valid TOML"):
        load_recipe(broken)
    partial = tmp_path / "partial.toml"
    partial.write_text("[train]\nlr = 1\n")
    with pytest.raises(ValueError, match="partial.toml: the recipe has no \\[backbone\\]"):
        load_recipe(partial)


def test_train_then_eval_from_the_command_line(world_overrides, world, tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["train", str(RECIPE)]
    for assignment in world_overrides(run_dir):
        args += ["--set", assignment]
    main(args)
    adapter = run_dir / "adapter"
    description = json.loads((adapter / "adapter.json").read_text())
    assert description["method"] == "clip4clip" and description["method_config"]["freeze_layer_num"] == 6
    assert description["recipe"]["data"]["dataset"] == "msrvtt"
    assert Path(description["recipe"]["data"]["root"]).is_absolute()  # eval works from any directory
    assert set(description["metrics"]["t2v"]) >= {"R@1", "R@5", "R@10", "MdR", "MnR"}
    assert (run_dir / "latest.json").exists() and (run_dir / "best" / "adapter.safetensors").exists()
    capsys.readouterr()

    main(["eval", str(adapter), "--json", str(tmp_path / "metrics.json")])
    printed = capsys.readouterr().out
    assert "t2v" in printed and "v2t" in printed
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["t2v"]["queries"] == 6  # the tiny world's test split: 6 videos, one query each
    assert metrics["ties"] == "stable"
    main(["eval", str(adapter), "--set", 'data.ties="official"', "--json", str(tmp_path / "official.json")])
    assert json.loads((tmp_path / "official.json").read_text())["ties"] == "official"

    moved = tmp_path / "moved-adapter"  # the recorded backbone checkpoint has moved: --backbone-checkpoint finds it
    shutil.copytree(adapter, moved)
    moved_description = json.loads((moved / "adapter.json").read_text())
    moved_description["recipe"]["backbone"]["checkpoint"] = str(tmp_path / "gone.safetensors")
    (moved / "adapter.json").write_text(json.dumps(moved_description))
    with pytest.raises(SystemExit, match="petvr: error: .*cannot find backbone"):
        main(["eval", str(moved)])
    main(["eval", str(moved), "--backbone-checkpoint", str(world / "tiny.safetensors")])
    assert "t2v" in capsys.readouterr().out

    other = create_backbone("petvr-tiny")  # a different backbone: the adapter must refuse it
    with pytest.raises(ValueError, match="weight hash"):
        RetrievalModel.from_adapter(adapter, backbone=other)
    model = RetrievalModel.from_adapter(adapter, backbone=load_backbone("petvr-tiny", world / "tiny.safetensors"))
    assert model.parameter_report()["trainable"] == description["parameters"]["trainable"]


def test_unknown_train_key_is_reported(world_overrides, world, tmp_path):
    args = ["train", str(RECIPE), "--set", "train.learning_rate=1"]
    for assignment in world_overrides(tmp_path / "run"):
        args += ["--set", assignment]
    with pytest.raises(SystemExit, match="petvr: error: .*learning_rate"):
        main(args)


def test_cache_command_fills_the_recipe_cache_and_reports(world_overrides, world, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    args = ["cache", str(RECIPE), "--workers", "0"]
    for assignment in world_overrides(tmp_path / "run") + [f"data.cache_dir=\"{cache_dir}\""]:
        args += ["--set", assignment]
    main(args)
    first = capsys.readouterr().out
    assert len(list(cache_dir.rglob("*.npy"))) == 18  # the tiny world's 12 training + 6 test videos
    assert "12 decoded" in first and "6 decoded" in first
    main(args)
    second = capsys.readouterr().out
    assert "12 already cached" in second and "6 already cached" in second


def test_unreadable_video_stops_with_its_name_or_is_skipped_and_reported(world_overrides, world, tmp_path, capsys):
    import shutil

    studio = tmp_path / "studio"
    shutil.copytree(world / "world" / "studio" / "msrvtt", studio / "msrvtt")
    broken = studio / "msrvtt" / "videos" / "video3.mp4"
    broken.write_bytes(broken.read_bytes()[:300])  # truncated
    args = ["cache", str(RECIPE), "--workers", "0", "--report-dir", str(tmp_path)]
    for assignment in world_overrides(tmp_path / "run") + [f"data.root=\"{studio}\"",
                                                            f"data.cache_dir=\"{tmp_path / 'cache'}\""]:
        args += ["--set", assignment]
    with pytest.raises(SystemExit, match="video3.mp4"):
        main(args)
    main(args + ["--set", "data.skip_unreadable=true"])
    report = (tmp_path / "skipped-train.jsonl").read_text().splitlines()
    assert len(report) == 1 and "video3.mp4" in json.loads(report[0])["path"]
    assert "11 videos cached" in capsys.readouterr().out


def test_preview_command_writes_a_contact_sheet(world, tmp_path):
    video = next((world / "world" / "studio" / "msrvtt" / "videos").glob("*.mp4"))
    out = tmp_path / "sheet.png"
    main(["data", "preview", str(video), "--out", str(out), "--max-frames", "4", "--fps", "2", "--image-size", "64"])
    from PIL import Image

    with Image.open(out) as image:
        assert image.width > 4 * 64 - 1 and image.height > 64


def test_preview_of_an_annotation_row_uses_the_recipe_sampling(world_overrides, world, tmp_path):
    out = tmp_path / "row.png"
    args = ["data", "preview", "video1", "--recipe", str(RECIPE), "--split", "train", "--out", str(out)]
    for assignment in world_overrides(tmp_path / "run"):
        args += ["--set", assignment]
    main(args)
    from PIL import Image

    with Image.open(out) as image:  # the recipe samples 8 frames at the backbone's 64 px
        assert image.width >= 6 * 64 and image.height >= 2 * 64
    with pytest.raises(SystemExit, match="no video 'video999'"):
        main(args[:2] + ["video999"] + args[3:])
