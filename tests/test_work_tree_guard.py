"""The conftest's guard: a test session that writes into the repository fails, naming what it wrote."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path


def _session(root: Path, test_body: str) -> subprocess.CompletedProcess:
    """Run pytest in a fresh git checkout ``root`` holding this conftest and one test."""
    (root / "tests").mkdir(parents=True)
    shutil.copy(Path(__file__).with_name("conftest.py"), root / "tests" / "conftest.py")
    test = f"from pathlib import Path\n\n\ndef test_one():\n{test_body}\n"
    (root / "tests" / "test_one.py").write_text(test)
    commit = ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]
    for cmd in (["init", "-q"], ["add", "-A"], commit):
        subprocess.run(["git", *cmd], cwd=root, check=True, capture_output=True)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )


def test_writing_into_the_repository_fails_the_session(tmp_path):
    body = (
        "    out = Path(__file__).parents[1] / 'runs' / 'out.json'\n"
        "    out.parent.mkdir()\n"
        "    out.write_text('{}')"
    )
    run = _session(tmp_path / "repo", body)
    assert run.returncode == 1, run.stdout
    assert "tests changed the work tree" in run.stdout and "runs/out.json" in run.stdout


def test_writing_under_tmp_path_passes(tmp_path):
    run = _session(tmp_path / "repo", "    assert Path(__file__).exists()")
    assert run.returncode == 0, run.stdout
