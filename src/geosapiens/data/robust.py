"""Robust dataset access: a bad sample either stops the run with its own message, or is skipped and reported.

Two things go wrong with a plain PyTorch ``DataLoader`` when one file of a large dataset is bad:

- In a worker process, torch re-raises the worker's error in the main process as ``type(error)(text)``,
  where ``text`` is "Caught DataError in DataLoader worker process 0. Original Traceback ...". ``DataError``
  needs ``(path, problem)``, so torch cannot rebuild it and raises a ``RuntimeError`` instead: the type is
  lost (an ``except DataError`` misses it) and the line naming the file sits under a worker traceback.
- With ``skip_bad_samples``-style tolerance, a counter in the dataset object counts nothing the main process
  can see: each worker has its own copy.

:class:`SkipBadSamples` wraps any map-style dataset whose ``__getitem__`` raises
:class:`~geosapiens.errors.DataError`. Disabled, it only carries the error across the worker boundary intact
(same type, path, problem and record; a note says which worker and sample). Enabled, a bad sample is replaced
by the next good index (deterministic: the same bad index always gives the same replacement) and the sample
says so: ``"skipped"`` (int64, 1 when replaced) and ``"skipped_error"`` (the error message, ``""`` when not).
Default collation turns them into a ``(B,)`` tensor and a list of ``B`` strings, so the counts ride with the
batches through worker processes and DDP ranks; :class:`BadSampleReport` sums them per epoch, logs the count
and lists the files.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch.utils.data import Dataset, get_worker_info

from geosapiens.data.sampling import SampleKey
from geosapiens.errors import DataError

__all__ = ["SkipBadSamples", "BadSampleReport", "SKIPPED_KEY", "SKIPPED_ERROR_KEY"]

SKIPPED_KEY = "skipped"
SKIPPED_ERROR_KEY = "skipped_error"

log = logging.getLogger(__name__)


class SkipBadSamples(Dataset):
    """Wrap a map-style dataset so that a :class:`DataError` stops the run cleanly or skips the sample.

    Args:
        dataset: any map-style dataset; with ``enabled=True`` its samples must be mappings (dicts).
        enabled: replace bad samples (True) or raise their error (False).
        max_consecutive: with ``enabled``, how many indices in a row may be bad before giving up: a dataset
            that is mostly bad is a wrong path or format, not a few damaged files.
    """

    def __init__(self, dataset: Dataset, enabled: bool = True, max_consecutive: int = 16) -> None:
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be at least 1, got {max_consecutive}")
        self.dataset = dataset
        self.enabled = enabled
        self.max_consecutive = max_consecutive

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int | SampleKey) -> Any:
        try:
            return self._replaced(index) if self.enabled else self.dataset[index]
        except DataError as error:
            worker = get_worker_info()
            if worker is None:  # main process: the error reaches the caller as it is
                raise
            raise _DataErrorFromWorker.wrap(error, worker.id, index) from None

    def _replaced(self, key: int | SampleKey) -> dict:
        """The sample at ``key``, or at the next index that loads (same pass), marked as skipped."""
        index = key.index if isinstance(key, SampleKey) else key
        n = len(self.dataset)
        if not -n <= index < n:
            raise IndexError(f"index {index} is out of range for a dataset of {n} samples")
        first: DataError | None = None
        for step in range(min(self.max_consecutive, n)):
            try:
                shifted = (index + step) % n
                sample = self.dataset[key._replace(index=shifted) if isinstance(key, SampleKey) else shifted]
            except DataError as error:
                first = first or error
                continue
            if not isinstance(sample, Mapping):
                raise TypeError(
                    f"SkipBadSamples(enabled=True) adds {SKIPPED_KEY!r} to each sample, so samples must be "
                    f"dicts; {type(self.dataset).__name__}[{index}] is a {type(sample).__name__}"
                )
            marked = dict(sample)
            marked[SKIPPED_KEY] = torch.tensor(int(first is not None))
            marked[SKIPPED_ERROR_KEY] = "" if first is None else str(first)
            return marked
        assert first is not None
        first.add_note(
            f"skip_bad_samples: {step + 1} consecutive samples from index {index} raised DataError "
            f"(max_consecutive={self.max_consecutive}): a dataset this broken is not skipped"
        )
        raise first


_MARKER = "geosapiens.DataError="


class _DataErrorFromWorker(Exception):
    """Carries a :class:`DataError` from a DataLoader worker to the main process, where it is itself again.

    torch sends a worker's error as its type and formatted traceback, then in the main process calls
    ``type(text)`` with "Caught <type> in DataLoader worker process N. Original Traceback ...". This type's
    constructor, given that text, finds the JSON fields this class put in its own message and returns the
    original :class:`DataError` instead (Python skips ``__init__`` when ``__new__`` returns another type).
    """

    def __new__(cls, *args: Any) -> Any:
        if len(args) == 1 and isinstance(args[0], str) and _MARKER in args[0]:
            rebuilt = _rebuild(args[0])
            if rebuilt is not None:
                return rebuilt
        return super().__new__(cls, *args)

    @classmethod
    def wrap(cls, error: DataError, worker: int, index: int) -> _DataErrorFromWorker:
        fields = {
            "path": error.path,
            "problem": error.problem,
            "record": error.record,
            "notes": [
                *getattr(error, "__notes__", []),
                f"(raised in DataLoader worker {worker}, sample {index})",
            ],
        }
        carrier = Exception.__new__(cls)
        Exception.__init__(carrier, _MARKER + json.dumps(fields))
        return carrier


def _rebuild(text: str) -> DataError | None:
    """The DataError whose fields end ``text``: a traceback whose last line is ``<type>: <marker><json>``."""
    line = text.rstrip("\n").rsplit("\n", 1)[-1]
    line = line[line.index(_MARKER) + len(_MARKER) :] if _MARKER in line else ""
    try:
        fields = json.loads(line)
        error = DataError(fields["path"], fields["problem"], fields["record"])
        notes = [str(note) for note in fields["notes"]]
    except (ValueError, KeyError, TypeError):
        return None
    for note in notes:
        error.add_note(note)
    return error


class BadSampleReport(L.Callback):
    """Count and list, per epoch, the samples :class:`SkipBadSamples` replaced.

    At the end of each training and validation epoch it logs ``skipped_samples/train`` (``/val``), summed over
    DDP ranks, and warns with the messages (file and problem) of the samples skipped on this rank. Nothing is
    logged during the sanity check. :attr:`history` keeps one entry per epoch and stage:
    ``{"stage", "epoch", "count", "errors"}`` with ``errors`` a ``{message: times}`` dict.
    """

    def __init__(self) -> None:
        self.history: list[dict[str, Any]] = []
        self._count: dict[str, torch.Tensor | int] = {"train": 0, "val": 0}
        self._errors: dict[str, Counter[str]] = {"train": Counter(), "val": Counter()}

    def _start(self, stage: str) -> None:
        self._count[stage] = 0
        self._errors[stage] = Counter()

    def _add(self, stage: str, batch: Any) -> None:
        """Sum the markers of every (possibly nested) sample dict in ``batch``; no device sync per step."""
        if isinstance(batch, Mapping):
            if SKIPPED_KEY in batch:
                self._count[stage] = self._count[stage] + torch.as_tensor(batch[SKIPPED_KEY]).sum()
                errors = batch.get(SKIPPED_ERROR_KEY, [])
                self._errors[stage].update(e for e in ([errors] if isinstance(errors, str) else errors) if e)
            children = [v for k, v in batch.items() if k not in (SKIPPED_KEY, SKIPPED_ERROR_KEY)]
        elif isinstance(batch, (list, tuple)):
            children = list(batch)
        else:
            return
        for child in children:
            self._add(stage, child)

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        count = int(self._count[stage])
        errors = dict(sorted(self._errors[stage].items()))  # by file: the order samples came in is random
        self.history.append(
            {"stage": stage, "epoch": trainer.current_epoch, "count": count, "errors": errors}
        )
        pl_module.log(
            f"skipped_samples/{stage}",
            float(count),
            reduce_fx="sum",
            sync_dist=True,
            on_step=False,
            on_epoch=True,
        )
        if count:
            rank = f"rank {trainer.global_rank}, " if trainer.world_size > 1 else ""
            lines = "\n".join(
                f"  {message}" + (f"  (x{n})" if n > 1 else "") for message, n in errors.items()
            )
            log.warning(
                f"{rank}epoch {trainer.current_epoch} ({stage}): skipped {count} bad sample(s):\n{lines}"
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("train")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._add("train", batch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start("val")

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not trainer.sanity_checking:
            self._add("val", batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._report(trainer, pl_module, "val")
