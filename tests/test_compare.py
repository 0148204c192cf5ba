"""`petvr compare`: trains what is not trained, evaluates, writes the results table (Markdown, CSV) and the plot."""
import csv
import json

from petvr.cli import main
from petvr.compare import compare, run_name, write_results
from petvr.training.recipe import shipped_recipes_dir

RECIPE = shipped_recipes_dir() / "synthetic" / "clip4clip_meanP.toml"


def test_run_names_keep_datasets_apart():
    assert run_name("msrvtt/clip4clip") == "msrvtt-clip4clip"
    assert run_name("recipes/msvd/clip4clip.toml") == "msvd-clip4clip"
    assert run_name("mine.toml") == "mine"


def test_compare_trains_once_evaluates_extra_splits_and_writes_the_table(world, world_overrides, tmp_path, capsys):
    zero_shot = tmp_path / "zero_shot.toml"
    zero_shot.write_text(f'base = "{RECIPE}"\n[method]\nname = "zero_shot"\n')
    overrides = [o for o in world_overrides(tmp_path / "unused") if not o.startswith("train.output_dir")]
    temporal = {"annotation_dir": "temporal", "video_dir": "temporal/videos", "split": "test"}
    rows = compare([str(zero_shot), str(RECIPE)], tmp_path / "runs", overrides, {"temporal": temporal})
    assert [row.method for row in rows] == ["zero_shot", "clip4clip"]
    assert rows[0].parameters["trainable"] == 0 and rows[1].parameters["trainable"] > 0
    for row in rows:
        assert set(row.metrics) == {"test", "temporal"}
        assert row.metrics["temporal"]["t2v"]["queries"] > 0
    trained = tmp_path / "runs" / "synthetic-clip4clip_meanP"
    assert (trained / "adapter" / "adapter.safetensors").is_file()
    stamp = (trained / "adapter" / "adapter.safetensors").stat().st_mtime_ns

    paths = write_results(rows, tmp_path / "out", title="tiny")
    table = paths["markdown"].read_text()
    assert "| run | method | trainable | trainable % |" in table and "| temporal t2v R@1 |" in table.replace(" | ", " |\n| ")
    with open(paths["csv"]) as handle:
        records = list(csv.DictReader(handle))
    assert [r["method"] for r in records] == ["zero_shot", "clip4clip"]
    assert float(records[1]["test t2v R@1"]) == rows[1].metrics["test"]["t2v"]["R@1"]
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The command line: the finished runs are reused, not trained again.
    args = ["compare", str(zero_shot), str(RECIPE), "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "cli")]
    for assignment in overrides:
        args += ["--set", assignment]
    main(args + ["--split", "temporal=" + json.dumps(temporal)])
    assert (trained / "adapter" / "adapter.safetensors").stat().st_mtime_ns == stamp
    assert "zero_shot" in capsys.readouterr().out
    assert (tmp_path / "cli" / "comparison.csv").read_text() == paths["csv"].read_text()
