"""Shared fixtures. Real data comes from ``../shared/data`` (or ``$GEOSAPIENS_SHARED_DATA``); tests that need
it skip with the reason when it is absent. Tests write only under their temporary directories: the session
fails when the work tree changed while it ran (:func:`work_tree_unchanged`)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GEOSAPIENS_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def syrip_sample() -> Path:
    """The 32 real SyRIP images in the official layout (``../shared/data/syrip_sample``)."""
    root = SHARED_DATA / "syrip_sample"
    if not (root / "annotations").is_dir():
        pytest.skip(f"SyRIP sample not found at {root}: set GEOSAPIENS_SHARED_DATA to the folder holding it")
    return root


# Caches Python, pytest and the linters keep in the work tree; everything else a test writes there is a bug.
_CACHES = (".venv", ".pytest_cache", ".ruff_cache", ".grimp_cache", ".import_linter_cache")


def _work_tree_status() -> set[str] | None:
    """``git status`` lines of the repository (untracked and ignored files too); None outside a checkout."""
    try:
        top = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--show-toplevel"],
            capture_output=True, text=True, timeout=60,
        )
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != REPO:
            return None
        status = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all", "--ignored", "--", ".",
             ":(exclude,glob)**/__pycache__/**", *(f":(exclude){c}" for c in _CACHES)],
            capture_output=True, text=True, timeout=120, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return set(status.stdout.splitlines())


@pytest.fixture(scope="session", autouse=True)
def work_tree_unchanged() -> Iterator[None]:
    """Fail the session if a test wrote into the repository (``git status`` differs from the start)."""
    before = _work_tree_status()
    yield
    if before is None:
        return
    after = _work_tree_status() or set()
    changed = sorted(after ^ before)
    if changed:
        pytest.fail(
            "tests changed the work tree (write under tmp_path; run subprocesses with cwd=tmp_path):\n  "
            + "\n  ".join(changed),
            pytrace=False,
        )
