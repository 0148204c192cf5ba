"""The installed package is complete: a wheel built from this tree, installed into a fresh venv, runs from any directory
with its recipes, model configs and embedded default as package resources (no source tree in reach)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import json, sys
from pathlib import Path
import petvr
from petvr.backbone import embedded_checkpoint_path, list_model_configs, load_backbone
from petvr.demo import RECIPE
from petvr.training.recipe import list_recipes, load_recipe
print(json.dumps({
    "petvr": petvr.__file__,
    "demo_recipe": str(RECIPE) if RECIPE.is_file() else None,
    "recipes": list_recipes(),
    "didemo_max_frames": load_recipe("didemo/clip4clip")["data"]["sampling"]["max_frames"],
    "model_configs": list_model_configs(),
    "embedded": str(embedded_checkpoint_path()),
    "tiny_embed_dim": load_backbone("petvr-tiny").config.embed_dim,
}))
"""


def _run(command: list, cwd: Path) -> str:
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A venv holding only the wheel of this tree; torch and the other dependencies come from the test's own venv
    through a ``.pth`` line (a path a ``.pth`` adds is not scanned for ``.pth`` files, so the editable install's
    finder stays out). The wheel is installed before that line exists, so pip sees nothing else."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"  # a copy, so the build leaves no build/ or egg-info behind in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "petvr", source / "petvr", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w", str(work)],
         cwd=source)
    wheel = next(work.glob("petvr-*.whl"))
    venv = work / "fresh"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)], cwd=work)
    site_packages = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              cwd=work).strip())
    (site_packages / "test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def test_the_wheel_runs_from_any_directory_with_its_resources(fresh_venv, tmp_path):
    installed = Path(_run([str(fresh_venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).strip())
    found = json.loads(_run([str(fresh_venv / "bin" / "python"), "-c", CHECK], cwd=tmp_path).splitlines()[-1])
    assert Path(found["petvr"]).is_relative_to(installed / "petvr"), found["petvr"]  # not the source tree
    assert found["demo_recipe"] and Path(found["demo_recipe"]).is_relative_to(installed / "petvr" / "recipes")
    assert {"msrvtt/clip4clip", "didemo/clip4clip", "synthetic/clip4clip_meanP"} <= set(found["recipes"])
    assert found["didemo_max_frames"] == 64  # bases resolve inside the installed package
    assert {"ViT-B-32", "ViT-B-32-quickgelu", "ViT-L-14-quickgelu", "petvr-tiny"} <= set(found["model_configs"])
    assert Path(found["embedded"]).is_relative_to(installed / "petvr" / "assets") and found["tiny_embed_dim"] == 128

    petvr = str(fresh_venv / "bin" / "petvr")
    assert "clip4clip:" in _run([petvr, "methods"], cwd=tmp_path)
    listing = _run([petvr, "recipes"], cwd=tmp_path)
    assert "msrvtt/clip4clip" in listing and str(installed / "petvr" / "recipes") in listing
