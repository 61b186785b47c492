"""2x3 affines of the plane: the one place they are inverted, composed and applied.

Every crop, view and map frame change in Geo-Sapiens is a (2, 3) affine ``x -> A[:, :2] x + A[:, 2]`` (pixel
centres at integer coordinates). These functions take NumPy arrays or torch tensors, a single ``(2, 3)`` or a
batch ``(..., 2, 3)``, and return the same kind. NumPy works in float64 (a crop round trip stays < 1e-3 px);
torch keeps the inputs' dtype and device (float64 is not on every accelerator), so callers that need the
precision pass float64. How crops are built from boxes lives in :mod:`geosapiens.data.crop`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np
import torch

__all__ = ["to_3x3", "invert_affine", "compose_affine", "apply_affine", "is_mirror", "udp_rescale"]

Array = TypeVar("Array", np.ndarray, torch.Tensor)


def _float64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def to_3x3(affine: Array) -> Array:
    """``(..., 3, 3)`` homogeneous matrix of ``(..., 2, 3)`` affines (last row 0, 0, 1)."""
    if isinstance(affine, torch.Tensor):
        last = affine.new_tensor([0.0, 0.0, 1.0]).expand(*affine.shape[:-2], 1, 3)
        return torch.cat([affine, last], dim=-2)
    affine = _float64(affine)
    last = np.broadcast_to(np.array([0.0, 0.0, 1.0]), (*affine.shape[:-2], 1, 3))
    return np.concatenate([affine, last], axis=-2)


def invert_affine(affine: Array) -> Array:
    """``(..., 2, 3)`` inverse of each affine: ``apply_affine(apply_affine(x, A), invert_affine(A)) == x``."""
    if isinstance(affine, torch.Tensor):
        inv = torch.linalg.inv(affine[..., :2])
        return torch.cat([inv, -inv @ affine[..., 2:]], dim=-1)
    affine = _float64(affine)
    inv = np.linalg.inv(affine[..., :2])
    return np.concatenate([inv, -inv @ affine[..., 2:]], axis=-1)


def compose_affine(a: Array, b: Array) -> Array:
    """``a`` after ``b``: the ``(..., 2, 3)`` affine ``x -> a(b(x))``."""
    if isinstance(a, torch.Tensor):
        b = b.to(a)
        return torch.cat([a[..., :2] @ b[..., :2], a[..., :2] @ b[..., 2:] + a[..., 2:]], dim=-1)
    a, b = _float64(a), _float64(b)
    return np.concatenate([a[..., :2] @ b[..., :2], a[..., :2] @ b[..., 2:] + a[..., 2:]], axis=-1)


def apply_affine(points: Array, affine: Array) -> Array:
    """Map points ``(..., 2)`` (x, y) through an affine.

    A single ``(2, 3)`` affine moves points of any shape; a batch ``(B, 2, 3)`` moves ``(B, K, 2)`` points,
    sample by sample (likewise for more batch dimensions). NumPy computes in float64 and returns the points'
    float dtype (float64 for integer points); torch computes in the points' dtype.
    """
    if isinstance(points, torch.Tensor):
        affine = affine.to(points.dtype)
        linear, shift = affine[..., :2].transpose(-1, -2), affine[..., 2]
    else:
        points = np.asarray(points)
        dtype = points.dtype if np.issubdtype(points.dtype, np.floating) else np.float64
        affine = _float64(affine)
        linear, shift = np.swapaxes(affine[..., :2], -1, -2), affine[..., 2]
        points = points.astype(np.float64)
    if affine.ndim > 2:  # per-sample affines: one shift row per sample
        shift = shift[..., None, :]
    out = points @ linear + shift
    return out if isinstance(out, torch.Tensor) else out.astype(dtype, copy=False)


def is_mirror(affine: Array) -> Array:
    """``(...)`` bool: the affine mirrors the plane (its linear part has a negative determinant)."""
    if isinstance(affine, torch.Tensor):
        return torch.linalg.det(affine[..., :2].double()) < 0
    return np.linalg.det(_float64(affine)[..., :2]) < 0


def udp_rescale(source_hw: Sequence[int], target_hw: Sequence[int]) -> np.ndarray:
    """(2, 3) float64 affine from a ``source_hw`` pixel grid to a ``target_hw`` grid of the same frame.

    Under unbiased data processing (UDP) the first and last pixel centres of both grids coincide, so
    ``x_target = x_source * (W_t - 1) / (W_s - 1)`` per axis: a stride-4 map or heatmap and its crop, a
    teacher's crop and a student's (what ``align_corners=True`` resampling does to images).
    """
    (hs, ws), (ht, wt) = source_hw, target_hw
    return np.array([[(wt - 1) / max(ws - 1, 1), 0.0, 0.0], [0.0, (ht - 1) / max(hs - 1, 1), 0.0]])
