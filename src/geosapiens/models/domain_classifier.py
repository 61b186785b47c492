"""FiDIP's domain classifier: backbone features -> one real/synthetic logit.

Layer layout after FiDIP's HRNet variant (reference/datasets.md §2.7): two conv-BN-ReLU-maxpool blocks,
then an MLP 256 -> 64 -> 1. An adaptive pool before the MLP makes it independent of the input size.
"""

from __future__ import annotations

import torch
from torch import nn


class DomainClassifier(nn.Module):
    """(B, C, h, w) features -> (B,) domain logits (1 = synthetic)."""

    def __init__(self, in_channels: int, pooled_size: tuple[int, int] = (4, 4)) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),
            ]

        self.features = nn.Sequential(
            *block(in_channels, 32), *block(32, 8), nn.AdaptiveAvgPool2d(pooled_size)
        )
        flat = 8 * pooled_size[0] * pooled_size[1]
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(inplace=True),
            nn.Linear(256, 64),
            nn.BatchNorm1d(64),
            nn.ReLU(inplace=True),
            nn.Linear(64, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(features)).squeeze(-1)
