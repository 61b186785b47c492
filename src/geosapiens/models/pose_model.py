"""Top-down pose network: a backbone feature map decoded to per-keypoint heatmaps at 1/4 input resolution."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from geosapiens.errors import CheckpointError
from geosapiens.models.backbone import create_backbone
from geosapiens.models.codec import HEATMAP_STRIDE
from geosapiens.models.heads import SapiensHeatmapHead
from geosapiens.models.official_checkpoint import SapiensCheckpoint, load_checkpoint, load_head_state

__all__ = ["PoseModel"]


class PoseModel(nn.Module):
    """Backbone + heatmap head.

    Args:
        backbone: any module with ``out_channels``, ``stride`` and
            ``forward(x) -> (B, C, H/stride, W/stride)`` (see ``backbone.create_backbone``).
        head: a heatmap head with an ``upsample`` factor (``DeconvHead``, ``SapiensHeatmapHead``) such that
            ``backbone.stride / head.upsample`` is 4.

    Raises:
        ValueError: the pair does not produce heatmaps at stride 4.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        stride = backbone.stride // head.upsample
        if stride * head.upsample != backbone.stride or stride != HEATMAP_STRIDE:
            raise ValueError(
                f"backbone stride {backbone.stride} / head upsampling x{head.upsample} gives heatmap stride "
                f"{backbone.stride / head.upsample:g}, expected {HEATMAP_STRIDE}"
            )
        self.backbone = backbone
        self.head = head

    @classmethod
    def from_checkpoint(
        cls, checkpoint: str | Path | SapiensCheckpoint, img_size: tuple[int, int] = (1024, 768)
    ) -> PoseModel:
        """The official pose model of a Sapiens pose checkpoint.

        Its backbone (size recognised from the weights, 2-px patch padding) and its full
        ``SapiensHeatmapHead`` (K = 308, 133 or 17).
        """
        ckpt = (
            checkpoint
            if isinstance(checkpoint, SapiensCheckpoint)
            else load_checkpoint(checkpoint, family="pose")
        )
        if ckpt.family != "pose" or ckpt.preset is None:
            raise CheckpointError(
                f"{ckpt.path}: need a pose checkpoint of a known size, got {ckpt.family} with embed dim "
                f"{ckpt.embed_dim}, depth {ckpt.depth}"
            )
        head = SapiensHeatmapHead.from_state_dict(ckpt.head)
        load_head_state(head, ckpt)
        return cls(create_backbone(ckpt.preset, img_size=img_size, checkpoint=ckpt), head)

    @property
    def num_keypoints(self) -> int:
        return self.head.num_keypoints

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Per-block activation checkpointing in the backbone (memory for compute)."""
        self.backbone.set_grad_checkpointing(enable)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, C, H/stride, W/stride) backbone features."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, K, H/4, W/4) heatmaps."""
        return self.head(self.backbone(images))
