"""Geometric critics from Meta's Sapiens depth and normal models (official checkpoints or TorchScript files).

They run as the reference inference runs them (``../shared/reference/sapiens.md`` §4-§5): the whole crop
is resized (no aspect preservation, bilinear) to the model input (1024 x 768), predicted, and the raw output
is resized back to the crop bilinearly (``align_corners=False``); normals are L2-normalised per pixel
*after* that upsampling (eps 1e-5). Sapiens depth is relative and scale-ambiguous (larger = farther), so it
is normalised per image like every critic's (:func:`geosapiens.models.geometry.normalize_relative_depth`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from geosapiens.errors import CheckpointError
from geosapiens.models.backbone import create_backbone
from geosapiens.models.critics import GeometricCritic, GeometryMaps
from geosapiens.models.geometry import normalize_relative_depth
from geosapiens.models.heads import SapiensDepthHead, SapiensNormalHead
from geosapiens.models.official_checkpoint import (
    SapiensCheckpoint,
    load_checkpoint,
    load_head_state,
    load_torchscript,
)

__all__ = ["SapiensCritic", "TorchScriptCritic"]

NORMAL_EPS = 1e-5  # the official per-pixel normalisation epsilon


class _WholeImageCritic(GeometricCritic):
    """Resize the crop to the model input, predict raw depth and normals, bring them back to the crop."""

    def __init__(self, input_size: tuple[int, int]) -> None:
        super().__init__()
        self.input_size = tuple(int(s) for s in input_size)

    @abstractmethod
    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, h, w) model-size input -> raw depth (B, 1, ., .), raw normals (B, 3, ., .), native size."""

    def _dtype(self) -> torch.dtype:
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> GeometryMaps:
        """(B, 3, H, W) Sapiens-normalised crops -> GeometryMaps in the same (H, W) frame.

        Args:
            images: normalised with Sapiens' mean/std.
            valid: optional (B, 1, H, W) bool body/image mask; depth statistics use only those pixels and it
                is returned as ``GeometryMaps.valid``.
        """
        size = images.shape[-2:]
        x = images.to(self._dtype())
        if tuple(size) != self.input_size:
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False)
        depth, normals = self.predict(x)
        depth = F.interpolate(depth.float(), size=size, mode="bilinear", align_corners=False)
        normals = F.interpolate(normals.float(), size=size, mode="bilinear", align_corners=False)
        normals = F.normalize(normals, dim=1, eps=NORMAL_EPS)
        return GeometryMaps(depth=normalize_relative_depth(depth, valid), normals=normals, valid=valid)


def _official_dense_model(
    checkpoint: str | Path | SapiensCheckpoint, family: str, input_size: tuple[int, int]
) -> nn.Sequential:
    ckpt = (
        checkpoint
        if isinstance(checkpoint, SapiensCheckpoint)
        else load_checkpoint(checkpoint, family=family)
    )
    if ckpt.family != family:
        raise CheckpointError(f"{ckpt.path}: a {ckpt.family} checkpoint where a {family} one is needed")
    if ckpt.preset is None:
        raise CheckpointError(
            f"{ckpt.path}: no backbone preset with embed dim {ckpt.embed_dim}, depth {ckpt.depth}"
        )
    head = (SapiensDepthHead if family == "depth" else SapiensNormalHead).from_state_dict(ckpt.head)
    load_head_state(head, ckpt)
    return nn.Sequential(create_backbone(ckpt.preset, img_size=input_size, checkpoint=ckpt), head)


class SapiensCritic(_WholeImageCritic):
    """Frozen official Sapiens depth + normal models as one critic.

    Args:
        depth_checkpoint: official depth ``.pth`` / ``*_torchscript.pt2`` / converted safetensors
            (size recognised from the weights, no patch padding).
        normal_checkpoint: official normal checkpoint (2-px patch padding).
        input_size: (H, W) the models run at; 1024x768 is what they were trained for.
    """

    def __init__(
        self,
        depth_checkpoint: str | Path | SapiensCheckpoint,
        normal_checkpoint: str | Path | SapiensCheckpoint,
        input_size: tuple[int, int] = (1024, 768),
    ) -> None:
        super().__init__(input_size)
        self.depth_model = _official_dense_model(depth_checkpoint, "depth", self.input_size)
        self.normal_model = _official_dense_model(normal_checkpoint, "normal", self.input_size)
        self.freeze()

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.depth_model(images), self.normal_model(images)


def _tensors(output) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return [v for v in output.values() if isinstance(v, torch.Tensor)]
    if isinstance(output, (list, tuple)):
        return [v for v in output if isinstance(v, torch.Tensor)]
    return []


class TorchScriptCritic(_WholeImageCritic):
    """Frozen TorchScript model(s) mapping normalised images to depth and/or normals.

    Each file's output (a tensor, a tuple/list or a dict of tensors) is read by channel count: (B, 1, h, w) is
    depth, (B, 3, h, w) normals, at any resolution. Together the files must give exactly one of each, e.g. the
    official ``sapiens_*_render_people_*_torchscript.pt2`` (depth) and ``sapiens_*_normal_*_torchscript.pt2``.

    Args:
        files: one TorchScript file or several. input_size: (H, W) the files take (official: 1024x768).
    """

    def __init__(
        self, files: str | Path | Sequence[str | Path], input_size: tuple[int, int] = (1024, 768)
    ) -> None:
        super().__init__(input_size)
        self.paths = [str(files)] if isinstance(files, (str, Path)) else [str(f) for f in files]
        for path in self.paths:
            if not Path(path).is_file():
                raise CheckpointError(f"{path}: no such TorchScript file")
        self.scripts = nn.ModuleList(load_torchscript(path) for path in self.paths)
        self.freeze()

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        found: dict[int, torch.Tensor] = {}
        for path, module in zip(self.paths, self.scripts, strict=True):
            outputs = _tensors(module(images))
            for t in outputs:
                channels = t.shape[1] if t.ndim == 4 else None
                if channels not in (1, 3) or channels in found:
                    shapes = [tuple(o.shape) for o in outputs]
                    raise CheckpointError(
                        f"{path}: outputs {shapes}: expected (B, 1, h, w) depth and/or (B, 3, h, w) normals, "
                        "one of each across the files"
                    )
                found[channels] = t
        missing = [
            name for c, name in ((1, "depth (1 channel)"), (3, "normals (3 channels)")) if c not in found
        ]
        if missing:
            raise CheckpointError(f"{', '.join(self.paths)}: no file predicts {' or '.join(missing)}")
        return found[1], found[3]
