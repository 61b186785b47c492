"""The package as a user installs it: the wheel of this checkout, in a new virtual environment outside it,
runs ``geosapiens demo --fast`` from an empty working folder, on the configs the wheel ships; nothing of the
checkout is read or written."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from geosapiens.cli.configs import names

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _run(*args, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=900, **kwargs)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def _git_status() -> str:
    return _run("git", "-C", REPO, "status", "--porcelain", "--ignored").stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built (with this environment's setuptools, no index) from a copy of what the build reads,
    so its ``build/`` and ``*.egg-info`` stay out of the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", source,
         "-w", root / "dist")  # fmt: skip
    (built,) = (root / "dist").glob("geosapiens-*.whl")
    return built


def test_the_wheel_ships_every_config(wheel):
    shipped = {n.removeprefix("geosapiens/configs/") for n in zipfile.ZipFile(wheel).namelist()}
    assert set(names()) <= shipped


def test_the_wheel_ships_the_trainer_help_pages(wheel):
    from geosapiens.cli.main import TRAINER_VERBS

    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert {f"geosapiens/cli/help/{verb}.txt" for verb in TRAINER_VERBS} <= shipped


def test_demo_runs_from_the_installed_wheel(wheel, tmp_path):
    before = _git_status()
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # Installed while the environment sees nothing else, so pip meets no other geosapiens.
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel)
    # The dependencies installed here, visible there without installing the torch stack again (~6 GB): plain
    # path lines, whose folders' own .pth files (this environment's editable geosapiens) are not processed.
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = Path(_run(python, "-c", where).stdout.strip())
    (purelib / "installed_dependencies.pth").write_text("".join(f"{p}\n" for p in site.getsitepackages()))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    work = tmp_path / "work"
    work.mkdir()
    module = _run(python, "-c", "import geosapiens; print(geosapiens.__file__)", cwd=work, env=env).stdout
    assert Path(module.strip()).is_relative_to(venv)
    listing = _run(venv / "bin" / "geosapiens", "configs", cwd=work, env=env).stdout
    assert f"(in {purelib / 'geosapiens' / 'configs'})" in listing.splitlines()[0]

    demo = _run(venv / "bin" / "geosapiens", "demo", "--fast", "--no_progress", cwd=work, env=env)
    assert f"--config {purelib / 'geosapiens' / 'configs' / 'demo' / 'uda.yaml'}" in demo.stdout
    assert str(REPO) not in demo.stdout
    outputs = ["demo_data/manifest.json", "runs/demo/report/results.csv", "runs/demo/deploy/student.onnx"]
    for output in outputs:
        assert (work / output).is_file(), output
    assert sorted(p.name for p in work.iterdir()) == ["demo_data", "runs"]
    assert _git_status() == before
