"""``geosapiens report`` over three run folders (source-only, ours, oracle): hand-computed gap reduction,
markdown/CSV/PNG outputs, newest results file, per-dataloader rows and errors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from geosapiens.cli.main import main as cli_main
from geosapiens.cli.report import main
from geosapiens.errors import DataError
from geosapiens.metrics.report import load_results
from geosapiens.skeleton import COCO17
from geosapiens.viz import draw

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
    draw.save_png(
        root / "ours" / "csv" / "version_0" / "images" / "epoch_003.png", np.full((30, 40, 3), 200, np.uint8)
    )
    return root


def _csv(path: Path) -> dict[tuple[str, str], dict]:
    with open(path, newline="") as f:
        return {(r["method"], r["metric"]): r for r in csv.DictReader(f)}


def test_report_tables_gap_and_plots(runs, tmp_path, capsys):
    out = tmp_path / "report"
    dirs = [str(runs / n) for n in HEADLINE]
    assert main([*dirs, "--out", str(out), "--source-only", "source_only", "--oracle", "oracle"]) == 0
    printed = capsys.readouterr().out
    markdown = (out / "results.md").read_text()
    assert printed == markdown

    rows = _csv(out / "results.csv")
    assert list(dict.fromkeys(m for m, _ in rows)) == ["source_only", "ours", "oracle"]
    metric_of = {col: col.lower().replace("-", "_") for col in GAP_OURS}  # "G-Error" -> "g_error"
    for col, expected in GAP_OURS.items():
        metric = metric_of[col]
        assert float(rows["ours", metric]["gap"]) == pytest.approx(expected, abs=1e-12), col
        assert float(rows["source_only", metric]["gap"]) == 0.0
        assert float(rows["oracle", metric]["gap"]) == pytest.approx(1.0)
        # one seed each: the paired difference is the plain difference, with no CI (no per-sample errors)
        lower = {n: {k.lower(): v for k, v in m.items()} for n, m in HEADLINE.items()}
        ours, src = lower["ours"][metric], lower["source_only"][metric]
        assert float(rows["ours", metric]["diff"]) == pytest.approx(ours - src)
        assert rows["ours", metric]["baseline"] == "source_only" and rows["ours", metric]["ci_low"] == ""
        assert rows["source_only", metric]["baseline"] == rows["source_only", metric]["diff"] == ""
    ours = rows["ours", "ap"]
    assert (
        float(ours["mean"]) == 0.7 and ours["values"] == "0.7"
    )  # the newest results file, not the stale one
    assert ours["n_seeds"] == "1" and ours["std"] == "" and ours["data"] == "SyRIPRealDataModule"
    assert rows["ours", "pck@0.1/nose"]["mean"] == "0.3" and rows["ours", "pck@0.1/left_eye"]["mean"] == ""
    assert ours["results_files"].endswith("ours/csv/version_0/test_metrics.json")

    lines = markdown.splitlines()
    assert "**One seed** (?) per row" in markdown  # the files recorded no seed
    header = next(line for line in lines if line.startswith("| method | data | seeds"))
    assert header.startswith(
        "| method | data | seeds | AP | AP50 | PCK@0.05 | PCK@0.1 | PCK@0.2 | G-Error | gap AP |"
    )
    row = next(line for line in lines if line.startswith("| ours | SyRIPRealDataModule | 1 |"))
    assert (
        "| 70.0 | 90.0 | 55.0 | 66.0 | 85.0 | 0.0700 | 0.500 | 0.667 | 0.500 | 0.300 | 0.500 | 0.500 |" in row
    )
    assert "| ours | source_only | 1 | +20.0 | +10.0 | +15.0 | +6.0 | +5.0 | -0.0300 | - |" in markdown
    assert "| source_only | SyRIPRealDataModule | 1 | 50.0 |" in markdown and "-0.000" not in markdown
    assert "## Per-joint PCK@0.1 (%, mean over seeds)" in markdown
    assert "| method | data | nose | left_eye | right_eye |" in markdown
    assert "| ours | SyRIPRealDataModule | 30.0 | n/a | 36.0 |" in markdown  # in %, left eye never labelled
    assert not (out / "seed_noise.csv").exists()  # one seed: no noise to measure

    for name in ("pck_curves.png", "per_joint_pck.png", "overlays.png", "paired_differences.png"):
        image = draw.read_png(out / name)
        assert image.shape[0] > 20 and image.std() > 0, name
    overlays = draw.read_png(out / "overlays.png")
    assert overlays.shape == (30 + 4, 40 + 4, 3)  # only "ours" saved a validation sheet
    assert not list(out.glob(".*"))  # no temporary files


def _errors_run(folder: Path, seed: int, hits: list[int], joints: int = 4) -> None:
    """A results file of 4-joint samples: the first ``hits[i]`` joints within 0.1, the rest 0.15 away."""
    errors = [[0.05 if j < h else 0.15 for j in range(joints)] for h in hits]
    names = list(COCO17.names[:joints])
    pck = sum(hits) / (joints * len(hits))
    data = {
        "format": 1,
        "metrics": {
            "test/pck@0.1": pck,
            "test/pck@0.2": 1.0,
            "test/pck@0.1/nose": sum(h > 0 for h in hits) / len(hits),
        },
        "run": {"seed": seed, "datamodule": "geosapiens.data.datamodules.SyRIPRealDataModule"},
        "per_sample": {"norm": "bbox", "keypoints": names, "index": list(range(len(hits))), "errors": errors},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test_metrics.json").write_text(json.dumps(data))


@pytest.mark.slow
def test_seed_folders_mean_std_paired_ci_and_seed_noise(tmp_path, capsys):
    # 3 seeds x 4 samples x 4 joints. "geo" gains exactly one joint on every sample over "shift" in every seed
    # (paired difference +0.25 with a zero-width CI); "shift" beats "src" by 1, 2, 3 joints per sample in
    # seeds
    # 0, 1, 2 (+0.25, +0.5, +0.75: seed-resampled CI [0.25, 0.75], each extreme having probability 1/27).
    hits = {"src": [0, 0, 0], "shift": [1, 2, 3], "geo": [2, 3, 4]}
    for method, per_seed in hits.items():
        for seed, h in enumerate(per_seed):
            _errors_run(tmp_path / "runs" / method / f"seed{seed}" / "test", seed, [h] * 4)
    out = tmp_path / "report"
    args = [str(tmp_path / "runs" / m) for m in hits]
    assert main([*args, "--out", str(out), "--baseline", "src", "--baseline-of", "geo*=shift"]) == 0
    markdown = capsys.readouterr().out
    rows = _csv(out / "results.csv")
    geo, shift, src = rows["geo", "pck@0.1"], rows["shift", "pck@0.1"], rows["src", "pck@0.1"]
    assert geo["n_seeds"] == "3" and geo["seeds"] == "0;1;2" and geo["values"] == "0.5;0.75;1.0"
    assert float(geo["mean"]) == pytest.approx(0.75) and float(geo["std"]) == pytest.approx(0.25)
    assert geo["baseline"] == "shift" and float(geo["diff"]) == pytest.approx(0.25)
    assert float(geo["ci_low"]) == pytest.approx(0.25) and float(geo["ci_high"]) == pytest.approx(0.25)
    assert geo["ci_over"] == "seeds x samples" and geo["resolved"] == "yes"
    assert shift["baseline"] == "src" and float(shift["diff"]) == pytest.approx(0.5)
    assert (float(shift["ci_low"]), float(shift["ci_high"])) == pytest.approx((0.25, 0.75))
    assert src["baseline"] == "" and src["diff"] == ""
    # pck@0.2 is logged but every sample's errors are < 0.2: 1.0 everywhere, a difference of exactly 0
    assert float(rows["geo", "pck@0.2"]["diff"]) == 0.0 and rows["geo", "pck@0.2"]["resolved"] == "no"

    with open(out / "seed_noise.csv", newline="") as f:
        noise = {r["metric"]: r for r in csv.DictReader(f)}
    # value spread: 0 (src), 0.25 (shift, geo); paired-difference spread: 0 (geo - shift), 0.25 (shift - src)
    assert float(noise["pck@0.1"]["seed_std"]) == pytest.approx(np.sqrt((0 + 0.25**2 + 0.25**2) / 3))
    assert float(noise["pck@0.1"]["diff_std"]) == pytest.approx(np.sqrt((0 + 0.25**2) / 2))
    assert float(noise["pck@0.1"]["threshold"]) == pytest.approx(1.96 * np.sqrt(0.25**2 / 2))
    assert "Seeds per row: 3 (seeds 0, 1, 2); mean ± std over seeds." in markdown
    assert "| geo | SyRIPRealDataModule | 3 | 75.0 ± 25.0 | 100.0 ± 0.0 |" in markdown
    assert "| geo | shift | 3 | **+25.0** [+25.0, +25.0] | +0.0 [+0.0, +0.0] | seeds x samples |" in markdown
    assert "| shift | src | 3 | **+50.0** [+25.0, +75.0] |" in markdown
    assert "| geo | 2 | 100.0 | 100.0 |" in markdown  # every seed's value
    assert draw.read_png(out / "paired_differences.png").std() > 0

    # a single-seed table of seed 2 with that noise: geo - shift (+25) is resolved over test samples, yet
    # inside the seed noise (1.96 * 0.177 = 0.35); shift - src (+75) is outside it
    one = tmp_path / "one"
    seed0 = [str(tmp_path / "runs" / m / "seed2") for m in hits]
    assert main([*seed0, "--out", str(one), "--baseline", "src", "--baseline-of", "geo=shift",
                 "--seed-noise", str(out / "seed_noise.csv")]) == 0  # fmt: skip
    single = capsys.readouterr().out
    rows = _csv(one / "results.csv")
    assert rows["geo", "pck@0.1"]["inside_seed_noise"] == "yes"  # +0.25 < 0.3465
    assert rows["shift", "pck@0.1"]["inside_seed_noise"] == "no"  # +0.75
    assert float(rows["geo", "pck@0.1"]["seed_noise"]) == pytest.approx(1.96 * np.sqrt(0.25**2 / 2))
    assert "**One seed** (2) per row" in single and "**+25.0** [+25.0, +25.0] (in seed noise)" in single
    assert rows["geo", "pck@0.1"]["ci_over"] == "samples"


def test_per_sample_errors_must_reproduce_the_logged_pck(tmp_path):
    _errors_run(tmp_path / "a", 0, [1, 2])
    path = tmp_path / "a" / "test_metrics.json"
    doc = json.loads(path.read_text())
    doc["metrics"]["test/pck@0.1"] = 0.5
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"give pck@0.1 = 0.375000, the logged value is 0.500000"):
        load_results(path, "a")
    _errors_run(tmp_path / "b" / "seed0", 0, [1, 2])
    _errors_run(tmp_path / "c" / "seed0", 0, [1, 2, 3])  # another test split
    assert (
        main([str(tmp_path / "b"), str(tmp_path / "c"), "--baseline", "b", "--out", str(tmp_path / "o")]) == 2
    )


def test_names_without_gap_and_cli_dispatch(runs, tmp_path, capsys):
    out = tmp_path / "r2"
    args = ["report", str(runs / "ours"), str(runs / "oracle"), "--out", str(out), "--names", "Geo", "Oracle"]
    assert cli_main(args) == 0
    markdown = capsys.readouterr().out
    assert "| Geo |" in markdown and "| Oracle |" in markdown and "gap" not in markdown
    assert draw.read_png(out / "overlays.png").shape == (34, 44, 3)  # "Geo"'s sheet


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
    with pytest.raises(SystemExit):
        main([str(runs / "ours"), "--baseline", "nobody"])
    with pytest.raises(SystemExit):
        main([str(runs / "ours"), "--baseline-of", "no-equals-sign"])
    assert main([str(runs / "ours"), str(runs / "ours"), "--out", str(tmp_path / "twice")]) == 2
    assert "has seed None twice" in capsys.readouterr().err
