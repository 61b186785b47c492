"""The README's main command, on the tiny preset: every step runs, the report has a row per method, and the
walkthrough notebook runs against its outputs (so neither can rot)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib
import pytest

from geosapiens.cli import main

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "demo_walkthrough.ipynb"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--fast", "--out", str(root / "runs"), "--data", str(root / "data")]) == 0
    return root / "runs", root / "data"


def test_fast_demo_reports_every_method(demo):
    report = demo[0] / "report"
    rows = list(csv.DictReader((report / "results.csv").open()))
    methods = [r["method"] for r in rows]
    expected = {"source-only", "oracle", "AdaBN", "mean teacher", "SHIFT-style", "Geo-Sapiens"}
    assert expected | {"Geo-Sapiens student (distilled)"} <= set(methods)
    assert len(methods) == 8
    for row in rows:
        assert 0.0 <= float(row["PCK@0.1"]) <= 1.0
    assert (report / "results.md").is_file() and (report / "pck_curves.png").is_file()


def test_walkthrough_notebook_runs_on_the_demo_outputs(demo, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.setenv("GEOSAPIENS_DEMO_RUNS", str(demo[0]))
    monkeypatch.setenv("GEOSAPIENS_DEMO_DATA", str(demo[1]))
    scope: dict = {}
    for cell in json.loads(NOTEBOOK.read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), scope)
    assert scope["sheet"].shape[2] == 3 and scope["maps"].depth.shape[0] == 4
