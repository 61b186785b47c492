"""A small depth/normal critic trained on rendered data: the CPU demo's stand-in for Sapiens' critics.

Same shape of model as the real thing, scaled down: a timm CNN backbone and the Sapiens dense heads
(:class:`~geosapiens.models.heads.SapiensDepthHead`, :class:`~geosapiens.models.heads.SapiensNormalHead`) at
small widths. It learns from the procedural generator's rendered maps (``geosapiens_maps/*.npz``, read through
:class:`~geosapiens.models.oracle_critic.OracleCritic` so targets are in exactly the critic convention):

- depth: scale-and-shift-invariant L1 between
  :func:`~geosapiens.models.geometry.normalize_relative_depth` of the prediction and of the rendered depth, on
  the body;
- normals: ``1 - cos`` on the body;
- body mask: binary cross-entropy inside the image (the depth head's second channel), so the trained critic
  can say where its maps mean something (``GeometryMaps.valid``), which Sapiens cannot.

Train with ``geosapiens fit --config configs/critics/small_critic.yaml``; the task writes the network alone to
a safetensors file (``export_path``) that :class:`SmallCritic` loads, frozen, for the cache or a training
stage.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from geosapiens.data.records import PoseRecord
from geosapiens.errors import CheckpointError, DataError
from geosapiens.models.critics import GeometricCritic, GeometryMaps
from geosapiens.models.geometry import normalize_relative_depth
from geosapiens.models.oracle_critic import OracleCritic

__all__ = [
    "SmallCriticNet",
    "SmallCritic",
    "SmallCriticTask",
    "RenderedMapsDataset",
    "SmallCriticDataModule",
    "critic_losses",
]

METADATA_KEY = "geosapiens_small_critic"
NORMAL_EPS = 1e-5


class SmallCriticNet(nn.Module):
    """Backbone + Sapiens-style depth head (relative depth, body-mask logit) + normal head.

    Args:
        backbone: :func:`~geosapiens.models.backbone.create_backbone` name (``timm:resnet18`` for the demo).
        depth_deconvs, normal_deconvs: channels of each x2 deconvolution of the two heads.
        depth_convs, normal_convs: channels of the 1x1 convolutions after them.

    Shapes: (B, 3, H, W) -> depth (B, 1, H, W), mask logit (B, 1, H, W), unit normals (B, 3, H, W); the heads'
    outputs are resized bilinearly to the input and normals L2-normalised after that, as Sapiens' inference
    does.
    """

    def __init__(
        self,
        backbone: str = "timm:resnet18",
        depth_deconvs: Sequence[int] = (96, 64, 48, 32),
        depth_convs: Sequence[int] = (32,),
        normal_deconvs: Sequence[int] = (96, 64, 48),
        normal_convs: Sequence[int] = (48,),
    ) -> None:
        super().__init__()
        from geosapiens.models.backbone import create_backbone
        from geosapiens.models.heads import SapiensDepthHead, SapiensNormalHead

        self.config = {
            "backbone": backbone,
            "depth_deconvs": [int(c) for c in depth_deconvs],
            "depth_convs": [int(c) for c in depth_convs],
            "normal_deconvs": [int(c) for c in normal_deconvs],
            "normal_convs": [int(c) for c in normal_convs],
        }
        self.backbone = create_backbone(backbone)
        width = self.backbone.out_channels
        self.depth_head = SapiensDepthHead(width, depth_deconvs, depth_convs, out_channels=2)
        self.normal_head = SapiensNormalHead(width, normal_deconvs, normal_convs, out_channels=3)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = images.shape[-2:]
        features = self.backbone(images)
        depth_mask = F.interpolate(self.depth_head(features), size=size, mode="bilinear", align_corners=False)
        normals = F.interpolate(self.normal_head(features), size=size, mode="bilinear", align_corners=False)
        return depth_mask[:, 0:1], depth_mask[:, 1:2], F.normalize(normals, dim=1, eps=NORMAL_EPS)


def critic_losses(
    depth: torch.Tensor,
    mask_logit: torch.Tensor,
    normals: torch.Tensor,
    target: GeometryMaps,
    inside: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Losses of a depth/normal/mask prediction against rendered targets.

    Args:
        depth: (B, 1, H, W) raw predicted depth (any scale and offset).
        mask_logit: (B, 1, H, W) body logit.
        normals: (B, 3, H, W) unit normals.
        target: rendered maps in the same frame: normalised relative depth, unit normals, valid = body.
        inside: (B, 1, H, W) bool pixels inside the source image (the mask loss ignores the crop's padding).

    Returns:
        ``depth`` (scale-shift-invariant L1 on the body), ``normal`` (mean 1 - cos on the body), ``mask`` (BCE
        inside the image), ``normal_angle_deg`` (mean angular error, for logging); all finite for empty masks.
    """
    body = target.valid.bool()
    n_body = body.sum().clamp_min(1)
    pred_depth = normalize_relative_depth(depth, body)
    depth_loss = ((pred_depth - target.depth).abs() * body).sum() / n_body
    cos = (normals * target.normals).sum(dim=1, keepdim=True).clamp(-1.0, 1.0)
    normal_loss = ((1.0 - cos) * body).sum() / n_body
    angle = (torch.rad2deg(torch.acos(cos.detach().clamp(-1 + 1e-6, 1 - 1e-6))) * body).sum() / n_body
    bce = F.binary_cross_entropy_with_logits(mask_logit, body.float(), reduction="none")
    mask_loss = (bce * inside).sum() / inside.sum().clamp_min(1)
    return {"depth": depth_loss, "normal": normal_loss, "mask": mask_loss, "normal_angle_deg": angle}


