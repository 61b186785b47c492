"""TestResultsWriter after a real ``Trainer.test``: the logged values, the run identity, atomic writes."""

from __future__ import annotations

import json
from datetime import datetime

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from geosapiens.callbacks.results import TestResultsWriter
from geosapiens.io import atomic_write, atomic_write_file
from geosapiens.metrics.results import NO_PREDICTION, RESULTS_FILENAME

# Dyadic values: exact in the float32 tensors self.log keeps.
LOGGED = {"test/pck@0.1": 0.75, "test/pck@0.1/nose": 0.25, "test/AP": 0.625, "test/g_error": 0.03125}


class LoggingStage(L.LightningModule):
    def __init__(self, lr: float = 0.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = torch.nn.Linear(2, 1)

    def test_step(self, batch, batch_idx):
        self.log_dict({k: torch.tensor(v) for k, v in LOGGED.items()}, batch_size=len(batch[0]))
        self.log("test/nan_metric", float("nan"), batch_size=len(batch[0]))

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", 1.0, batch_size=len(batch[0]))


class TinyData(L.LightningDataModule):
    def __init__(self, n: int = 6) -> None:
        super().__init__()
        self.save_hyperparameters()

    def test_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(self.hparams.n, 2)), batch_size=2)


def test_writes_logged_test_metrics_and_run_identity(tmp_path):
    L.seed_everything(123)
    writer = TestResultsWriter()
    logger = CSVLogger(tmp_path, name="run")
    trainer = L.Trainer(
        accelerator="cpu",
        logger=logger,
        callbacks=[writer],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(LoggingStage(), datamodule=TinyData())
    path = tmp_path / "run" / "version_0" / RESULTS_FILENAME
    assert writer.last_path == path
    data = json.loads(path.read_text())
    assert data["format"] == 1
    assert data["metrics"] == LOGGED | {"test/nan_metric": None}  # NaN written as null; val/* left out
    run = data["run"]
    assert run["stage"] == f"{LoggingStage.__module__}.LoggingStage"
    assert run["datamodule"] == f"{TinyData.__module__}.TinyData"
    assert run["seed"] == 123 and run["checkpoint"] is None
    assert run["hparams"] == {"lr": 0.5} and run["datamodule_hparams"] == {"n": 6}
    assert run["logger"]["name"] == "run" and run["logger"]["version"] == 0
    assert abs((datetime.now().astimezone() - datetime.fromisoformat(run["timestamp"])).total_seconds()) < 120
    assert "pck_curve" not in data


def test_explicit_folder_and_curve_from_the_module(tmp_path):
    stage = LoggingStage()
    stage.test_pck_curve = {"thresholds": [0.0, 0.1], "pck": [0.0, float("nan")], "norm": "bbox"}
    writer = TestResultsWriter(tmp_path / "out")
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[writer], enable_progress_bar=False)
    trainer.test(stage, dataloaders=DataLoader(TensorDataset(torch.zeros(2, 2)), batch_size=2))
    data = json.loads((tmp_path / "out" / RESULTS_FILENAME).read_text())
    assert data["pck_curve"] == {"thresholds": [0.0, 0.1], "pck": [0.0, None], "norm": "bbox"}
    assert data["run"]["logger"] is None and data["run"]["datamodule"] is None


def test_per_sample_errors_from_the_module(tmp_path):
    stage = LoggingStage()
    inf, nan = float("inf"), float("nan")
    stage.test_samples = {
        "norm": "bbox", "keypoints": ["a", "b"], "index": [0, 3], "errors": [[0.5, nan], [inf, 0.25]]
    }
    writer = TestResultsWriter(tmp_path)
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[writer], enable_progress_bar=False)
    trainer.test(stage, dataloaders=DataLoader(TensorDataset(torch.zeros(2, 2)), batch_size=2))
    data = json.loads((tmp_path / RESULTS_FILENAME).read_text())
    # not scored -> null; scored without a prediction -> NO_PREDICTION (wrong at any threshold)
    assert data["per_sample"] == {
        "norm": "bbox",
        "keypoints": ["a", "b"],
        "index": [0, 3],
        "errors": [[0.5, None], [NO_PREDICTION, 0.25]],
    }


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = atomic_write_file(tmp_path / "a" / "f.txt", "old\n")
    with pytest.raises(RuntimeError), atomic_write(path, "w") as f:
        f.write("half")
        raise RuntimeError("crash while writing")
    assert path.read_text() == "old\n"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]  # the temporary file is gone
    atomic_write_file(path, b"new")
    assert path.read_bytes() == b"new"
