"""Test helper: ``geosapiens fit`` on several processes, each rank saving what it ends training with.

Run as a script, never imported by pytest: Lightning's ``ddp`` launcher re-executes ``sys.argv`` for the other
ranks, so the command must be this file and not the pytest process (reference/stack.md §5)::

    python tests/distributed_fit.py OUT_DIR --config ... --trainer.devices 2 --trainer.strategy ddp

Every rank writes ``OUT_DIR/rank<r>.pt``: its global step, its full student/teacher weights and buffers
(gathered first under FSDP; names as in the checkpoint's ``state_dict``), the LOCAL counts of its last
validation PCK (taken before torchmetrics syncs them) and the logged metrics (after the sync). Saved at
``on_train_end``: later, ``trainer.validate`` would re-wrap the model, and DDP's constructor broadcasts rank
0's buffers, hiding any difference between ranks.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
from torch import nn

from geosapiens.cli.main import trainer_cli


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy on CPU ranks (gloo), for tests only. Lightning refuses ``FSDPStrategy``
    without a GPU and hands FSDP ``device_id=None``, which torch's FSDP1 rejects on a machine without an
    accelerator; it accepts ``device_id=cpu``. Everything else (wrapping policy, activation checkpointing,
    optimiser, checkpoint saving) is Lightning's. Select it as ``distributed_fit.CPUFSDPStrategy`` with
    ``tests`` on ``PYTHONPATH``."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = FullyShardedDataParallel(
            module=model,
            cpu_offload=self.cpu_offload,
            mixed_precision=self.mixed_precision_config,
            sharding_strategy=self.sharding_strategy,
            device_id=torch.device("cpu"),
            **self.kwargs,
        )
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model


def _clean(name: str) -> str:
    """A parameter's name without the FSDP and activation-checkpointing wrappers: its checkpoint key."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


class SaveRankState(L.Callback):
    """Save each rank's weights after every optimiser step, its local PCK counts and the logged metrics."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.val_counts: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, torch.Tensor]] = []  # [i]: after optimiser step i + 1 and its EMA update

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # callbacks run before the module's hook, which computes (syncs) and resets the metric
        metric = pl_module.val_pck
        self.val_counts = {k: getattr(metric, k).clone() for k in ("correct", "count", "excluded")}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        # EMATeacher (a module callback) runs after this one at batch end, so the state of the previous step
        # is complete here, at the start of the next batch
        if trainer.global_step > len(self.history):
            self.history.append(self.weights(trainer, pl_module))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # before teardown unwraps the model and ends the process group
        self.history.append(self.weights(trainer, pl_module))
        groups = trainer.optimizers[0].param_groups
        torch.save(
            {
                "global_step": trainer.global_step,
                "history": self.history,
                "state": self.history[-1],
                "weight_decays": sorted({g["weight_decay"] for g in groups if g["params"]}),
                "val_counts": self.val_counts,
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            },
            self.out / f"rank{trainer.global_rank}.pt",
        )

    @staticmethod
    def weights(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """Student and teacher parameters and buffers, whole (gathered under FSDP), by checkpoint key."""
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        wrapped = trainer.strategy.model
        gather = (
            FSDP.summon_full_params(wrapped, writeback=False)
            if isinstance(wrapped, FSDP)
            else contextlib.nullcontext()
        )
        with gather:
            tensors = [*pl_module.named_parameters(), *pl_module.named_buffers()]
            return {
                _clean(name): t.detach().clone()
                for name, t in tensors
                if name.startswith(("model.", "teacher."))
            }


def main(argv: list[str]) -> int:
    out, *args = argv
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    cli = trainer_cli(args, run=False)
    cli.trainer.callbacks.append(SaveRankState(out_dir))
    cli.trainer.fit(cli.model, cli.datamodule)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
