"""Write ``trainer.predict`` outputs as COCO keypoint results and, for videos, keypoint tracks.

A stage's ``predict_step`` returns (per batch of B people) ``keypoints`` ``(B, K, 2)`` image px, ``scores``
``(B, K)``, ``image_path`` list[str], ``image_id`` list (or a collated tensor), ``bbox`` ``(B, 4)`` xywh image
px, and optionally ``sequence`` list[str | None] and ``frame`` ``(B,)``. :class:`PredictionWriter` writes
them into ``output_dir`` as the files :mod:`geosapiens.metrics.prediction_files` describes
(``coco_results.json``, ``tracks.csv``, ``tracks/<sequence>.npz``).

With several predict dataloaders each gets its own files, suffixed ``_dataloader<i>``.

Multi-process (DDP): each rank writes its share to ``<output_dir>/.prediction_parts/rank<r>.json``; after
a barrier, rank 0 merges the parts, restores dataset order from the sampler's indices (which also drops the
repeats ``DistributedSampler`` pads with), writes the outputs and removes the parts. No collective is needed
beyond the barrier, so memory on rank 0 is one copy of the predictions; with several nodes ``output_dir``
must be on a filesystem every node sees (the usual cluster setup). Every file is written atomically.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from geosapiens.io import atomic_write_file
from geosapiens.metrics.prediction_files import merge_rows, prediction_rows, write_predictions
from geosapiens.skeleton import COCO17

__all__ = ["PredictionWriter"]

PARTS_DIRNAME = ".prediction_parts"


class PredictionWriter(BasePredictionWriter):
    """Write COCO keypoint results and per-sequence tracks at the end of ``trainer.predict``.

    Args:
        output_dir: folder for the files; default ``<trainer.log_dir>/predictions``.
        category_id: COCO category of every result (1 = person).
        keypoint_names: joint names of the CSV columns; their number must match the predictions' K.
        results_name: file name of the COCO results.
        tracks_name: stem of the track files (``<stem>.csv`` and the ``<stem>/`` folder of NPZ files).
    """

    def __init__(
        self,
        output_dir: str | Path | None = None,
        *,
        category_id: int = 1,
        keypoint_names: Sequence[str] = COCO17.names,
        results_name: str = "coco_results.json",
        tracks_name: str = "tracks",
    ) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.category_id = category_id
        self.keypoint_names = tuple(keypoint_names)
        self.results_name = results_name
        self.tracks_name = tracks_name
        self._resolved: Path | None = None
        self.written: list[Path] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "predict":
            # trainer.log_dir broadcasts rank 0's folder, so every rank agrees on where the parts go.
            self._resolved = (
                self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / "predictions"
            )

    @property
    def directory(self) -> Path:
        if self._resolved is None:
            raise RuntimeError("PredictionWriter: the output folder is set in setup(); run trainer.predict")
        return self._resolved

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Sequence[Any],
        batch_indices: Sequence[Any],
    ) -> None:
        # One dataloader: a list of batch outputs; several: a list of such lists. Indices are always nested.
        per_loader = [predictions] if predictions and isinstance(predictions[0], dict) else list(predictions)
        rows = []
        for d, outputs in enumerate(per_loader):
            loader_indices = batch_indices[d] if d < len(batch_indices) else []
            loader_rows = []
            for b, out in enumerate(outputs):
                loader_rows += prediction_rows(out, loader_indices[b] if b < len(loader_indices) else None)
            rows.append(loader_rows)

        if trainer.world_size > 1:
            parts = self.directory / PARTS_DIRNAME
            atomic_write_file(parts / f"rank{trainer.global_rank}.json", json.dumps(rows))
            trainer.strategy.barrier("PredictionWriter.parts")
            if trainer.is_global_zero:
                shares = [
                    json.loads((parts / f"rank{r}.json").read_text()) for r in range(trainer.world_size)
                ]
                rows = [merge_rows([share[d] for share in shares]) for d in range(len(rows))]
                for r in range(trainer.world_size):
                    (parts / f"rank{r}.json").unlink()
                parts.rmdir()
        else:
            rows = [merge_rows([loader_rows]) for loader_rows in rows]

        if trainer.is_global_zero:
            self.written = []
            for d, loader_rows in enumerate(rows):
                self.write(loader_rows, "" if len(rows) == 1 else f"_dataloader{d}")

    def write(self, rows: Sequence[dict], suffix: str = "") -> list[Path]:
        """Write the files for one dataloader's merged rows; returns the paths written."""
        written = write_predictions(
            self.directory,
            rows,
            keypoint_names=self.keypoint_names,
            category_id=self.category_id,
            results_name=self.results_name,
            tracks_name=self.tracks_name,
            suffix=suffix,
        )
        self.written += written
        return written
