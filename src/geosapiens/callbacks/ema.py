"""Mean-teacher EMA update as a Lightning callback (SPEC §6; reference/anchors-uda-lightning.md §4c).

The LightningModule owns both networks as submodules, ``student`` and ``teacher``: the teacher is called
inside ``training_step``, lives in the module's ``state_dict`` (so checkpoints and ``--ckpt_path last``
restore it) and, with ``requires_grad=False``, is ignored by DDP. This callback only keeps it an exponential
moving average of the student. Lightning's own ``EMAWeightAveraging`` does not fit that role: its average is
private to the callback and deep-copies the whole module.

Maths follow timm's ``ModelEmaV3``: :meth:`EMATeacher.get_decay` (optional warm-up) apart from
:meth:`EMATeacher.update_teacher`, a ``torch._foreach_lerp_`` over floating-point parameters; buffers
(BatchNorm running statistics, counters) are copied from the student. Updates follow Lightning's
``WeightAveraging`` discipline: one per optimiser step, detected by ``trainer.global_step`` advancing, so
gradient-accumulation micro-batches never update the teacher.

Across ranks (DDP, FSDP) parameters agree after each optimiser step, but buffers do not: DDP broadcasts rank
0's buffers at the START of each forward, and the forward then updates BatchNorm statistics from the rank's
own batch (FSDP never syncs buffers). Copied as they are, the teachers of different ranks would differ and
the checkpoint would hold rank 0's. So the callback averages the student's floating-point buffers over ranks
before each update, and takes the non-finite skip decision jointly, so that every rank skips together.
"""

from __future__ import annotations

import operator
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

__all__ = ["EMATeacher"]


