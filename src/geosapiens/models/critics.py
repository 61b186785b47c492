"""Geometric critics: frozen depth and normal estimators whose maps guide adaptation.

Every source (official Sapiens checkpoints, TorchScript files, a small trained critic, the generator's
rendered ground truth through the cache) answers the same question: for a batch of crops, what are the
relative depth and the camera-frame unit normals at each pixel of the crop?
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from geosapiens.models.frozen import keep_frozen


@dataclass
class GeometryMaps:
    """Critic output in the crop frame.

    Attributes:
        depth: (B, 1, H, W) relative depth, normalised per image (larger = farther).
        normals: (B, 3, H, W) unit normals in the camera frame (x right, y down, z forward).
        valid: (B, 1, H, W) bool where the maps are meaningful (on the body / inside the image), or None.
        body_distance: (B, 1, H, W) distance to the nearest valid pixel in isotropic image units (longer side
            = 1), 0 on the body (:func:`~geosapiens.models.geometry.body_distance`), or None.
    """

    depth: torch.Tensor
    normals: torch.Tensor
    valid: torch.Tensor | None = None
    body_distance: torch.Tensor | None = None

    def rows(self, index: torch.Tensor | slice) -> GeometryMaps:
        """The maps of some images of the batch."""
        return GeometryMaps(
            *(
                None if m is None else m[index]
                for m in (self.depth, self.normals, self.valid, self.body_distance)
            )
        )


class GeometricCritic(nn.Module, ABC):
    """A frozen image -> (depth, normals) estimator.

    Critics never train with the pose model: parameters are frozen, the module stays in eval mode whatever
    ``train()`` is called with, and its state dict is empty so critic weights never land in a training
    checkpoint (:func:`~geosapiens.models.frozen.keep_frozen`; they are reloaded from their own file).
    """

    def __init__(self) -> None:
        super().__init__()
        keep_frozen(self, from_state_dict=True)

    def freeze(self) -> GeometricCritic:
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> GeometricCritic:  # noqa: ARG002 - critics are always in eval mode
        return super().train(False)

    def weights(self) -> dict[str, torch.Tensor]:
        """The critic's real weights, for writing its own file."""
        children = self.named_children()
        return {f"{name}.{k}": v for name, child in children for k, v in child.state_dict().items()}

    @abstractmethod
    def forward(self, images: torch.Tensor) -> GeometryMaps:
        """Map (B, 3, H, W) images, normalised with Sapiens' mean/std, to geometry in the same frame."""
