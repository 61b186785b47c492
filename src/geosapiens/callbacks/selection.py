"""Model selection: the checkpoint of the task's own validation metric, named nowhere else.

A task says by which metric its checkpoints are selected (its class's ``monitor``: ``val/pck@0.1`` for every
pose stage, ``val/rec`` for the pose prior); a config asks for :class:`BestCheckpoint` and never repeats it.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal

import lightning.pytorch as L
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = ["BestCheckpoint"]


class BestCheckpoint(ModelCheckpoint):
    """A :class:`~lightning.pytorch.callbacks.ModelCheckpoint` whose ``monitor`` is the LightningModule's
    ``monitor``, read when the trainer sets up (before a resumed run restores the callback's state).

    ``<dirpath>/best.ckpt`` is what ``--ckpt_path best`` reads. The arguments are ModelCheckpoint's, less
    ``monitor``; ``mode`` says whether higher (``max``, PCK) or lower (``min``, a loss) is better.
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        filename: str = "best",
        mode: Literal["min", "max"] = "max",
        save_last: bool | Literal["link"] | None = True,
        save_top_k: int = 1,
        save_weights_only: bool = False,
        every_n_train_steps: int | None = None,
        train_time_interval: timedelta | None = None,
        every_n_epochs: int | None = None,
        verbose: bool = False,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            mode=mode,
            save_last=save_last,
            save_top_k=save_top_k,
            save_weights_only=save_weights_only,
            every_n_train_steps=every_n_train_steps,
            train_time_interval=train_time_interval,
            every_n_epochs=every_n_epochs,
            verbose=verbose,
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        monitor = getattr(pl_module, "monitor", None)
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                f"BestCheckpoint: {type(pl_module).__name__} names no validation metric (a class attribute "
                "'monitor'); use a ModelCheckpoint with its own monitor"
            )
        self.monitor = monitor
        super().setup(trainer, pl_module, stage)