class EMATeacher(L.Callback):
    """Keep ``pl_module.<teacher>`` an EMA of ``pl_module.<student>``, updated after every optimiser step.

    ``teacher = decay * teacher + (1 - decay) * student`` over parameters; buffers are copied. The teacher is
    frozen (``requires_grad=False``) and kept in eval mode during training (dropout off, BatchNorm on running
    statistics), since Lightning switches the whole module to train mode each epoch. An update is skipped and
    counted when the student holds a non-finite parameter or buffer, so one diverged step cannot poison the
    teacher.

    Decay (timm ``ModelEmaV3.get_decay``): with ``step`` the number of optimiser steps taken,
    ``s = step - update_after_step - 1``; ``s <= 0`` gives 0 (the teacher copies the student), otherwise
    ``decay``, or with ``warmup`` ``clip(1 - (1 + s / warmup_gamma) ** -warmup_power, min_decay, decay)``
    (gamma 1 and power 1 is mean teacher's ``min(1 - 1 / (s + 1), decay)``).

    Args:
        decay: EMA decay (SPEC: 0.999).
        warmup: ramp the decay up from 0 (useful when the teacher starts far from a converged student).
        warmup_gamma: warm-up time scale in steps.
        warmup_power: warm-up exponent.
        min_decay: lower bound of the warmed-up decay.
        update_after_step: optimiser steps during which the teacher just copies the student.
        student: attribute path of the student on the LightningModule (dots allowed).
        teacher: attribute path of the teacher.
    """

    def __init__(
        self,
        decay: float = 0.999,
        *,
        warmup: bool = False,
        warmup_gamma: float = 1.0,
        warmup_power: float = 2.0 / 3.0,
        min_decay: float = 0.0,
        update_after_step: int = 0,
        student: str = "student",
        teacher: str = "teacher",
    ) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.warmup_gamma = warmup_gamma
        self.warmup_power = warmup_power
        self.min_decay = min_decay
        self.update_after_step = update_after_step
        self.student_attr = student
        self.teacher_attr = teacher
        self.last_step = 0
        self.num_updates = 0
        self.skipped_updates = 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(student=self.student_attr, teacher=self.teacher_attr)

    def modules(self, pl_module: L.LightningModule) -> tuple[nn.Module, nn.Module]:
        """The ``(student, teacher)`` submodules of ``pl_module``."""
        get = operator.attrgetter
        return get(self.student_attr)(pl_module), get(self.teacher_attr)(pl_module)

    def get_decay(self, step: int | None = None) -> float:
        """Decay for the update after optimiser step ``step`` (None: the plain ``decay``)."""
        if step is None:
            return self.decay
        s = max(0, step - self.update_after_step - 1)
        if s <= 0:
            return 0.0
        if not self.warmup:
            return self.decay
        warm = 1.0 - (1.0 + s / self.warmup_gamma) ** -self.warmup_power
        return max(min(warm, self.decay), self.min_decay)

    @staticmethod
    @torch.no_grad()
    def average_buffers(module: nn.Module, strategy: Strategy) -> None:
        """Replace ``module``'s floating-point buffers by their mean over ranks (one collective per dtype)."""
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for buf in module.buffers():
            if buf.is_floating_point():
                by_dtype.setdefault(buf.dtype, []).append(buf)
        for bufs in by_dtype.values():
            flat = torch.cat([b.reshape(-1) for b in bufs])
            mean = strategy.reduce(flat, reduce_op="mean")
            for buf, value in zip(bufs, mean.split([b.numel() for b in bufs]), strict=True):
                buf.copy_(value.view_as(buf))

    @torch.no_grad()
    def update_teacher(
        self,
        student: nn.Module,
        teacher: nn.Module,
        step: int | None = None,
        strategy: Strategy | None = None,
    ) -> bool:
        """One EMA update; returns False (and counts it) when skipped for non-finite student weights.

        With a multi-process ``strategy``, the student's buffers are first averaged over ranks and the skip is
        decided for all ranks at once (a sharded rank sees only its slice of the weights).
        """
        s_params, t_params = dict(student.named_parameters()), dict(teacher.named_parameters())
        s_bufs, t_bufs = dict(student.named_buffers()), dict(teacher.named_buffers())
        if s_params.keys() != t_params.keys() or s_bufs.keys() != t_bufs.keys():
            missing = sorted((s_params.keys() ^ t_params.keys()) | (s_bufs.keys() ^ t_bufs.keys()))
            raise ValueError(f"student and teacher differ in structure: {missing[:10]}")
        distributed = strategy is not None and strategy.world_size > 1
        if distributed:
            self.average_buffers(student, strategy)
        floats = [t for t in (*s_params.values(), *s_bufs.values()) if t.is_floating_point()]
        finite = not floats or bool(torch.stack([torch.isfinite(t).all() for t in floats]).all())
        if distributed:
            finite = strategy.reduce_boolean_decision(finite, all=True)
        if not finite:
            self.skipped_updates += 1
            rank_zero_warn(
                f"EMATeacher: student has non-finite weights at step {step}; teacher update skipped "
                f"({self.skipped_updates} so far)"
            )
            return False
        weight = 1.0 - self.get_decay(step)
        pairs = [(t_params[k], s_params[k]) for k in t_params if t_params[k].is_floating_point()]
        if pairs:
            ema, live = zip(*pairs, strict=True)
            if all(e.dtype == v.dtype for e, v in pairs):
                torch._foreach_lerp_(list(ema), list(live), weight)
            else:
                for e, v in pairs:
                    e.lerp_(v.to(e.dtype), weight)
        for k, t in t_bufs.items():
            t.copy_(s_bufs[k])
        self.num_updates += 1
        return True

    @staticmethod
    def _freeze(teacher: nn.Module) -> None:
        teacher.requires_grad_(False)
        teacher.eval()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        student, teacher = self.modules(pl_module)
        if student is teacher:
            raise ValueError(
                f"EMATeacher: {self.student_attr!r} and {self.teacher_attr!r} are the same module"
            )
        self._freeze(teacher)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._freeze(self.modules(pl_module)[1])  # the fit loop calls module.train() at every epoch start

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step  # optimiser steps taken so far: 1 after the first one
        if step > self.last_step:
            self.update_teacher(*self.modules(pl_module), step=step, strategy=trainer.strategy)
            self.last_step = step
        pl_module.log("ema/decay", self.get_decay(step), on_step=True, on_epoch=False)
        pl_module.log("ema/skipped", float(self.skipped_updates), on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {
            "last_step": self.last_step,
            "num_updates": self.num_updates,
            "skipped_updates": self.skipped_updates,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_step = int(state_dict["last_step"])
        self.num_updates = int(state_dict["num_updates"])
        self.skipped_updates = int(state_dict["skipped_updates"])
