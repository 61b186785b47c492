"""Training the infant pose prior (:class:`~geosapiens.models.pose_vae.PoseVAE`) on labelled 2D poses."""

from __future__ import annotations

import lightning as L
import torch

from geosapiens.models.pose_vae import PoseVAE, masked_pose_error, normalize_pose


class PosePriorTask(L.LightningModule):
    """Trains :class:`PoseVAE` on normalised poses: reconstruction + KL with a linear KL warm-up.

    The KL weight rises from 0 to ``kl_weight`` over ``kl_warmup_steps`` optimiser steps, so the decoder
    learns to reconstruct before the posterior is pulled towards the prior (avoids posterior collapse). The
    checkpoint holds the VAE under ``vae.`` and its shape in the hyper-parameters, which is all
    :meth:`PoseVAE.load` needs.

    Args:
        num_keypoints, latent_dim, hidden_dim, num_layers: :class:`PoseVAE` shape.
        lr, weight_decay: AdamW.
        kl_weight: final weight of the KL term (VPoser uses 5e-3).
        kl_warmup_steps: optimiser steps of the linear KL warm-up (0: none).
    """

    monitor = "val/rec"  # the checkpoints' selection metric (``geosapiens fit`` links it; lower is better)

    def __init__(
        self,
        num_keypoints: int = 17,
        latent_dim: int = 24,
        hidden_dim: int = 256,
        num_layers: int = 2,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        kl_weight: float = 5e-3,
        kl_warmup_steps: int = 2000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vae = PoseVAE(num_keypoints, latent_dim, hidden_dim, num_layers)

    def kl_beta(self, step: int | None = None) -> float:
        """KL weight after ``step`` optimiser steps (None: the current global step)."""
        step = self.global_step if step is None else step
        warm = self.hparams.kl_warmup_steps
        return self.hparams.kl_weight * (1.0 if warm <= 0 else min(1.0, step / warm))

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        mask = batch["labelled"]
        poses = normalize_pose(batch["keypoints"], mask)
        recon, mu, logvar = self.vae(poses, mask, sample=stage == "train")
        rec = masked_pose_error(recon, poses, mask).mean()
        kl = (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()
        loss = rec + self.kl_beta() * kl
        bs = poses.shape[0]
        self.log_dict(
            {f"{stage}/loss": loss, f"{stage}/rec": rec, f"{stage}/kl": kl},
            batch_size=bs,
            prog_bar=stage == "val",
            on_step=stage == "train",
            on_epoch=True,
        )
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.log("train/kl_beta", self.kl_beta(), on_step=True, on_epoch=False)
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.vae.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
