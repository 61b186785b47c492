"""SkipBadSamples and BadSampleReport: a bad file stops the run with its own message, or is skipped and
reported, with and without DataLoader worker processes."""

from __future__ import annotations

import gc
import logging
import pickle

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from geosapiens.data.robust import BadSampleReport, SkipBadSamples
from geosapiens.errors import DataError


def bad_file(index: int) -> str:
    return f"/data/MINI-RGBD/01/joints_2Ddep/syn_joints_2Ddep_{index:05d}.txt"


class Flaky(Dataset):
    """``{"x": [i], "index": i}`` for each index; the ``bad`` ones raise DataError naming their file."""

    def __init__(self, n: int, bad: set[int]) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        if index in self.bad:
            raise DataError(bad_file(index), "has 24 lines, expected 25", record=index)
        return {"x": torch.tensor([float(index)]), "index": torch.tensor(index)}


def batches(dataset: Dataset, num_workers: int, batch_size: int = 4) -> list[dict]:
    return list(DataLoader(dataset, batch_size=batch_size, num_workers=num_workers))


def error_of(load) -> Exception:
    """The exception ``load()`` raises, cut from its frames: they hold the DataLoader iterator, whose worker
    processes would linger until the garbage collector frees it (then take 5 s each to stop)."""
    try:
        load()
    except Exception as e:
        error = e
    else:
        raise AssertionError("no exception raised")
    error.__traceback__ = error.__context__ = None
    gc.collect()
    return error


def test_data_error_pickles():
    error = DataError("/x/a.json", "not COCO", "image 3")
    again = pickle.loads(pickle.dumps(error))
    assert (type(again), again.path, again.problem, again.record) == (
        DataError,
        "/x/a.json",
        "not COCO",
        "image 3",
    )


def test_plain_torch_loses_the_data_error_of_a_worker():
    """Why the wrapper exists: torch cannot rebuild a DataError and raises a RuntimeError with a traceback."""
    error = error_of(lambda: batches(Flaky(8, bad={5}), num_workers=2))
    assert type(error) is RuntimeError
    assert str(error).startswith("Caught DataError in DataLoader worker process")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_disabled_the_error_reaches_the_main_process_intact(num_workers):
    error = error_of(lambda: batches(SkipBadSamples(Flaky(8, bad={5}), enabled=False), num_workers))
    assert type(error) is DataError
    assert str(error) == f"{bad_file(5)} [5]: has 24 lines, expected 25"
    assert (error.path, error.problem, error.record) == (bad_file(5), "has 24 lines, expected 25", 5)
    if num_workers:
        (note,) = error.__notes__
        assert note.startswith("(raised in DataLoader worker ") and note.endswith(", sample 5)")
    else:
        assert not hasattr(error, "__notes__")


@pytest.mark.parametrize("num_workers", [0, 2])
def test_enabled_bad_samples_are_replaced_by_the_next_index_and_marked(num_workers):
    data = batches(SkipBadSamples(Flaky(10, bad={2, 7, 9})), num_workers)
    index = torch.cat([b["index"] for b in data]).tolist()
    assert index == [0, 1, 3, 3, 4, 5, 6, 8, 8, 0]  # 9 is the last index: it wraps around to 0
    skipped = torch.cat([b["skipped"] for b in data])
    assert skipped.dtype == torch.int64 and skipped.tolist() == [0, 0, 1, 0, 0, 0, 0, 1, 0, 1]
    errors = [e for b in data for e in b["skipped_error"]]
    assert errors[2] == f"{bad_file(2)} [2]: has 24 lines, expected 25"
    assert [bool(e) for e in errors] == [bool(s) for s in skipped.tolist()]


