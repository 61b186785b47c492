"""BestCheckpoint: the checkpoint of the task's own validation metric (its class's ``monitor``)."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader

from geosapiens.callbacks.selection import BestCheckpoint
from geosapiens.stages.base import PoseStage
from geosapiens.stages.pose_prior import PosePriorTask


class Scored(L.LightningModule):
    """Validation scores 1, 3, 2 after the epochs 0, 1, 2: the best epoch is 1."""

    monitor = "val/score"

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log(self.monitor, float([1, 3, 2][self.current_epoch]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Unscored(Scored):
    monitor = None


def _fit(module: L.LightningModule, callback: BestCheckpoint, root) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=3, logger=False, callbacks=[callback], default_root_dir=root,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    data = DataLoader(torch.randn(4, 2), batch_size=2)
    trainer.fit(module, data, data)
    return trainer


def test_best_checkpoint_selects_by_the_module_monitor(tmp_path):
    best = BestCheckpoint(dirpath=tmp_path)
    _fit(Scored(), best, tmp_path)
    assert best.monitor == "val/score" and best.best_model_score == 3.0
    assert best.best_model_path == str(tmp_path / "best.ckpt") and (tmp_path / "last.ckpt").is_file()
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["epoch"] == 1


def test_best_checkpoint_lower_is_better_when_asked(tmp_path):
    best = BestCheckpoint(dirpath=tmp_path, mode="min")
    _fit(Scored(), best, tmp_path)
    assert best.best_model_score == 1.0


def test_a_module_without_a_monitor_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="Unscored names no validation metric"):
        _fit(Unscored(), BestCheckpoint(dirpath=tmp_path), tmp_path)


def test_the_tasks_name_their_selection_metric():
    assert PoseStage.monitor == "val/pck@0.1" and PosePriorTask.monitor == "val/rec"
