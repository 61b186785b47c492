"""Distillation: a light student learns a trained Geo-Sapiens teacher's heatmaps on unlabelled images.

The clinic runs the student (a small CNN at a small crop) on a local CPU; the teacher (Sapiens at 1024 px)
only labels images here. The DataModule crops at the TEACHER's input size; the student sees the same crop
resampled to its own ``input_size`` and the teacher's heatmaps are resampled to the student's heatmap size,
both with :func:`~geosapiens.models.codec.resize_aligned` (UDP pixel centres, ``align_corners=True``), so
both networks are asked about the same crop positions. Evaluation resamples the DataModule's crops the same
way and maps the student's keypoints back, so val/test PCK is comparable with the teacher's own.
"""

from __future__ import annotations

from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn

from geosapiens.affine import apply_affine, invert_affine
from geosapiens.errors import CheckpointError
from geosapiens.losses.functional import distillation_loss
from geosapiens.models.codec import flip_test, resize_aligned
from geosapiens.models.pose_model import PoseModel
from geosapiens.models.stage_checkpoint import pose_model_from_checkpoint
from geosapiens.skeleton import COCO17
from geosapiens.stages.base import PoseStage


def distillation_images(batch: dict) -> torch.Tensor:
    """The crops a training batch offers: the weak view of unlabelled pairs, labelled crops (labels unused),
    or both parts of an adaptation batch (``source`` + ``target``) stacked."""
    if "weak" in batch:
        return batch["weak"]
    if "image" in batch:
        return batch["image"]
    if "source" in batch and "target" in batch:
        return torch.cat([distillation_images(batch["source"]), distillation_images(batch["target"])])
    raise ValueError(
        f"Distillation: a training batch needs 'weak' (unlabelled pairs), 'image' or 'source'+'target'; "
        f"got keys {sorted(batch)}"
    )


