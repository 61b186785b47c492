"""``geosapiens report`` over three run folders (source-only, ours, oracle): hand-computed gap reduction,
markdown/CSV/PNG outputs, newest results file, per-dataloader rows and errors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from geosapiens import viz
from geosapiens.cli import main as cli_main
from geosapiens.errors import DataError
from geosapiens.metrics.report import load_results, main
from geosapiens.skeleton import COCO17

HEADLINE = {
    "source_only": {"AP": 0.5, "AP50": 0.8, "pck@0.05": 0.4, "pck@0.1": 0.6, "pck@0.2": 0.8, "g_error": 0.10},
    "ours": {"AP": 0.7, "AP50": 0.9, "pck@0.05": 0.55, "pck@0.1": 0.66, "pck@0.2": 0.85, "g_error": 0.07},
    "oracle": {"AP": 0.9, "AP50": 0.95, "pck@0.05": 0.7, "pck@0.1": 0.8, "pck@0.2": 0.9, "g_error": 0.04},
}
# (ours - source) / (oracle - source), by hand
GAP_OURS = {"AP": 0.2 / 0.4, "AP50": 0.1 / 0.15, "PCK@0.05": 0.15 / 0.3, "PCK@0.1": 0.06 / 0.2,
            "PCK@0.2": 0.05 / 0.1, "G-Error": -0.03 / -0.06}  # fmt: skip


def _write_run(root: Path, name: str, metrics: dict, curve: bool, mtime: float | None = None) -> Path:
    joints = {f"test/pck@0.1/{n}": round(0.3 + 0.03 * j, 3) for j, n in enumerate(COCO17.names)}
    joints["test/pck@0.1/left_eye"] = None  # e.g. never labelled
    data = {
        "format": 1,
        "metrics": {f"test/{k}": v for k, v in metrics.items()} | joints | {"test/loss": 1.0},
        "run": {
            "stage": "geosapiens.stages.X",
            "datamodule": "geosapiens.data.datamodules.SyRIPRealDataModule",
        },
    }
    if curve:
        thr = [round(0.01 * i, 2) for i in range(51)]
        data["pck_curve"] = {"thresholds": thr, "pck": [min(1.0, 4 * t) for t in thr], "norm": "bbox"}
    path = root / name / "csv" / "version_0" / "test_metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture()
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    for name, metrics in HEADLINE.items():
        _write_run(root, name, metrics, curve=name != "oracle")
    stale = _write_run(root / "ours", "old", {"AP": 0.01}, curve=False, mtime=1_000_000)  # re-tested since
    assert stale.exists()
    viz.save_png(
        root / "ours" / "csv" / "version_0" / "images" / "epoch_003.png", np.full((30, 40, 3), 200, np.uint8)
    )
    return root


def test_report_tables_gap_and_plots(runs, tmp_path, capsys):
    out = tmp_path / "report"
    dirs = [str(runs / n) for n in HEADLINE]
    assert main([*dirs, "--out", str(out), "--source-only", "source_only", "--oracle", "oracle"]) == 0
    printed = capsys.readouterr().out
    markdown = (out / "results.md").read_text()
    assert printed == markdown

    with open(out / "results.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert list(rows) == ["source_only", "ours", "oracle"]
    for col, expected in GAP_OURS.items():
        assert float(rows["ours"][f"gap {col}"]) == pytest.approx(expected, abs=1e-12), col
        assert float(rows["source_only"][f"gap {col}"]) == 0.0
        assert float(rows["oracle"][f"gap {col}"]) == pytest.approx(1.0)
    assert float(rows["ours"]["AP"]) == 0.7  # the newest results file, not the stale one
    assert rows["ours"]["data"] == "SyRIPRealDataModule"
    assert rows["ours"]["PCK@0.1 nose"] == "0.3" and rows["ours"]["PCK@0.1 left_eye"] == ""
    assert rows["ours"]["results_file"].endswith("ours/csv/version_0/test_metrics.json")

    lines = markdown.splitlines()
    header = next(line for line in lines if line.startswith("| method"))
    assert header.startswith(
        "| method | data | AP | AP50 | PCK@0.05 | PCK@0.1 | PCK@0.2 | G-Error | gap AP |"
    )
    ours = next(line for line in lines if line.startswith("| ours"))
    assert (
        "| 70.0 | 90.0 | 55.0 | 66.0 | 85.0 | 0.0700 | 0.500 | 0.667 | 0.500 | 0.300 | 0.500 | 0.500 |"
        in ours
    )
    assert "| source_only | SyRIPRealDataModule | 50.0 |" in markdown and "| -0.000 |" not in markdown
    assert "## Per-joint PCK@0.1 (%)" in markdown
    assert "| method | data | nose | left_eye | right_eye |" in markdown
    assert "| ours | SyRIPRealDataModule | 30.0 | n/a | 36.0 |" in markdown  # in %, left eye never labelled

    for name in ("pck_curves.png", "per_joint_pck.png", "overlays.png"):
        image = viz.read_png(out / name)
        assert image.shape[0] > 20 and image.std() > 0, name
    overlays = viz.read_png(out / "overlays.png")
    assert overlays.shape == (30 + 4, 40 + 4, 3)  # only "ours" saved a validation sheet
    assert not list(out.glob(".*"))  # no temporary files


def test_names_without_gap_and_cli_dispatch(runs, tmp_path, capsys):
    out = tmp_path / "r2"
    args = ["report", str(runs / "ours"), str(runs / "oracle"), "--out", str(out), "--names", "Geo", "Oracle"]
    assert cli_main(args) == 0
    markdown = capsys.readouterr().out
    assert "| Geo |" in markdown and "| Oracle |" in markdown and "gap" not in markdown
    assert viz.read_png(out / "overlays.png").shape == (34, 44, 3)  # "Geo"'s sheet


def test_rows_per_dataloader_and_nan_gap(tmp_path):
    path = tmp_path / "test_metrics.json"
    path.write_text(
        json.dumps(
            {
                "metrics": {
                    "test/pck@0.1/dataloader_idx_0": 0.5,
                    "test/pck@0.1/dataloader_idx_1": 0.25,
                    "test/PCK@0.1/nose/dataloader_idx_1": 1.0,
                },
                "run": {"datamodule": None},
            }
        )
    )
    rows = load_results(path, "x")
    assert [(r.data, r.metrics) for r in rows] == [
        ("[dataloader_idx_0]", {"pck@0.1": 0.5}),
        ("[dataloader_idx_1]", {"pck@0.1": 0.25, "pck@0.1/nose": 1.0}),
    ]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test_metrics.json").write_text(json.dumps({"metrics": {"test/AP": 0.5}}))
    out = tmp_path / "out"
    assert (
        main(
            [
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                "--out",
                str(out),
                "--source-only",
                "a",
                "--oracle",
                "b",
            ]
        )
        == 0
    )
    assert "oracle equals source-only" in (out / "results.md").read_text()


def test_errors(tmp_path, runs, capsys):
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no test_metrics.json under it" in capsys.readouterr().err
    bad = tmp_path / "bad" / "test_metrics.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not readable JSON"):
        load_results(bad, "bad")
    with pytest.raises(SystemExit):
        main([str(runs / "ours"), "--source-only", "ours"])  # needs --oracle too
    with pytest.raises(SystemExit):
        main([str(runs / "ours"), str(runs / "oracle"), "--source-only", "x", "--oracle", "oracle"])
    with pytest.raises(SystemExit):
        main([str(runs / "ours"), "--names", "a", "b"])
