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

from geosapiens.cli import trainer_cli


class SaveRankState(L.Callback):
    """Save each rank's final weights, local PCK counts and logged metrics."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.val_counts: dict[str, torch.Tensor] = {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # callbacks run before the module's hook, which computes (syncs) and resets the metric
        metric = pl_module.val_pck
        self.val_counts = {k: getattr(metric, k).clone() for k in ("correct", "count", "excluded")}

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        wrapped = trainer.strategy.model
        gather = (
            FSDP.summon_full_params(wrapped, writeback=False)
            if isinstance(wrapped, FSDP)
            else contextlib.nullcontext()
        )
        with gather:
            tensors = [*pl_module.named_parameters(), *pl_module.named_buffers()]
            state = {
                name.replace("_fsdp_wrapped_module.", ""): t.detach().clone()
                for name, t in tensors
                if name.startswith(("model.", "teacher."))
            }
        torch.save(
            {
                "global_step": trainer.global_step,
                "state": state,
                "val_counts": self.val_counts,
                "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
            },
            self.out / f"rank{trainer.global_rank}.pt",
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.save(trainer, pl_module)  # before teardown unwraps the model and ends the process group


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
