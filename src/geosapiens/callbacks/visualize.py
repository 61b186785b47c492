"""Pictures during training: predicted skeletons on validation crops, and the test PCK curve (drawn only: the
stage computes the curve from its test predictions).

Module contract (the stages implement it):

- ``predict_keypoints(images (B, 3, H, W), affine (B, 2, 3) image->crop) -> (keypoints (B, K, 2) image px,
  scores (B, K))``;
- optionally ``critic_maps_for_visualisation(batch) -> GeometryMaps | None`` (critic depth and normals in
  the crop frame, any resolution; it receives the first ``num_images`` samples of the validation batch).

Validation and test batches are the labelled dicts of API.md: ``image`` normalised, ``keypoints`` crop px,
``weights``, ``affine``, ``bbox`` image px, ``image_path``.

Distributed runs: the validation forward runs on *every* rank (a model sharded with FSDP needs all ranks in
each forward); only global rank 0 draws, writes and logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import cv2
import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn

from geosapiens.affine import apply_affine
from geosapiens.models.critics import GeometryMaps
from geosapiens.viz import draw, plots

__all__ = ["LogValidationImages"]

# GT drawn dimmed and in grey under the coloured prediction, so the two never look alike.
_GT_COLORS = {"left": (235, 235, 235), "right": (235, 235, 235), "center": (235, 235, 235)}


def _head(batch: dict, n: int) -> dict:
    """The first ``n`` samples of a collated batch dict."""
    size = len(batch["image"])
    out = {}
    for k, v in batch.items():
        sliceable = isinstance(v, torch.Tensor | list | tuple) and len(v) == size
        out[k] = v[:n] if sliceable else v
    return out


class LogValidationImages(L.Callback):
    """Log a contact sheet of validation predictions, and a PCK-vs-threshold curve at test end.

    Every ``every_n_epochs`` epochs, on the first validation batch (not during the sanity check), each of the
    first ``num_images`` crops gets the ground truth (grey, dimmed) and the prediction (left orange, right
    blue) drawn on it; critic depth and normal maps follow to its right when the module provides them.
    Infant photos stay on the machine unless asked (``log_images``): by default (``"local"``) the sheet goes
    to TensorBoard loggers (``add_image``, local files) and, without one or with ``save_png=True``, to
    ``<log_dir>/images/epoch_XXX.png``; ``"remote"`` also sends it to W&B loggers (``log_image``: an upload,
    now or at ``wandb sync``); ``"off"`` draws no sheet.

    When ``trainer.test`` ends, the module's ``test_pck_curve`` (the dict
    :func:`~geosapiens.metrics.pck.pck_curve_from_errors` makes; a :class:`~geosapiens.stages.base.PoseStage`
    computes it from its test predictions) is plotted to ``<log_dir>/images/test_pck_curve.png`` and sent to
    every image logger (a plot, no photo).

    Args:
        num_images: crops per sheet.
        every_n_epochs: epoch period of the validation sheet.
        cols: tiles per row (default 4, or 2 when critic maps widen each tile).
        save_png: also save PNGs when an image logger exists (None: only without one).
        pck_curve: plot and log the module's test PCK curve.
        score_threshold: predicted joints with a lower score are not drawn.
        log_images: where validation sheets (infant photos) go: ``"local"`` files and TensorBoard,
            ``"remote"`` W&B too, ``"off"`` nowhere.
    """

    def __init__(
        self,
        num_images: int = 8,
        every_n_epochs: int = 1,
        *,
        cols: int | None = None,
        save_png: bool | None = None,
        pck_curve: bool = True,
        score_threshold: float = 0.3,
        log_images: Literal["local", "remote", "off"] = "local",
    ) -> None:
        if log_images not in ("local", "remote", "off"):
            raise ValueError(f"LogValidationImages: log_images is local, remote or off, not {log_images!r}")
        if num_images < 1 or every_n_epochs < 1:
            raise ValueError(
                f"num_images and every_n_epochs must be >= 1, got {num_images}, {every_n_epochs}"
            )
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.cols = cols
        self.save_png = save_png
        self.pck_curve = pck_curve
        self.score_threshold = score_threshold
        self.log_images = log_images
        self.last_image_path: Path | None = None
        self._log_dir: Path | None = None

    # ------------------------------------------------------------------ setup

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "predict_keypoints", None)):
            raise TypeError(
                f"LogValidationImages needs {type(pl_module).__name__}.predict_keypoints(images, affine) -> "
                "(keypoints (B, K, 2) image px, scores (B, K))"
            )
        # trainer.log_dir is a broadcast: resolve it on every rank, here, never inside rank-0-only code.
        self._log_dir = Path(trainer.log_dir or trainer.default_root_dir)

    def _image_loggers(self, trainer: L.Trainer, photo: bool) -> list:
        """Loggers that take images; of a ``photo``, only the local ones unless ``log_images="remote"``."""
        remote = not photo or self.log_images == "remote"
        kinds = (WandbLogger, TensorBoardLogger) if remote else (TensorBoardLogger,)
        return [lg for lg in trainer.loggers if isinstance(lg, kinds)]

    def _publish(
        self,
        trainer: L.Trainer,
        key: str,
        image: np.ndarray,
        filename: str,
        always_save: bool = False,
        photo: bool = True,
    ) -> None:
        """Rank 0: send ``image`` to the image loggers; save it when there is none (or when asked)."""
        loggers = self._image_loggers(trainer, photo)
        for lg in loggers:
            if isinstance(lg, WandbLogger):
                lg.log_image(key=key, images=[image], step=trainer.global_step)
            else:
                lg.experiment.add_image(key, image, global_step=trainer.global_step, dataformats="HWC")
        if always_save or self.save_png or (self.save_png is None and not loggers):
            self.last_image_path = draw.save_png(self._log_dir / "images" / filename, image)

    # ------------------------------------------------------------- validation

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if (
            batch_idx != 0
            or dataloader_idx != 0
            or trainer.sanity_checking
            or trainer.current_epoch % self.every_n_epochs != 0
            or self.log_images == "off"
        ):
            return
        if not isinstance(batch, dict) or not {"image", "affine"} <= batch.keys():
            rank_zero_warn(
                "LogValidationImages: the validation batch is not a labelled dict; no images logged"
            )
            return
        head = _head(batch, self.num_images)
        with torch.no_grad():
            keypoints, scores = pl_module.predict_keypoints(head["image"], head["affine"])
            maps_fn = getattr(pl_module, "critic_maps_for_visualisation", None)
            maps = maps_fn(head) if maps_fn is not None else None
        if not trainer.is_global_zero:
            return
        sheet = self.render(head, apply_affine(keypoints.double(), head["affine"]), scores, maps)
        self._publish(trainer, "val/predictions", sheet, f"epoch_{trainer.current_epoch:03d}.png")

    def render(
        self, batch: dict, crop_keypoints: torch.Tensor, scores: torch.Tensor, maps: GeometryMaps | None
    ) -> np.ndarray:
        """The contact sheet: one tile per crop (overlay, then critic depth and normals when given).

        Args:
            batch: labelled batch (``image``, optional ``keypoints`` crop px and ``weights``, ``image_path``).
            crop_keypoints: ``(B, K, 2)`` predictions in crop px.
            scores: ``(B, K)`` prediction scores.
            maps: critic maps in the crop frame, or None.
        """
        crops = draw.denormalize_image(batch["image"])  # (B, H, W, 3)
        h, w = crops.shape[1:3]
        tiles, labels = [], []
        for i, crop in enumerate(crops):
            if "keypoints" in batch:
                labelled = batch["weights"][i] > 0 if "weights" in batch else None
                crop = draw.draw_skeleton(
                    crop, batch["keypoints"][i], labelled, colors=_GT_COLORS, alpha=0.5, thickness=1, radius=2
                )
            tile = draw.draw_skeleton(crop, crop_keypoints[i], scores[i], threshold=self.score_threshold)
            if maps is not None:
                depth = cv2.resize(
                    maps.depth[i, 0].float().cpu().numpy(), (w, h), interpolation=cv2.INTER_NEAREST
                )
                normals = maps.normals[i].float().cpu().permute(1, 2, 0).numpy()
                normals = cv2.resize(normals, (w, h), interpolation=cv2.INTER_NEAREST)
                valid = None
                if maps.valid is not None:
                    valid = cv2.resize(
                        maps.valid[i, 0].cpu().numpy().astype(np.uint8),
                        (w, h),
                        interpolation=cv2.INTER_NEAREST,
                    ).astype(bool)
                gap = np.zeros((h, 2, 3), np.uint8)
                tile = np.concatenate(
                    [tile, gap, draw.depth_to_rgb(depth, valid), gap, draw.normals_to_rgb(normals, valid)],
                    axis=1,
                )
            tiles.append(tile)
            labels.append(Path(str(batch["image_path"][i])).name if "image_path" in batch else "")
        cols = self.cols or (2 if maps is not None else 4)
        return draw.contact_sheet(tiles, cols, labels)

    # ------------------------------------------------------------------- test

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        curve = getattr(pl_module, "test_pck_curve", None)
        if not self.pck_curve or not curve or not trainer.is_global_zero:
            return
        fig = plots.plot_pck_curves(
            {type(pl_module).__name__: (curve["thresholds"], curve["pck"])}, title="test PCK"
        )
        self._publish(
            trainer,
            "test/pck_curve",
            plots.figure_to_rgb(fig),
            "test_pck_curve.png",
            always_save=True,
            photo=False,
        )
