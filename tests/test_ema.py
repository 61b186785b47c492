"""EMA teacher: exact values through a real Lightning Trainer with gradient accumulation, buffers copied,
non-finite students refused, teacher kept frozen and in eval mode, state and weights restored on resume."""

from __future__ import annotations

import copy
import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from geosapiens.callbacks.ema import EMATeacher


class MeanTeacherToy(L.LightningModule):
    """A student with BatchNorm and a teacher that starts elsewhere, so the first (copy) update is visible."""

    def __init__(self, nan_from_step: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
        self.teacher = copy.deepcopy(self.student)
        with torch.no_grad():
            for p in self.teacher.parameters():
                p.add_(1.0)
        self.nan_from_step = nan_from_step
        self.teacher_modes: list[bool] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.teacher_modes.append(self.teacher.training)
        with torch.no_grad():
            self.teacher(x)
        loss = F.mse_loss(self.student(x), y)
        if self.nan_from_step is not None and self.global_step >= self.nan_from_step:
            loss = loss * float("nan")
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.student.parameters(), lr=0.1)


class Recorder(L.Callback):
    """Snapshots after every batch (placed after EMATeacher, so it sees the updated teacher)."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.rows: list[tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = []

    def on_train_start(self, trainer, pl_module):
        self.start = {k: v.detach().clone() for k, v in pl_module.teacher.state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        snap = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
        self.rows.append((trainer.global_step, snap(pl_module.student), snap(pl_module.teacher)))


def loader(n: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    return DataLoader(
        TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 2, generator=g)), batch_size=2
    )


def fit(module: L.LightningModule, callbacks: list, tmp_path, **kwargs) -> L.Trainer:
    defaults = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_model_summary": False}
    trainer = L.Trainer(
        **(defaults | kwargs), enable_progress_bar=False, default_root_dir=tmp_path, callbacks=callbacks
    )
    trainer.fit(module, loader())
    return trainer


def test_teacher_is_ema_after_each_optimiser_step_not_micro_steps(tmp_path):
    decay = 0.9
    ema, rec = EMATeacher(decay=decay), Recorder()
    module = MeanTeacherToy()
    fit(module, [ema, rec], tmp_path, max_epochs=1, accumulate_grad_batches=2, enable_checkpointing=False)

    assert [r[0] for r in rec.rows] == [0, 1, 1, 2, 2, 3, 3, 4]  # 8 micro-batches, 4 optimiser steps
    assert ema.num_updates == 4 and ema.last_step == 4 and ema.skipped_updates == 0
    prev, prev_step = rec.start, 0
    params = {k for k, _ in module.teacher.named_parameters()}
    for step, student, teacher in rec.rows:
        if step == prev_step:  # accumulation micro-step: the teacher must not move
            assert all(torch.equal(teacher[k], prev[k]) for k in teacher)
            continue
        d = 0.0 if step == 1 else decay  # timm ModelEmaV3: the first update copies the student
        for k in teacher:
            expected = d * prev[k] + (1 - d) * student[k] if k in params else student[k]  # buffers copied
            torch.testing.assert_close(teacher[k], expected, rtol=0, atol=1e-6)
        prev, prev_step = teacher, step
    # the teacher really differs from the student by now (not a copy), and moved from where it started
    last_student, last_teacher = rec.rows[-1][1], rec.rows[-1][2]
    assert (last_teacher["0.weight"] - last_student["0.weight"]).abs().max() > 1e-4
    assert torch.equal(last_teacher["1.running_mean"], last_student["1.running_mean"])
    assert int(last_teacher["1.num_batches_tracked"]) == 8


def test_teacher_stays_frozen_and_in_eval_mode(tmp_path):
    module = MeanTeacherToy()
    fit(module, [EMATeacher()], tmp_path, max_epochs=2, enable_checkpointing=False)
    assert len(module.teacher_modes) == 16 and not any(module.teacher_modes)
    assert not any(p.requires_grad for p in module.teacher.parameters())
    assert all(p.requires_grad for p in module.student.parameters())


def test_non_finite_student_is_not_absorbed(tmp_path):
    ema, rec = EMATeacher(decay=0.5), Recorder()
    module = MeanTeacherToy(nan_from_step=3)  # the 4th optimiser step writes NaN into the student
    with pytest.warns(UserWarning, match="non-finite"):
        fit(module, [ema, rec], tmp_path, max_steps=6, enable_checkpointing=False)
    assert not all(torch.isfinite(p).all() for p in module.student.parameters())
    assert all(torch.isfinite(v).all() for v in module.teacher.state_dict().values() if v.is_floating_point())
    assert ema.num_updates == 3 and ema.skipped_updates == 3 and ema.last_step == 6
    after_three = rec.rows[2][2]
    assert all(torch.equal(module.teacher.state_dict()[k], after_three[k]) for k in after_three)


def test_update_refuses_non_finite_buffers_and_mismatched_modules():
    ema = EMATeacher(decay=0.5)
    student = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    teacher = copy.deepcopy(student)
    student[1].running_var.fill_(float("inf"))
    with pytest.warns(UserWarning):
        assert ema.update_teacher(student, teacher, step=5) is False
    assert torch.isfinite(teacher[1].running_var).all() and ema.skipped_updates == 1
    with pytest.raises(ValueError, match="differ in structure"):
        ema.update_teacher(nn.Linear(3, 3), nn.Sequential(nn.Linear(3, 3)), step=5)


def test_decay_schedule_matches_timm():
    assert EMATeacher(decay=0.999).get_decay(1) == 0.0
    assert EMATeacher(decay=0.999).get_decay(2) == 0.999
    assert EMATeacher(decay=0.999).get_decay(None) == 0.999
    late = EMATeacher(decay=0.99, update_after_step=3)
    assert [late.get_decay(s) for s in (1, 4, 5)] == [0.0, 0.0, 0.99]
    mean_teacher = EMATeacher(decay=0.999, warmup=True, warmup_gamma=1.0, warmup_power=1.0)
    assert mean_teacher.get_decay(2) == pytest.approx(0.5)  # min(1 - 1 / (s + 1), decay) with s = 1
    assert mean_teacher.get_decay(11) == pytest.approx(1 - 1 / 11)
    assert mean_teacher.get_decay(100_000) == 0.999
    timm_like = EMATeacher(decay=0.9999, warmup=True)  # gamma 1, power 2/3
    assert timm_like.get_decay(1001) == pytest.approx(1 - 1001 ** (-2 / 3))
    with pytest.raises(ValueError):
        EMATeacher(decay=1.5)


def test_state_and_teacher_weights_survive_a_resume(tmp_path):
    ema = EMATeacher(decay=0.9)
    module = MeanTeacherToy()
    trainer = fit(module, [ema], tmp_path, max_steps=4, enable_checkpointing=False)
    path = tmp_path / "mt.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["callbacks"][ema.state_key] == {"last_step": 4, "num_updates": 4, "skipped_updates": 0}
    saved_teacher = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("teacher.")}
    assert torch.equal(saved_teacher["teacher.0.weight"], module.teacher[0].weight)

    seen = {}

    class AtStart(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["state"] = resumed.state_dict()
            seen["teacher"] = pl_module.teacher[0].weight.detach().clone()

    resumed = EMATeacher(decay=0.9)
    fresh = MeanTeacherToy()  # teacher initialised elsewhere: the checkpoint must overwrite it
    L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        max_steps=6,
        callbacks=[resumed, AtStart()],
    ).fit(fresh, loader(), ckpt_path=path)
    assert seen["state"] == {"last_step": 4, "num_updates": 4, "skipped_updates": 0}
    assert torch.equal(seen["teacher"], saved_teacher["teacher.0.weight"])
    assert resumed.last_step == 6 and resumed.num_updates == 6
    assert math.isfinite(float(fresh.teacher[0].weight.sum()))


class PoisonRankOne(L.Callback):
    """Placed before EMATeacher: after the second step rank 1 alone holds a non-finite student weight (what a
    rank sees when only its FSDP shard diverged)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step == 2:
            with torch.no_grad():
                pl_module.student[2].bias[0] = float("nan")


