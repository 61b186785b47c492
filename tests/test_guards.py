"""Numerical faults skip the step (and stop the run when they persist); SIGTERM leaves a resumable ckpt."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from geosapiens.callbacks.guards import SkipNonFiniteSteps
from geosapiens.stages import SupervisedPose

REPO = Path(__file__).resolve().parents[1]


class Crops(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {
            "image": torch.randn(3, 32, 32, generator=g),
            "keypoints": torch.rand(17, 2, generator=g) * 31,
            "weights": torch.ones(17),
        }


class Poisoned(SupervisedPose):
    """Returns a NaN loss on the steps listed in ``poison``."""

    def __init__(self, poison: set[int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.poison = poison
        self.weights_at: dict[int, torch.Tensor] = {}

    def training_step(self, batch, batch_idx):
        self.weights_at[self.global_step] = self.model.head.final_layer.weight.detach().clone()
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step in self.poison else loss


def _fit(module: SupervisedPose, steps: int, guard: SkipNonFiniteSteps | None = None) -> L.Trainer:
    trainer = L.Trainer(
        callbacks=[guard] if guard is not None else None,
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(Crops(), batch_size=4))
    return trainer


def _module(**kwargs) -> Poisoned:
    torch.manual_seed(0)
    return Poisoned(backbone="timm:resnet10t", input_size=(32, 32), flip_test=False, **kwargs)


@pytest.mark.slow
def test_a_nonfinite_step_is_skipped_and_counted():
    module, guard = _module(poison={1}), SkipNonFiniteSteps(max_in_row=3)
    _fit(module, steps=3, guard=guard)
    # step 1's NaN gradients were dropped: the weights going into step 2 equal those going into step 1 ...
    torch.testing.assert_close(module.weights_at[2], module.weights_at[1], rtol=0, atol=0)
    # ... while a healthy step changes them, and nothing non-finite ever reached the weights
    assert not torch.equal(module.weights_at[1], module.weights_at[0])
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert guard.total == 1 and guard.in_row == 0


@pytest.mark.slow
def test_persistent_nonfinite_steps_stop_the_run_with_a_clear_error():
    module = _module(poison=set(range(100)))
    with pytest.raises(FloatingPointError, match="3 optimiser steps in a row had non-finite gradients"):
        _fit(module, steps=10, guard=SkipNonFiniteSteps(max_in_row=2))


@pytest.mark.slow
def test_sigterm_saves_a_resumable_checkpoint(tmp_path):
    data = tmp_path / "data"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "geosapiens.cli.main",
            "data",
            "synth",
            "--out",
            str(data),
            "--preset",
            "tiny",
            "--quiet",
        ],
        check=True,
        cwd=tmp_path,
    )
    run = tmp_path / "run"
    args = [
        "fit",
        "--config",
        str(REPO / "configs/demo/warmup.yaml"),
        "--model.init_args.input_size",
        "[64, 64]",
        "--model.init_args.backbone",
        "timm:resnet10t",
        "--data.init_args.root",
        str(data / "SyRIP"),
        "--data.init_args.input_size",
        "[64, 64]",
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.num_workers",
        "0",
        "--trainer.max_steps",
        "100000",
        "--trainer.val_check_interval",
        "5",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(run),
        "--trainer.logger.init_args.save_dir",
        str(run),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "geosapiens.cli.main", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while not list(run.rglob("*.ckpt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)  # wait for the first epoch's checkpoint: training is under way
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    last = next(run.rglob("last.ckpt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert "SIGTERM: saved" in out, out[-2000:]
    assert ckpt["global_step"] >= 5 and any(k.startswith("model.") for k in ckpt["state_dict"])


@pytest.mark.slow
def test_sigterm_checkpoint_of_a_task_that_is_no_pose_stage_resumes(tmp_path):
    """The run-safety callbacks are the CLI's, for every task: the pose prior (a plain LightningModule, no
    PoseStage) also saves its last.ckpt on SIGTERM, says how to resume, and ``--ckpt_path last`` goes on from
    that step."""
    data = tmp_path / "data"
    synth = ["data", "synth", "--out", str(data), "--preset", "tiny", "--quiet"]
    subprocess.run([sys.executable, "-m", "geosapiens.cli.main", *synth], check=True, cwd=REPO)
    run = tmp_path / "run"
    args = ["fit", "--config", str(REPO / "configs/priors/pose_vae.yaml")]
    args += ["--config", str(REPO / "configs/demo/pose_vae.yaml")]
    args += ["--data.init_args.syrip_root", str(data / "SyRIP"), "--data.init_args.mini_rgbd_root"]
    args += [str(data / "MINI-RGBD_web"), "--data.init_args.mini_rgbd_sequences", '["01"]']
    args += ["--data.init_args.batch_size", "4", "--trainer.max_epochs", "100000"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run)]
    args += ["--trainer.logger.init_args.save_dir", str(run)]
    command = [sys.executable, "-m", "geosapiens.cli.main", *args]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not list(run.rglob("*.ckpt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)  # the first epoch's checkpoint: training is under way
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert "SIGTERM: saved" in out and "resume with --ckpt_path last" in out, out[-2000:]
    assert proc.returncode == 128 + signal.SIGTERM
    last = run / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    step = ckpt["global_step"]
    assert step > 0 and any(k.startswith("vae.") for k in ckpt["state_dict"])
    assert any("RestoreRNG" in k for k in ckpt["callbacks"])  # the global RNG states travel with it

    resumed = subprocess.run(
        [*command, "--trainer.max_steps", str(step + 2), "--ckpt_path", "last"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == step + 2


class _Worsening(L.LightningModule):
    """Its validation metric never improves, so Lightning 2.6 saves neither a best nor a last checkpoint
    after the first validation."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("score", -float(self.global_step))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("at_end", [True, False])
def test_last_checkpoint_holds_the_final_step(tmp_path, at_end):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from geosapiens.callbacks.guards import LastCheckpointAtEnd

    data = DataLoader(torch.randn(8, 2), batch_size=2)
    best = ModelCheckpoint(dirpath=tmp_path, monitor="score", mode="max", save_last=True)
    trainer = L.Trainer(
        max_steps=6,
        val_check_interval=2,
        callbacks=[best, *([LastCheckpointAtEnd()] if at_end else [])],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Worsening(), data, data)
    step = torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"]
    assert step == 6 if at_end else step < 6  # without it, Lightning leaves last.ckpt behind
