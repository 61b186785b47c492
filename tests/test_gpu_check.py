"""benchmarks/gpu_check.py: its CPU rehearsal (``--dry-run``) runs every section's code and reports finite
numbers, so a session with a GPU finds the check working; one section's failure never hides another's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SECTIONS = {"backbone", "step_cost", "fit", "critic_cache", "inference"}
pytestmark = pytest.mark.slow


def numbers(value):
    """Every int/float in a JSON value (bools are flags, not measurements)."""
    if isinstance(value, dict):
        for v in value.values():
            yield from numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


def test_dry_run_measures_every_section(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "offline"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    command = [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--dry-run", "--threads", "1",
               "--work", str(tmp_path / "work"), "--json", str(out)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "targets (dry run" in done.stdout and "failed sections: none" in done.stdout

    report = json.loads(out.read_text())
    s = report["sections"]
    assert set(s) == SECTIONS and report["failed"] == [] and report["dry_run"]
    assert not [name for name, section in s.items() if "error" in section]
    assert all(math.isfinite(v) for v in numbers(report))

    configs = s["backbone"]["configs"]
    assert len(configs) == 2 * len(report["preset"]["backbones"]) and s["backbone"]["peak_bf16"]["tflops"] > 0
    for name in report["preset"]["backbones"]:
        off, on = configs[f"{name} ckpt=off"], configs[f"{name} ckpt=on"]
        assert min(off["ms_per_step"], off["tflops"], off["mfu"], on["mfu"]) > 0
        # checkpointing recomputes the blocks' forwards in the backward: counted, but not in the MFU
        assert 1.1 < on["flops"] / off["flops"] < 1.5
        assert 0.85 < off["counted_vs_analytic"] < 1.1  # the counter's sum matches the ViT's arithmetic

    stages = s["step_cost"]["stages"]
    assert list(stages) == ["a", "b", "c", "d"] and all(r["s_per_step"] > 0 for r in stages.values())
    assert 2.2 < stages["b"]["flop_ratio"] < 2.5  # ~7/3: the student on 2B images + the teacher on B
    assert stages["d"]["flop_ratio"] > stages["b"]["flop_ratio"]

    fit = s["fit"]
    assert fit["steps"] == report["preset"]["fit_steps"] == len(fit["losses"]) and fit["loss_first"] > 0
    assert fit["samples_per_s"] > 0 and 0.0 <= fit["val_pck@0.1"] <= 1.0
    assert set(fit["headroom"]) == {"0", "1"} and min(fit["headroom"].values()) > 0

    fill = s["critic_cache"]
    assert fill["images"] == 20 and fill["images_per_s"]["float32"] > 0

    assert len(s["inference"]["networks"]) == 4
    assert all(r["frames_per_s"] > 0 for r in s["inference"]["networks"].values())


def test_a_failing_section_is_recorded_and_the_rest_still_run(capsys):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    runs = {"first": lambda: {"value": 1.0}, "broken": lambda: {"value": 1 / 0},
            "last": lambda: {"value": 2.0}}
    written = []  # what the report file held after each section
    sections = gpu_check.run_sections(runs, torch.device("cpu"), done=lambda s: written.append(list(s)))
    assert sections["broken"]["error"] == "ZeroDivisionError: division by zero"
    assert sections["first"]["value"] == 1.0 and sections["last"]["value"] == 2.0
    assert all(section["seconds"] >= 0 for section in sections.values())
    assert written == [["first"], ["first", "broken"], ["first", "broken", "last"]]
    assert "ZeroDivisionError" in capsys.readouterr().err  # the traceback, for the log of a GPU run
    late = gpu_check.run_sections(runs, torch.device("cpu"), deadline=time.perf_counter() - 1)
    assert all(section["error"].startswith("skipped") for section in late.values())