class SaveRank(L.Callback):
    def __init__(self, out) -> None:
        self.out = out

    def on_train_end(self, trainer, pl_module):
        ema = next(c for c in trainer.callbacks if isinstance(c, EMATeacher))
        torch.save(
            {
                "teacher": pl_module.teacher.state_dict(),
                "updates": ema.num_updates,
                "skipped": ema.skipped_updates,
            },
            self.out / f"rank{trainer.global_rank}.pt",
        )


@pytest.mark.slow
def test_ranks_share_buffers_and_skip_together(tmp_path):
    """Two gloo ranks (ddp_spawn) with different batches. Step 1: the BatchNorm statistics the teacher copies
    are the ranks' average, identical on both. Step 2: a non-finite student on rank 1 only makes BOTH ranks
    skip the update, so the teachers stay identical."""
    from geosapiens.callbacks.teardown import DestroyProcessGroup

    callbacks = [PoisonRankOne(), EMATeacher(decay=0.5), SaveRank(tmp_path), DestroyProcessGroup()]
    # the ranks' warnings stay in the spawned processes
    fit(
        MeanTeacherToy(),
        callbacks,
        tmp_path,
        devices=2,
        strategy="ddp_spawn",
        max_steps=2,
        enable_checkpointing=False,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [(r["updates"], r["skipped"]) for r in ranks] == [(1, 1), (1, 1)]
    first, second = ranks[0]["teacher"], ranks[1]["teacher"]
    assert first["1.running_mean"].abs().max() > 0  # statistics were taken
    for name in first:
        assert torch.equal(first[name], second[name]), name
