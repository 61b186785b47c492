"""The README's main command, on the tiny preset: every step runs, the report has a row per method, and the
walkthrough notebook runs against its outputs (so neither can rot)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib
import pytest

from geosapiens.cli.main import main

pytestmark = pytest.mark.slow
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "demo_walkthrough.ipynb"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--fast", "--out", str(root / "runs"), "--data", str(root / "data")]) == 0
    return root / "runs", root / "data"


def _rows(report: Path) -> dict[tuple[str, str], dict]:
    return {(r["method"], r["metric"]): r for r in csv.DictReader((report / "results.csv").open())}


def test_fast_demo_reports_every_method(demo):
    report = demo[0] / "report"
    rows = _rows(report)
    methods = list(dict.fromkeys(m for m, _ in rows))
    expected = {"source-only", "oracle", "AdaBN", "mean teacher", "SHIFT-style", "Geo-Sapiens"}
    assert expected | {"Geo-Sapiens student (distilled)"} <= set(methods)
    assert len(methods) == 8
    for method in methods:
        row = rows[method, "pck@0.1"]
        assert 0.0 <= float(row["mean"]) <= 1.0 and row["n_seeds"] == "1" and row["seeds"] == "0"
        assert (demo[0] / ("warmup" if method == "source-only" else "oracle") / "seed0").is_dir()
    assert rows["Geo-Sapiens", "pck@0.1"]["baseline"] == "SHIFT-style"
    assert rows["AdaBN", "pck@0.1"]["baseline"] == "source-only"
    assert rows["AdaBN", "pck@0.1"]["inside_seed_noise"] in ("yes", "no")  # one seed: the protocol's noise
    markdown = (report / "results.md").read_text()
    assert "**One seed** (0) per row" in markdown
    for name in ("pck_curves.png", "paired_differences.png"):
        assert (report / name).is_file()
    assert (demo[0] / "deploy" / "student.onnx").is_file()


def test_seeds_tool_runs_a_config_under_two_seeds(demo, tmp_path):
    data = demo[1] / "SyRIP"
    out = tmp_path / "warmup"
    fit = ["--config", str(CONFIGS / "demo" / "warmup.yaml"), f"--data.init_args.root={data}",
           "--data.init_args.batch_size=4", "--data.init_args.num_workers=0", "--trainer.max_steps=2",
           "--trainer.val_check_interval=2", "--model.init_args.input_size=[64,64]",
           "--data.init_args.input_size=[64,64]"]  # fmt: skip
    test = str(CONFIGS / "demo" / "test_real.yaml")
    assert main(["seeds", "--seeds", "3", "5", "--out", str(out), "--test-config", test, "--", *fit]) == 0
    for seed in (3, 5):
        result = json.loads(next((out / f"seed{seed}" / "test").rglob("test_metrics.json")).read_text())
        assert result["run"]["seed"] == seed and result["run"]["datamodule"].endswith("SyRIPRealDataModule")
        assert len(result["per_sample"]["index"]) == len(result["per_sample"]["errors"]) > 0
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    row = _rows(tmp_path / "report")["warmup", "pck@0.1"]
    assert row["n_seeds"] == "2" and row["seeds"] == "3;5" and row["std"] != ""


def test_fast_protocol_runs_every_main_row_under_two_seeds(demo, tmp_path):
    runs = tmp_path / "protocol"
    argv = ["demo", "--protocol", "full", "--fast", "--seeds", "0", "1", "--jobs", "2"]  # child processes
    assert main([*argv, "--out", str(runs), "--data", str(demo[1])]) == 0
    rows = _rows(runs / "report")
    methods = list(dict.fromkeys(m for m, _ in rows))
    assert methods == ["source-only", "oracle", "AdaBN", "mean teacher", "SHIFT-style", "FiDIP",
                       "Geo-Sapiens", "Geo-Sapiens (small critic)", "Geo-Sapiens + 4-shot"]  # fmt: skip
    for method in methods:
        assert rows[method, "pck@0.1"]["n_seeds"] == "2" and rows[method, "pck@0.1"]["seeds"] == "0;1"
    geo = rows["Geo-Sapiens (small critic)", "pck@0.1"]
    assert geo["baseline"] == "SHIFT-style" and geo["ci_over"] == "seeds x samples" and geo["ci_low"] != ""
    assert (runs / "small_critic" / "small_critic.safetensors").is_file()
    assert (runs / "report" / "seed_noise.csv").is_file()
    assert not (runs / "deploy").exists()
    assert (runs / "logs" / "fewshot-seed1.log").read_text().count("==> ") == 2  # its fit and its test


def test_walkthrough_notebook_runs_on_the_demo_outputs(demo, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.setenv("GEOSAPIENS_DEMO_RUNS", str(demo[0]))
    monkeypatch.setenv("GEOSAPIENS_DEMO_DATA", str(demo[1]))
    scope: dict = {}
    for cell in json.loads(NOTEBOOK.read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), scope)
    assert scope["sheet"].shape[2] == 3 and scope["maps"].depth.shape[0] == 4
