"""Shared fixtures. Real data comes from ``../shared/data`` (or ``$GEOSAPIENS_SHARED_DATA``); tests that need
it skip with the reason when it is absent."""

from __future__ import annotations

import os
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
