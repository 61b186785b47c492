"""The README's main command, on the tiny preset: every step runs and the report has a row per method."""

from __future__ import annotations

import csv

import pytest

from geosapiens.cli import main

pytestmark = pytest.mark.slow
METHODS = ["source_only", "mean_teacher_geometry", "shift_style", "fewshot", "oracle"]


def test_fast_demo_runs_end_to_end(tmp_path, capsys):
    assert main(["demo", "--fast", "--out", str(tmp_path / "runs"), "--data", str(tmp_path / "data")]) == 0
    report = tmp_path / "runs" / "report"
    rows = list(csv.DictReader((report / "results.csv").open()))
    assert [r["method"] for r in rows] == METHODS
    for row in rows:
        assert 0.0 <= float(row["PCK@0.1"]) <= 1.0
    assert (report / "results.md").is_file() and (report / "pck_curves.png").is_file()
    assert "total" in capsys.readouterr().out
