"""Sapiens' input normalisation (``reference/sapiens.md`` §5): per-channel mean and std on 0-255 RGB.

A property of the pretrained backbone, shared by the data path, the pictures and the ONNX export.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["SAPIENS_MEAN", "SAPIENS_STD", "to_tensor"]

SAPIENS_MEAN = (123.675, 116.28, 103.53)
SAPIENS_STD = (58.395, 57.12, 57.375)

# (x - mean) / std as one fused x * scale + bias
_SCALE = 1.0 / torch.tensor(SAPIENS_STD).view(3, 1, 1)
_BIAS = -torch.tensor(SAPIENS_MEAN).view(3, 1, 1) * _SCALE


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) contiguous float32 normalised with Sapiens' mean/std.

    The uint8 planes are made contiguous first (cheap) so the float pass and the collate copy are
    sequential; 3x faster than normalising the HWC view at 1024 px.
    """
    planes = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    return torch.addcmul(_BIAS, planes, _SCALE)
