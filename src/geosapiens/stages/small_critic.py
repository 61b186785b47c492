"""Training the small depth/normal critic (:class:`~.models.small_critic.SmallCriticNet`) on rendered maps.

Train with ``geosapiens fit --config configs/critics/small_critic.yaml``; the task writes the network alone to
a safetensors file (``export_path``) that :class:`~geosapiens.models.small_critic.SmallCritic` loads, frozen.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics.functional.classification import binary_jaccard_index

from geosapiens.losses.functional import critic_losses
from geosapiens.models.critics import GeometryMaps
from geosapiens.models.small_critic import METADATA_KEY, SmallCriticNet


class SmallCriticTask(L.LightningModule):
    """Trains :class:`SmallCriticNet` on rendered depth/normal maps.

    Args:
        backbone, depth_deconvs, depth_convs, normal_deconvs, normal_convs, backbone_kwargs: the
            :class:`SmallCriticNet`.
        lr, weight_decay: AdamW.
        depth_weight, normal_weight, mask_weight: loss weights.
        export_path: where :meth:`export` writes the network at the end of ``fit`` (None: not written).
    """

    def __init__(
        self,
        backbone: str = "timm:resnet18",
        depth_deconvs: Sequence[int] = (96, 64, 48, 32),
        depth_convs: Sequence[int] = (32,),
        normal_deconvs: Sequence[int] = (96, 64, 48),
        normal_convs: Sequence[int] = (48,),
        backbone_kwargs: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        depth_weight: float = 1.0,
        normal_weight: float = 1.0,
        mask_weight: float = 0.5,
        export_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = SmallCriticNet(
            backbone, depth_deconvs, depth_convs, normal_deconvs, normal_convs, backbone_kwargs
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net(images)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        depth, mask_logit, normals = self.net(batch["image"])
        target = GeometryMaps(depth=batch["depth"], normals=batch["normals"], valid=batch["valid"])
        losses = critic_losses(depth, mask_logit, normals, target, batch["inside"])
        if stage != "train":
            losses["mask_iou"] = binary_jaccard_index(mask_logit.sigmoid(), target.valid.int())
        hp = self.hparams
        loss = (
            hp.depth_weight * losses["depth"]
            + hp.normal_weight * losses["normal"]
            + hp.mask_weight * losses["mask"]
        )
        # one key per validation loader (val/, val_target/), not Lightning's dataloader_idx suffix
        n = batch["image"].shape[0]
        common = dict(batch_size=n, sync_dist=stage != "train", add_dataloader_idx=False)
        self.log(f"{stage}/loss", loss, prog_bar=True, **common)
        self.log_dict({f"{stage}/{name}": value for name, value in losses.items()}, **common)
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(
        self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> torch.Tensor:
        return self._step(batch, "val_target" if dataloader_idx else "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )

    def export(self, path: str | Path) -> Path:
        """Write the network (weights, config as metadata) to a safetensors file for :class:`SmallCritic`."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(path), metadata={METADATA_KEY: json.dumps(self.net.config)})
        return path

    def on_fit_end(self) -> None:
        if self.hparams.export_path and self.trainer.is_global_zero:
            self.export(self.hparams.export_path)