class SmallCritic(GeometricCritic):
    """A trained :class:`SmallCriticNet`, frozen, as a geometric critic.

    Args:
        net: the trained network.
        mask_threshold: body probability above which a pixel is ``valid``.
    """

    def __init__(self, net: SmallCriticNet, mask_threshold: float = 0.5) -> None:
        super().__init__()
        self.net = net
        self.mask_threshold = mask_threshold
        self.freeze()

    @classmethod
    def from_file(cls, path: str | Path, mask_threshold: float = 0.5) -> SmallCritic:
        """Load the task's safetensors export or a Lightning ``.ckpt`` of :class:`SmallCriticTask`."""
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such small-critic file")
        if path.suffix == ".safetensors":
            config, state = _read_safetensors(path)
        else:
            config, state = _read_lightning(path)
        try:
            net = SmallCriticNet(**config)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: bad small-critic config {config}: {err}") from err
        try:
            result = net.load_state_dict(state, strict=False)
        except RuntimeError as err:  # mis-shaped tensors; torch names them
            raise CheckpointError(f"{path}: weights do not fit SmallCriticNet({config}): {err}") from err
        missing, unexpected = result.missing_keys, result.unexpected_keys
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not fit SmallCriticNet({config}): {len(missing)} missing keys "
                f"{missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}"
            )
        return cls(net, mask_threshold)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> GeometryMaps:
        """(B, 3, H, W) Sapiens-normalised crops -> relative depth, unit normals, predicted body mask."""
        depth, mask_logit, normals = self.net(images)
        valid = torch.sigmoid(mask_logit) > self.mask_threshold
        return GeometryMaps(depth=normalize_relative_depth(depth, valid), normals=normals, valid=valid)


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    if METADATA_KEY not in metadata:
        raise CheckpointError(f"{path}: no {METADATA_KEY!r} metadata; not written by SmallCriticTask.export")
    return json.loads(metadata[METADATA_KEY]), state


