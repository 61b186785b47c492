"""Runs that fail safe: a SIGTERM (cluster pre-emption, ``scancel``) saves a resumable checkpoint first; a
step with non-finite gradients is skipped, never applied."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM, save ``last.ckpt`` where ``--ckpt_path last`` looks for it, then let the run stop.

    Lightning turns SIGTERM into a ``SIGTERMException`` at the next batch boundary, so the checkpoint holds a
    consistent mid-epoch state (model, EMA teacher, optimiser, loops) that resumes exactly there.
    """

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException) or not trainer.training:
            return
        callback = trainer.checkpoint_callback
        folder = Path(callback.dirpath) if callback is not None and callback.dirpath else None
        folder = folder or Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        path = folder / "last.ckpt"
        trainer.save_checkpoint(path)
        rank_zero_warn(f"SIGTERM: saved {path} at step {trainer.global_step}; resume with --ckpt_path last")


class LastCheckpointAtEnd(L.Callback):
    """When training ends normally, every ``save_last`` checkpoint callback's ``last.ckpt`` holds the final
    state.

    Lightning 2.6 writes ``last.ckpt`` only in a step where it also saves a top-k checkpoint (a monitored
    metric that improved, or a step/epoch interval), so a run that ends between those leaves ``last.ckpt``
    behind the final step and ``--ckpt_path last`` would silently resume from older weights.
    """

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        written: set[Path] = set()
        for callback in trainer.checkpoint_callbacks:
            if not getattr(callback, "save_last", False) or not callback.dirpath:
                continue
            path = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
            if path not in written:
                trainer.save_checkpoint(path)  # collective: every rank calls it, rank 0 writes
                written.add(path)
            callback.last_model_path = str(path)


class SkipNonFiniteSteps(L.Callback):
    """Skip an optimiser step whose gradients are not finite; stop after ``max_in_row`` such steps in a row.

    The gradients are set to None, so AdamW leaves every weight, moment and decay untouched. The decision is
    reduced over ranks (a sharded FSDP rank sees only its gradient shard), so DDP and FSDP ranks agree.

    Args:
        max_in_row: non-finite steps in a row tolerated (each skipped and counted) before the run stops with
            a ``FloatingPointError``.
    """

    def __init__(self, max_in_row: int = 20) -> None:
        self.max_in_row = max_in_row
        self.in_row, self.total = 0, 0

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        finite = not grads or bool(torch.stack([g.isfinite().all() for g in grads]).all())
        if trainer.strategy.reduce_boolean_decision(finite, all=True):
            self.in_row = 0
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        self.in_row += 1
        self.total += 1
        pl_module.log("train/nonfinite_steps", float(self.total), reduce_fx="max")
        if self.in_row > self.max_in_row:
            raise FloatingPointError(
                f"{self.in_row} optimiser steps in a row had non-finite gradients (step "
                f"{trainer.global_step}); lower the learning rate or check the data. The last good weights "
                "are in the last checkpoint."
            )