def test_a_run_of_bad_samples_is_skipped_up_to_a_limit():
    wrapped = SkipBadSamples(Flaky(10, bad={3, 4, 5}), max_consecutive=4)
    sample = wrapped[3]
    assert sample["index"] == 6 and sample["skipped"] == 1 and sample["skipped_error"].startswith(bad_file(3))
    with pytest.raises(DataError) as err:
        SkipBadSamples(Flaky(10, bad={3, 4, 5}), max_consecutive=3)[3]
    assert err.value.path == bad_file(3)
    assert "3 consecutive samples from index 3 raised DataError (max_consecutive=3)" in err.value.__notes__[0]
    with pytest.raises(DataError, match="syn_joints_2Ddep_00000"):  # nothing loads at all
        SkipBadSamples(Flaky(2, bad={0, 1}))[0]
    with pytest.raises(IndexError):
        SkipBadSamples(Flaky(2, bad=set()))[2]


def test_enabled_needs_dict_samples():
    class Pairs(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(1), torch.ones(1)

    with pytest.raises(TypeError, match="samples must be dicts; Pairs\\[0\\] is a tuple"):
        SkipBadSamples(Pairs())[0]
    assert SkipBadSamples(Pairs(), enabled=False)[0][1] == 1


class Regression(L.LightningModule):
    def __init__(self, train: Dataset, val: Dataset, num_workers: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.data = {"train": train, "val": val}
        self.num_workers = num_workers

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.layer(batch["x"]), 2 * batch["x"])

    def validation_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.layer(batch["x"]), 2 * batch["x"])
        self.log("val_loss", loss, batch_size=len(batch["x"]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(self.data["train"], batch_size=4, shuffle=True, num_workers=self.num_workers)

    def val_dataloader(self):
        return DataLoader(self.data["val"], batch_size=4, num_workers=self.num_workers)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_report_counts_and_lists_skipped_files_per_epoch(num_workers, caplog):
    train = SkipBadSamples(Flaky(12, bad={3, 10}))
    val = SkipBadSamples(Flaky(6, bad={1}))
    report = BadSampleReport()
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[report],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    with caplog.at_level(logging.WARNING, logger="geosapiens.data.robust"):
        trainer.fit(Regression(train, val, num_workers))
    counts = sorted((h["epoch"], h["stage"], h["count"]) for h in report.history)
    assert counts == [(0, "train", 2), (0, "val", 1), (1, "train", 2), (1, "val", 1)]  # no sanity-check entry
    assert next(h for h in report.history if h["stage"] == "train")["errors"] == {
        f"{bad_file(3)} [3]: has 24 lines, expected 25": 1,
        f"{bad_file(10)} [10]: has 24 lines, expected 25": 1,
    }
    assert trainer.callback_metrics["skipped_samples/train"] == 2
    assert trainer.callback_metrics["skipped_samples/val"] == 1
    warnings = [r.getMessage() for r in caplog.records]
    assert f"epoch 1 (train): skipped 2 bad sample(s):\n  {bad_file(3)} [3]" in "\n".join(warnings)
    assert sum(bad_file(10) in w for w in warnings) == 2  # once per training epoch


class Adaptation(Regression):
    """Training batches are ``{"source": batch, "target": batch}``, as with a CombinedLoader of two sets."""

    def training_step(self, batch, batch_idx):
        return sum(super(Adaptation, self).training_step(b, batch_idx) for b in batch.values())

    def train_dataloader(self):
        return {name: DataLoader(data, batch_size=4) for name, data in self.data["train"].items()}


def test_report_finds_markers_in_combined_batches():
    train = {"source": SkipBadSamples(Flaky(8, bad={1})), "target": SkipBadSamples(Flaky(4, bad={0, 2}))}
    report = BadSampleReport()
    trainer = L.Trainer(
        max_epochs=1,
        limit_val_batches=0,
        callbacks=[report],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Adaptation(train, Flaky(1, bad=set()), num_workers=0))
    (epoch,) = report.history
    # max_size_cycle: the 4 target samples are drawn twice while the 8 source samples go by once.
    assert epoch["count"] == 1 + 2 * 2
    assert epoch["errors"] == {
        f"{bad_file(i)} [{i}]: has 24 lines, expected 25": n for i, n in ((1, 1), (0, 2), (2, 2))
    }
