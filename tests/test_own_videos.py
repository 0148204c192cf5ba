"""README's "Your own videos": its recipe (read from README.md, so the docs and this test cannot drift) trains and
evaluates on a tiny caption file of three videos, run from another working directory than the recipe's."""
import json
import re
from pathlib import Path

from petvr.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_recipe() -> str:
    section = README.read_text().split("## Your own videos", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the section should hold exactly one TOML recipe"
    return blocks[0]


def test_the_readme_recipe_trains_and_evaluates_from_another_directory(tmp_path, monkeypatch, capsys,
                                                                        write_numbered_video):
    project = tmp_path / "project"
    videos = project / "my-videos" / "videos"
    (videos / "cats").mkdir(parents=True)
    (project / "my_recipe.toml").write_text(readme_recipe())
    write_numbered_video(videos / "cats" / "tom.mp4", 20)
    write_numbered_video(videos / "dog.mp4", 30)
    write_numbered_video(videos / "bird.mp4", 25)
    (project / "my-videos" / "train.csv").write_text(
        "video,caption,start,end\ncats/tom.mp4,a grey cat jumps,,\ncats/tom.mp4,\"a cat lands, then sits\",,\n"
        "dog,a dog runs,0.5,2.5\nbird.mp4,a bird flies,,\n")
    (project / "my-videos" / "test.csv").write_text("video,caption\ntom,a cat\ndog.mp4,a dog\nbird,a bird\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    main(["train", str(project / "my_recipe.toml"), "--set", "train.epochs=1", "--set", "train.batch_size=2",
          "--set", "data.num_workers=0", "--set", "data.sampling.max_frames=2"])
    assert "adapter written to runs/my-lora/adapter" in capsys.readouterr().out
    assert (elsewhere / "runs" / "my-lora" / "adapter" / "adapter.safetensors").is_file()
    assert any((elsewhere / "petvr-cache").iterdir())  # cache_dir: in the working directory

    main(["eval", "runs/my-lora/adapter", "--json", "metrics.json"])
    assert re.search(r"^t2v .* 3$", capsys.readouterr().out, re.M)  # three test queries
    assert json.loads((elsewhere / "metrics.json").read_text())
