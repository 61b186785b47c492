"""A CLI mean-teacher run killed mid-epoch (SIGTERM, or SIGKILL) and resumed with ``--ckpt_path last`` ends
with the same student and teacher weights as a run never interrupted (CPU, keyed data, restored RNG)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from geosapiens.cli.main import main

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

STEPS = 8  # source: 12 synthetic stills / batch 2 = 6 batches an epoch, so training crosses into epoch 1
BATCHES_PER_EPOCH = 6
# a step checkpoint every step (kept, named by step) and last.ckpt: SIGKILL loses at most one step
STEP_CHECKPOINTS = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {every_n_train_steps: 1, save_top_k: -1, filename: "{step}", save_last: true}
"""


@pytest.fixture(autouse=True)
def one_thread():
    """Float sums depend on the thread count: the in-process runs and the killed subprocess use one thread
    each (another test, e.g. the demo, may have changed this process's count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def syrip(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("resume") / "data"
    assert main(["data", "synth", "--out", str(data), "--preset", "tiny", "--seed", "0"]) == 0
    return data / "SyRIP"


def _args(syrip: Path, run: Path, workers: int) -> list[str]:
    config = run.parent / "step_checkpoints.yaml"
    config.write_text(STEP_CHECKPOINTS)
    src, tgt = "--data.init_args.source.init_args", "--data.init_args.target.init_args"
    data = []
    for prefix in (src, tgt):
        data += [f"{prefix}.root", str(syrip), f"{prefix}.input_size", "[64, 64]"]
        data += [f"{prefix}.batch_size", "2", f"{prefix}.num_workers", str(workers)]
    return [
        "fit",
        "--config", str(REPO / "configs/demo/uda.yaml"),
        "--config", str(REPO / "configs/demo/mean_teacher.yaml"),
        "--config", str(config),
        "--model.init_args.input_size", "[64, 64]",
        "--model.init_args.backbone", "timm:mobilenetv3_small_050",  # small checkpoints, saved every step
        "--model.init_args.head_kwargs", "{channels: [32, 32]}",
        "--model.init_args.init_checkpoint", "null",
        f"{src}.val_fraction", "0",
        *data,
        "--trainer.max_steps", str(STEPS),
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(run),
        "--trainer.logger.init_args.save_dir", str(run),
    ]


def _cli(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "geosapiens.cli.main", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _interrupt(args: list[str], run: Path, sig: signal.Signals, after_step: int) -> dict:
    """Start the run, send ``sig`` once the checkpoint of ``after_step`` exists; return the last.ckpt left."""
    proc = _cli(args, cwd=run.parent)
    step_file = run / "checkpoints" / f"step={after_step}.ckpt"
    deadline = time.monotonic() + 240
    while not step_file.exists():
        assert proc.poll() is None, f"the run ended before step {after_step}:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no step checkpoint in time"
        time.sleep(0.02)
    proc.send_signal(sig)
    log, _ = proc.communicate(timeout=240)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # saved at the current step, then a clean stop with SIGTERM's conventional status
        assert "SIGTERM: saved" in log and proc.returncode == 128 + signal.SIGTERM, log
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == STEPS
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith(("model.", "teacher."))}


@pytest.mark.parametrize(
    ("sig", "workers"), [(signal.SIGTERM, 0), (signal.SIGKILL, 1)], ids=["SIGTERM", "SIGKILL"]
)
def test_killed_run_resumes_to_the_uninterrupted_weights(syrip, tmp_path_factory, sig, workers):
    reference = tmp_path_factory.getbasetemp() / "uninterrupted"
    if not (reference / "checkpoints" / "last.ckpt").exists():  # shared by both kinds of kill
        assert main(_args(syrip, reference, workers=0)) == 0
    expected = _weights(reference)

    run = tmp_path_factory.mktemp(sig.name)
    args = _args(syrip, run, workers)  # workers differ from the reference: batches must not depend on them
    left = _interrupt(args, run, sig, after_step=2)
    batch = left["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"]  # batches taken
    assert left["epoch"] == 0 and 0 < batch < BATCHES_PER_EPOCH and left["global_step"] < STEPS  # mid-epoch
    source, target = left["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    # the loaders' positions travel with it; the target (8 real stills: 4 batches) cycles within the epoch
    assert (source["pass"], source["batches"]) == (0, batch)
    assert (target["pass"], target["batches"]) == ((batch - 1) // 4, batch - 4 * ((batch - 1) // 4))

    with warnings.catch_warnings(record=True) as caught:  # the resume itself runs in this process
        warnings.simplefilter("always")
        assert main([*args, "--ckpt_path", "last"]) == 0
    assert not [w for w in caught if "not resumable" in str(w.message)]  # Lightning sees stateful loaders
    got = _weights(run)
    assert got.keys() == expected.keys() and any(k.startswith("teacher.") for k in got)
    diff = max((got[k].double() - expected[k].double()).abs().max().item() for k in got)
    print(f"{sig.name}: resumed at step {left['global_step']} (batch {batch}): max |diff| {diff:.3g}")
    assert diff <= 1e-6