def _read_lightning(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for truncated/unsafe files
        raise CheckpointError(f"{path}: cannot load as a safe (weights_only) checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    hparams = ckpt.get("hyper_parameters", {})
    config = {
        k: hparams[k]
        for k in ("backbone", "depth_deconvs", "depth_convs", "normal_deconvs", "normal_convs")
        if k in hparams
    }
    state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
    return config, state


class SmallCriticTask(L.LightningModule):
    """Trains :class:`SmallCriticNet` on rendered depth/normal maps.

    Args:
        backbone, depth_deconvs, depth_convs, normal_deconvs, normal_convs: the :class:`SmallCriticNet`.
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
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        depth_weight: float = 1.0,
        normal_weight: float = 1.0,
        mask_weight: float = 0.5,
        export_path: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = SmallCriticNet(backbone, depth_deconvs, depth_convs, normal_deconvs, normal_convs)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.net(images)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        depth, mask_logit, normals = self.net(batch["image"])
        target = GeometryMaps(depth=batch["depth"], normals=batch["normals"], valid=batch["valid"])
        losses = critic_losses(depth, mask_logit, normals, target, batch["inside"])
        hp = self.hparams
        loss = (
            hp.depth_weight * losses["depth"]
            + hp.normal_weight * losses["normal"]
            + hp.mask_weight * losses["mask"]
        )
        batch_size = batch["image"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=batch_size, sync_dist=stage != "train")
        for name, value in losses.items():
            self.log(f"{stage}/{name}", value, batch_size=batch_size, sync_dist=stage != "train")
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

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


class RenderedMapsDataset(Dataset):
    """Canonical (optionally augmented) crops of rendered records with their target maps.

    Augmentation draws one random rotation / scale / flip per item from torch's generator (seeded per worker
    by the DataLoader) and applies the same affine to the image and the maps, so normals rotate and flip
    with it.

    Args:
        records: records with ``maps_path`` (generator output).
        input_size_hw: crop (H, W).
        padding: box padding of the crop.
        augment: random rotation (+-``max_rotation`` deg), scale (1 +- ``max_scale``), mirror (p 0.5).

    Items: ``image`` (3, H, W) Sapiens-normalised, ``depth`` (1, H, W) normalised relative depth, ``normals``
    (3, H, W), ``valid`` (1, H, W) bool body, ``inside`` (1, H, W) bool inside the source image.
    """

    def __init__(
        self,
        records: Sequence[PoseRecord],
        input_size_hw: Sequence[int] = (128, 96),
        padding: float = 1.25,
        augment: bool = False,
        max_rotation: float = 30.0,
        max_scale: float = 0.2,
    ) -> None:
        self.records = [r for r in records if r.maps_path is not None]
        if not self.records:
            where = records[0].image_path.parent if records else "<no records>"
            raise DataError(where, "no record has rendered maps (geosapiens_maps/*.npz) to train a critic on")
        self.input_size = (int(input_size_hw[0]), int(input_size_hw[1]))
        self.padding, self.augment = padding, augment
        self.max_rotation, self.max_scale = max_rotation, max_scale
        self.oracle = OracleCritic()

    def __len__(self) -> int:
        return len(self.records)

    def affine(self, record: PoseRecord) -> np.ndarray:
        from geosapiens.data.crop import bbox_to_center_scale, udp_affine

        h, w = self.input_size
        center, scale = bbox_to_center_scale(record.bbox, w / h, self.padding)
        if not self.augment:
            return udp_affine(center, scale, self.input_size)
        u = torch.rand(3).tolist()
        rotation = (2 * u[0] - 1) * self.max_rotation
        zoom = 1 + (2 * u[1] - 1) * self.max_scale
        return udp_affine(center, scale * zoom, self.input_size, rotation, flip=u[2] < 0.5)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from geosapiens.data.crop import warp_image
        from geosapiens.data.datasets import read_image, to_tensor

        record = self.records[index]
        affine = self.affine(record)
        image = read_image(record.image_path, record=record.image_id)
        maps = self.oracle.maps([record], torch.from_numpy(affine)[None], self.input_size)
        inside = warp_image(np.ones(image.shape[:2], np.uint8), affine, self.input_size, border_value=0) > 0
        return {
            "image": to_tensor(warp_image(image, affine, self.input_size)),
            "depth": maps.depth[0],
            "normals": maps.normals[0],
            "valid": maps.valid[0],
            "inside": torch.from_numpy(inside)[None],
        }


class SmallCriticDataModule(L.LightningDataModule):
    """Rendered SyRIP-format data (generator output with ``geosapiens_maps``) for :class:`SmallCriticTask`.

    Args:
        data_root: dataset root. annotation_file: SyRIP annotation file (relative to the root or absolute).
        input_size: crop (H, W). padding: box padding.
        val_every: every ``val_every``-th image (by sorted image path) is held out for validation.
        batch_size, num_workers: DataLoader settings. augment: augment the training crops.
    """

    def __init__(
        self,
        data_root: str,
        annotation_file: str,
        input_size: Sequence[int] = (128, 96),
        padding: float = 1.25,
        val_every: int = 10,
        batch_size: int = 16,
        num_workers: int = 0,
        augment: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        from geosapiens.data.formats.syrip import read_syrip

        hp = self.hparams
        records = sorted(read_syrip(hp.data_root, hp.annotation_file), key=lambda r: str(r.image_path))
        records = [r for r in records if r.maps_path is not None]
        if len(records) < 2:
            raise DataError(
                hp.data_root,
                f"{len(records)} images with rendered maps under {hp.annotation_file}; "
                "need at least 2 (generate data with `geosapiens data synth`)",
            )
        every = max(2, int(hp.val_every))
        val = [r for i, r in enumerate(records) if i % every == every - 1] or records[-1:]
        train = [r for r in records if all(r is not v for v in val)]
        self.train_set = RenderedMapsDataset(train, hp.input_size, hp.padding, augment=hp.augment)
        self.val_set = RenderedMapsDataset(val, hp.input_size, hp.padding, augment=False)

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.train_set,
            batch_size=hp.batch_size,
            shuffle=True,
            num_workers=hp.num_workers,
            drop_last=len(self.train_set) > hp.batch_size,
            persistent_workers=hp.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.val_set,
            batch_size=hp.batch_size,
            num_workers=hp.num_workers,
            persistent_workers=hp.num_workers > 0,
        )
