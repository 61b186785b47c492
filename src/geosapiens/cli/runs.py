"""A training run's folder: where its checkpoints are, what ``--ckpt_path last|best`` means in a new process.

Lightning puts checkpoints under the first logger's run id (``<save_dir>/<name>/<version>/checkpoints``). A
W&B logger draws that id anew in every process, so ``--ckpt_path last`` looked in an empty folder, and
Lightning only warned and trained from scratch; ``best`` was known only to the process that trained. Here
the checkpoint folder is ``<trainer.default_root_dir>/checkpoints`` (a ``ModelCheckpoint`` may still name
its own ``dirpath``), ``last`` and ``best`` are files in it, and a missing one is an error naming the
folder. A fresh ``fit`` into a folder that already holds checkpoints is refused too: its ``best.ckpt``
would be the earlier run's.
"""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment

from geosapiens.callbacks.selection import BestCheckpoint
from geosapiens.callbacks.wandb_resume import bind_run_id
from geosapiens.errors import UsageError

__all__ = [
    "CHECKPOINT_DIRNAME",
    "bind_wandb_runs",
    "checkpoint_folders",
    "finish_wandb_runs",
    "keep_csv_logs",
    "resolve_ckpt_path",
    "stable_checkpoint_folders",
]

CHECKPOINT_DIRNAME = "checkpoints"
SPECIAL_PATHS = ("hpc", "registry")  # left to Lightning


def stable_checkpoint_folders(trainer) -> None:
    """Point every ``ModelCheckpoint`` without a ``dirpath`` at ``<default_root_dir>/checkpoints``."""
    folder = os.path.realpath(os.path.join(trainer.default_root_dir, CHECKPOINT_DIRNAME))
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = folder


def checkpoint_folders(trainer) -> list[Path]:
    """The run's checkpoint folders, first ``ModelCheckpoint`` first (``<default_root_dir>/checkpoints``
    when there is none)."""
    folders = [Path(cb.dirpath) for cb in trainer.checkpoint_callbacks if getattr(cb, "dirpath", None)]
    folders = folders or [Path(trainer.default_root_dir) / CHECKPOINT_DIRNAME]
    return list(dict.fromkeys(folders))


def _names(folders: list[Path]) -> str:
    return ", ".join(str(f) for f in folders)


def _best_files(trainer, folders: list[Path]) -> list[Path]:
    """Where the monitored ``ModelCheckpoint`` keeps its best model when its filename is fixed (``best``); a
    :class:`BestCheckpoint` reads its monitor from the module at setup, after this is asked."""
    files = []
    for cb in trainer.checkpoint_callbacks:
        monitored = isinstance(cb, BestCheckpoint) or (isinstance(cb, ModelCheckpoint) and cb.monitor)
        if monitored and cb.filename and "{" not in cb.filename:
            files.append(Path(cb.dirpath) / f"{cb.filename}{cb.FILE_EXTENSION}")
    return files or [f / f"best{ModelCheckpoint.FILE_EXTENSION}" for f in folders]


def _slurm_requeue(trainer) -> bool:
    """Lightning resumes a requeued SLURM job from ``hpc_ckpt_*.ckpt`` by itself when no path is given."""
    root = Path(trainer.default_root_dir)
    return SLURMEnvironment.detect() and any(root.glob("hpc_ckpt_*.ckpt"))


def resolve_ckpt_path(trainer, ckpt_path: str | None, verb: str) -> str | None:
    """``--ckpt_path`` as a file (``last``: the newest ``last*.ckpt``; ``best``: the monitored checkpoint's
    ``best.ckpt``), or a :class:`UsageError` naming the folder it looked in."""
    folders = checkpoint_folders(trainer)
    if ckpt_path is None:
        if verb == "fit" and not _slurm_requeue(trainer):
            used = sorted({p.name for f in folders for p in f.glob("*.ckpt")})
            if used:
                raise UsageError(
                    f"{_names(folders)} holds checkpoints of an earlier run ({', '.join(used[:3])}): resume "
                    "it with --ckpt_path last, or give this run its own --trainer.default_root_dir"
                )
        return None
    ckpt_path = str(ckpt_path)
    if ckpt_path == "last":
        found = [p for f in folders for p in f.glob("last*.ckpt")]
        if not found:
            raise UsageError(
                f"--ckpt_path last: no last.ckpt in {_names(folders)} (the run folder "
                "<trainer.default_root_dir>/checkpoints); start without --ckpt_path, or pass a checkpoint"
            )
        return str(max(found, key=lambda p: p.stat().st_mtime))
    if ckpt_path == "best":
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if best:  # the same process trained it
            return best
        found = [p for p in _best_files(trainer, folders) if p.is_file()]
        if not found:
            raise UsageError(
                f"--ckpt_path best: no {_best_files(trainer, folders)[0].name} in {_names(folders)} (written "
                "by the config's BestCheckpoint, filename: best); pass a checkpoint file"
            )
        return str(found[0])
    if ckpt_path.split(":")[0] in SPECIAL_PATHS:
        return ckpt_path
    if not Path(ckpt_path).is_file():
        raise UsageError(f"--ckpt_path {ckpt_path}: no such checkpoint file")
    return ckpt_path


def keep_csv_logs(trainer, verb: str) -> list[Path]:
    """Move each ``CSVLogger`` whose fixed folder already holds a ``metrics.csv`` to the next free
    ``<folder>/<verb>/version_<n>``; returns the new folders.

    Lightning's CSV writer deletes the ``metrics.csv`` it finds in its folder, and the demo configs fix the
    folder (``version: ""``), so ``test``/``predict`` from a config header (or a resumed ``fit``) erased the
    training log. Must run before the logger writes anything (the CLI's ``before_<verb>`` hook).
    """
    moved = []
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger) or logger._experiment is not None or logger._version is None:
            continue
        folder = Path(logger.log_dir)
        if not (folder / "metrics.csv").is_file():
            continue
        version = logger._version if isinstance(logger._version, str) else f"version_{logger._version}"
        n = 0
        while (folder / verb / f"version_{n}").exists():
            n += 1
        logger._version = os.path.join(version, verb, f"version_{n}")
        moved.append(Path(logger.log_dir))
    return moved


def bind_wandb_runs(trainer, resume: bool) -> None:
    """Give every W&B logger the run recorded in the checkpoint folder (resume) or a new one it records."""
    resume = resume or _slurm_requeue(trainer)
    folder = checkpoint_folders(trainer)[0]
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            bind_run_id(logger, folder, resume=resume, write=trainer.is_global_zero)


def finish_wandb_runs(trainer) -> None:
    """Close the W&B runs a command opened: the command is over, and the next command of the same process
    (the demo, tests) or a resumed job may need the same run id."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger._experiment.finish()
