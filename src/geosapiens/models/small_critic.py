"""A small depth/normal critic trained on rendered data: the CPU demo's stand-in for Sapiens' critics.

Same shape of model as the real thing, scaled down: a timm CNN backbone and the Sapiens dense heads
(:class:`~geosapiens.models.heads.SapiensDepthHead`, :class:`~geosapiens.models.heads.SapiensNormalHead`) at
small widths. It learns from the procedural generator's rendered maps (``geosapiens_maps/*.npz``, read through
:class:`~geosapiens.data.oracle_critic.OracleCritic` so targets are in exactly the critic convention):

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

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geosapiens.errors import CheckpointError
from geosapiens.models.critics import GeometricCritic, GeometryMaps
from geosapiens.models.geometry import normalize_relative_depth
from geosapiens.models.stage_checkpoint import prefixed_weights, read_checkpoint

__all__ = [
    "SmallCriticNet",
    "SmallCritic",
]

METADATA_KEY = "geosapiens_small_critic"
NORMAL_EPS = 1e-5


class SmallCriticNet(nn.Module):
    """Backbone + Sapiens-style depth head (relative depth, body-mask logit) + normal head.

    Args:
        backbone: :func:`~geosapiens.models.backbone.create_backbone` name (``timm:resnet18`` for the demo).
        backbone_kwargs: its keyword arguments, e.g. ``output_stride`` (a mask decoded from a stride-32 map of
            a 128 px crop is a blob: 4 x 4 features).
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
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from geosapiens.models.backbone import create_backbone
        from geosapiens.models.heads import SapiensDepthHead, SapiensNormalHead

        self.config = {
            "backbone": backbone,
            "backbone_kwargs": dict(backbone_kwargs or {}),
            "depth_deconvs": [int(c) for c in depth_deconvs],
            "depth_convs": [int(c) for c in depth_convs],
            "normal_deconvs": [int(c) for c in normal_deconvs],
            "normal_convs": [int(c) for c in normal_convs],
        }
        self.backbone = create_backbone(backbone, **self.config["backbone_kwargs"])
        width = self.backbone.out_channels
        self.depth_head = SapiensDepthHead(width, depth_deconvs, depth_convs, out_channels=2)
        self.normal_head = SapiensNormalHead(width, normal_deconvs, normal_convs, out_channels=3)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        size = images.shape[-2:]
        features = self.backbone(images)
        depth_mask = F.interpolate(self.depth_head(features), size=size, mode="bilinear", align_corners=False)
        normals = F.interpolate(self.normal_head(features), size=size, mode="bilinear", align_corners=False)
        return depth_mask[:, 0:1], depth_mask[:, 1:2], F.normalize(normals, dim=1, eps=NORMAL_EPS)


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
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters", {})
    # the task's hyper-parameters include the network's arguments (SmallCriticNet.config's keys)
    config = {k: hparams[k] for k in inspect.signature(SmallCriticNet).parameters if k in hparams}
    return config, prefixed_weights(ckpt, path, "net.")