class Distillation(PoseStage):
    """Heatmap distillation of a frozen teacher into the stage's model (the student).

    The teacher is read from ``teacher_checkpoint`` when fitting starts and held frozen
    (:meth:`~geosapiens.stages.base.PoseStage.hold_frozen`): it is in no checkpoint (a student checkpoint is
    the student alone, loadable by :func:`~geosapiens.models.stage_checkpoint.pose_model_from_checkpoint`),
    in no optimiser group, never in train mode, and ``test``/``predict`` of a student need no teacher file.

    Args:
        teacher_checkpoint: a pose stage checkpoint (e.g. the Geo-Sapiens run's ``best.ckpt``).
        teacher_weights: ``teacher`` (a mean-teacher run's EMA network, the one its validation scored) or
            ``model`` (a supervised run's only network).
        teacher_flip: average the teacher's heatmaps with its mirrored image's (one more teacher forward per
            step; the same flip test that usually adds a point or so of PCK, for cleaner targets).
        confidence_weighted: weight each joint's loss by the teacher's heatmap peak
            (:func:`~geosapiens.losses.functional.distillation_loss`).
        data_input_size: the crop (H, W) the DataModule delivers: the teacher's input size, so the teacher
            sees its own resolution (``geosapiens fit`` gives it to the DataModule); None = the student's
            ``input_size``. Any crop works (both networks get it resampled); a teacher checkpoint of another
            size is only warned about.
        init_from_teacher: start the student from the teacher's weights: ``True`` (or ``"all"``) the whole
            network (same backbone and head, e.g. the teacher's network on a smaller crop), ``"backbone"``
            its backbone only (a student with a slimmer head); a mean-teacher run's EMA network is usually
            better than its ``model.*`` weights, which ``init_checkpoint`` would load.
        **kwargs: :class:`PoseStage` arguments of the STUDENT (``backbone``, ``input_size``...).
    """

    def __init__(
        self,
        teacher_checkpoint: str,
        teacher_weights: Literal["model", "teacher"] = "teacher",
        teacher_flip: bool = False,
        confidence_weighted: bool = False,
        data_input_size: tuple[int, int] | None = None,
        init_from_teacher: bool | Literal["all", "backbone"] = False,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.teacher_input_size: tuple[int, int] | None = None
        self.hold_frozen("teacher", None)  # the frozen teacher once fitting has started

    def load_teacher(self) -> PoseModel:
        """Read, freeze and keep the teacher (once)."""
        if self.teacher is None:
            path = self.hparams.teacher_checkpoint
            try:
                teacher, size, _ = pose_model_from_checkpoint(path, self.hparams.teacher_weights)
            except CheckpointError as err:
                raise CheckpointError(f"Distillation teacher_checkpoint: {err}") from err
            self.hold_frozen("teacher", teacher.to(self.device))
            self.teacher_input_size = size
            crop = self.hparams.data_input_size
            if crop is not None and tuple(crop) != tuple(size):
                rank_zero_warn(
                    f"Distillation: the teacher {path} takes {size[0]}x{size[1]} crops, data_input_size is "
                    f"{crop[0]}x{crop[1]}: the teacher sees resampled crops"
                )
            mode = self.hparams.init_from_teacher
            if mode:
                source, target = (
                    (teacher.backbone, self.model.backbone) if mode == "backbone" else (teacher, self.model)
                )
                try:
                    target.load_state_dict(source.state_dict())
                except RuntimeError as err:
                    raise CheckpointError(
                        f"Distillation init_from_teacher: {path} holds another network than the student "
                        f"({self.hparams.backbone}, head {self.hparams.head_kwargs}): {err}"
                    ) from err
        return self.teacher

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage == "fit":
            self.load_teacher()
        self._log_data_hparams_apart()

    def _log_data_hparams_apart(self) -> None:
        """The DataModule crops at the teacher's size and the student has its own ``input_size``: Lightning
        refuses to merge two hyperparameter sets that give one key two values, so when they differ the
        DataModule's are logged under ``data/`` (its checkpoint entry is unchanged) and it is re-saved with
        ``save_hyperparameters(logger=False)``, Lightning's way of keeping a module's hyperparameters out of
        the loggers."""
        datamodule = self.trainer.datamodule
        if datamodule is None or not self.trainer.loggers:
            return
        ours, theirs = self.hparams_initial, datamodule.hparams_initial
        if all(ours[k] == theirs[k] for k in ours.keys() & theirs.keys() if k != "_class_path"):
            return
        datamodule.save_hyperparameters(datamodule.hparams, logger=False)
        for logger in self.trainer.loggers:
            logger.log_hyperparams({f"data/{k}": v for k, v in theirs.items() if k != "_class_path"})

    def teacher_heatmaps(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen teacher's heatmaps of crops at any size (resampled to its input size)."""
        teacher = self.load_teacher()
        x = resize_aligned(images, self.teacher_input_size)
        with torch.no_grad():
            heatmaps = teacher(x)
            if self.hparams.teacher_flip:
                heatmaps = flip_test(heatmaps, teacher(x.flip(-1)), COCO17.flip_indices)
        return heatmaps

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        images = distillation_images(batch)
        targets = self.teacher_heatmaps(images)
        student = self.model(resize_aligned(images, self.hparams.input_size))
        loss = distillation_loss(student, targets, self.hparams.confidence_weighted)
        self.log("train/loss_distill", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def predict_keypoints(
        self, images: torch.Tensor, affine: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints in IMAGE pixels from crops at the DataModule's size (resampled for the student and mapped
        back: ``x = x' (W - 1) / (W' - 1)``), then through the crop affine (B, 2, 3)."""
        (H, W), (h, w) = images.shape[-2:], self.hparams.input_size
        heatmaps = self.predict_heatmaps(self.model, resize_aligned(images, (h, w)))
        keypoints, scores = self.codec.decode(heatmaps)
        keypoints = keypoints * keypoints.new_tensor([(W - 1) / (w - 1), (H - 1) / (h - 1)])
        return apply_affine(keypoints, invert_affine(affine)), scores
