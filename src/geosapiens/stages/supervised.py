"""Supervised pose training: the synthetic warm-up (stage 1), few-shot real refinement (stage 3), the oracle
and the source-only baseline are all this one stage on different data."""

from __future__ import annotations

import torch

from geosapiens.losses.functional import heatmap_mse
from geosapiens.stages.base import PoseStage


class SupervisedPose(PoseStage):
    """``L_sup``: weighted heatmap MSE against UDP Gaussian targets (weight 0 for unlabelled joints)."""

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        targets, target_weights = self.codec.encode(batch["keypoints"], batch["weights"])
        loss = heatmap_mse(self.model(batch["image"]), targets, target_weights)
        self.log("train/loss_sup", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss
