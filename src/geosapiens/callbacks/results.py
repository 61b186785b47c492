"""What a finished test run leaves behind for ``geosapiens report``: ``test_metrics.json``.

:class:`TestResultsWriter` writes, at the end of ``trainer.test`` (global rank 0), every ``test/*`` scalar in
``trainer.callback_metrics`` (Lightning has already reduced them across ranks), the run's identity (stage and
DataModule classes, seed, checkpoint, logger name/version, time) and, when one was computed, the test
PCK-vs-threshold curve. File layout (values are fractions; NaN is written as ``null``)::

    {"format": 1, "metrics": {"test/pck@0.1": 0.83, "test/pck@0.1/nose": 0.9, "test/AP": 0.71, ...},
     "run": {"stage": "geosapiens.stages....", "datamodule": "...", "seed": 0, "checkpoint": "...",
             "timestamp": "2025-01-01T00:00:00+00:00", ...},
     "pck_curve": {"thresholds": [...], "pck": [...], "per_joint": {"nose": [...], ...}, "norm": "bbox"},
     "per_sample": {"norm": "bbox", "keypoints": ["nose", ...], "index": [0, 1, ...],
                    "errors": [[0.031, null, ...], ...]}}

The curve is the module's ``test_pck_curve`` (that dict; :class:`~geosapiens.stages.base.PoseStage` draws
it from the test predictions' per-sample errors: :func:`~geosapiens.metrics.pck.pck_curve_from_errors`).
``per_sample`` is the module's ``test_samples`` (:class:`~geosapiens.stages.base.PoseStage` keeps it):
per test sample (``index`` in the test dataset), each joint's error as a fraction of the PCK normaliser;
``null`` = not scored (unlabelled), :data:`NO_PREDICTION` = scored without a prediction (wrong at any
threshold). A joint is correct at ``alpha`` when its error is ``< alpha``, so ``geosapiens report``
re-derives every ``test/pck@alpha`` from it and resamples test samples for paired confidence intervals.

Files are written atomically (:func:`geosapiens.io.atomic_write_file`: a temporary file, then ``os.replace``),
so a crash or a reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch

from geosapiens.io import atomic_write_file
from geosapiens.metrics.results import NO_PREDICTION, RESULTS_FILENAME, RESULTS_FORMAT

__all__ = ["json_safe", "TestResultsWriter"]


def json_safe(value: Any) -> Any:
    """Tensors, numpy scalars/arrays, paths and tuples as plain JSON values; non-finite floats as None."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    elif hasattr(value, "tolist") and not isinstance(value, str):  # numpy
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return str(value)


def _qualname(obj: Any) -> str | None:
    return None if obj is None else f"{type(obj).__module__}.{type(obj).__qualname__}"


class TestResultsWriter(L.Callback):
    """Write ``<dirpath>/test_metrics.json`` when ``trainer.test`` ends (see the module docstring).

    Args:
        dirpath: output folder; default ``trainer.log_dir`` (the logger's run folder, or
            ``default_root_dir`` without a logger), resolved on every rank at setup.
        filename: file name (the report searches for :data:`RESULTS_FILENAME`).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, dirpath: str | Path | None = None, filename: str = RESULTS_FILENAME) -> None:
        self.dirpath = None if dirpath is None else Path(dirpath)
        self.filename = filename
        self._resolved: Path | None = None
        self.last_path: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "test":
            # trainer.log_dir broadcasts from rank 0: every rank must ask, so ask here, not in rank-0 code.
            self._resolved = self.dirpath or Path(trainer.log_dir or trainer.default_root_dir)

    def results(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The JSON-ready content of the results file."""
        metrics = {
            k: json_safe(float(v))
            for k, v in sorted(trainer.callback_metrics.items())
            if k.startswith("test/")
        }
        logger = trainer.logger
        seed = os.environ.get("PL_GLOBAL_SEED")
        run = {
            "stage": _qualname(pl_module),
            "datamodule": _qualname(trainer.datamodule),
            "seed": int(seed) if seed is not None else None,
            "checkpoint": None if trainer.ckpt_path is None else str(trainer.ckpt_path),
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "logger": None
            if logger is None
            else {"class": _qualname(logger), "name": logger.name, "version": json_safe(logger.version)},
            "global_step": trainer.global_step,
            "world_size": trainer.world_size,
            "hparams": json_safe(dict(pl_module.hparams)),
            "datamodule_hparams": json_safe(dict(trainer.datamodule.hparams))
            if trainer.datamodule is not None
            else None,
        }
        out: dict[str, Any] = {"format": RESULTS_FORMAT, "metrics": metrics, "run": run}
        curve = getattr(pl_module, "test_pck_curve", None)
        if curve:
            out["pck_curve"] = json_safe(curve)
        samples = getattr(pl_module, "test_samples", None)
        if samples:
            errors = [[NO_PREDICTION if e == math.inf else e for e in row] for row in samples["errors"]]
            out["per_sample"] = json_safe(samples | {"errors": errors})
        return out

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        path = (self._resolved or self.dirpath or Path(trainer.default_root_dir)) / self.filename
        atomic_write_file(path, json.dumps(self.results(trainer, pl_module), indent=2) + "\n")
        self.last_path = path
