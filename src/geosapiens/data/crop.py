"""Top-down person crops as 2x3 affines (mmpose's UDP convention, the one Sapiens' reported AP used).

A crop is fully described by one affine ``A`` (image px -> crop px, pixel centres at integer coordinates):
the image is warped with it once, keypoints are moved with it, and predictions go back to image pixels with
``invert_affine(A)``. Rotation and horizontal flip live in the same matrix, so an augmented view is still one
warp (``reference/sapiens.md`` §5). Affines are float64: they are tiny and a round trip must stay < 1e-3 px.

Three frames meet here: the image, the *canonical* crop (the unaugmented crop of a record's box,
:func:`canonical_affine`: the frame critic caches and evaluation use) and a *view* (a random augmented crop,
:func:`view_affine`). :func:`canonical_to_view` and :func:`view_to_canonical` move between a record's crops;
the algebra itself (invert, compose, apply) is :mod:`geosapiens.affine`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from geosapiens.affine import Array, compose_affine, invert_affine

__all__ = [
    "bbox_to_center_scale",
    "udp_affine",
    "ViewParams",
    "canonical_affine",
    "view_affine",
    "crop_to_crop",
    "canonical_to_view",
    "view_to_canonical",
    "warp_image",
]


def bbox_to_center_scale(
    bbox_xywh: np.ndarray | tuple[float, float, float, float],
    aspect_wh: float,
    padding: float = 1.25,
) -> tuple[np.ndarray, np.ndarray]:
    """Box centre and padded box size ``scale`` (w, h) with the input's aspect ratio.

    mmpose ``GetBBoxCenterScale`` + ``_fix_aspect_ratio``: the padded box's shorter side (relative to the
    target aspect) is enlarged, never cropped, so the whole person stays in view without distortion.

    Args:
        bbox_xywh: (4,) x, y, w, h in image pixels.
        aspect_wh: input width / height (e.g. 768 / 1024).
        padding: factor applied to w and h before fixing the aspect.

    Returns:
        center (2,) float64 and scale (2,) float64, ``scale[0] / scale[1] == aspect_wh``.
    """
    x, y, w, h = (float(v) for v in np.asarray(bbox_xywh, dtype=np.float64).reshape(4))
    center = np.array([x + 0.5 * w, y + 0.5 * h])
    w, h = w * padding, h * padding
    if w > h * aspect_wh:
        h = w / aspect_wh
    else:
        w = h * aspect_wh
    return center, np.array([w, h])


def udp_affine(
    center: np.ndarray,
    scale: np.ndarray,
    output_size_hw: tuple[int, int],
    rotation_deg: float = 0.0,
    flip: bool = False,
) -> np.ndarray:
    """The UDP top-down warp (image -> crop), as mmpose ``get_udp_warp_matrix``, optionally mirrored.

    ``x' = S R (x - center) + (out - 1) / 2`` with ``S = diag((out_w - 1) / scale_w, (out_h - 1) / scale_h)``:
    the box spans exactly ``out - 1`` pixel steps (unbiased data processing). A positive rotation turns the
    content clockwise on screen (y points down). ``flip`` mirrors the crop, ``x'' = out_w - 1 - x'``; the
    caller swaps left/right keypoint channels.

    Args:
        center: (2,) box centre in image px.
        scale: (2,) box size (w, h) in image px, e.g. from :func:`bbox_to_center_scale`.
        output_size_hw: crop size (H, W).
        rotation_deg: rotation of the crop about the box centre.
        flip: mirror the crop horizontally.

    Returns:
        (2, 3) float64 affine image px -> crop px.
    """
    out_h, out_w = output_size_hw
    sx = (out_w - 1) / float(scale[0])
    sy = (out_h - 1) / float(scale[1])
    theta = np.deg2rad(rotation_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    linear = np.array([[sx * cos, -sx * sin], [sy * sin, sy * cos]])
    offset = np.array([0.5 * (out_w - 1), 0.5 * (out_h - 1)]) - linear @ np.asarray(center, dtype=np.float64)
    affine = np.concatenate([linear, offset[:, None]], axis=1)
    if flip:
        affine = compose_affine(np.array([[-1.0, 0.0, out_w - 1.0], [0.0, 1.0, 0.0]]), affine)
    return affine


@dataclass(frozen=True)
class ViewParams:
    """One view's geometry: box scale factor, rotation (deg), mirror, centre shift (box fractions)."""

    scale: float = 1.0
    rotation: float = 0.0
    flip: bool = False
    shift: tuple[float, float] = (0.0, 0.0)


def canonical_affine(
    bbox_xywh: np.ndarray | Sequence[float], input_size_hw: tuple[int, int], padding: float = 1.25
) -> np.ndarray:
    """(2, 3) float64 image -> canonical crop: the unaugmented UDP crop of the box (the one definition)."""
    h, w = input_size_hw
    center, scale = bbox_to_center_scale(bbox_xywh, w / h, padding)
    return udp_affine(center, scale, input_size_hw)


def view_affine(
    bbox_xywh: np.ndarray | Sequence[float],
    input_size_hw: tuple[int, int],
    params: ViewParams | None,
    padding: float = 1.25,
) -> np.ndarray:
    """(2, 3) float64 image -> view crop: the UDP box crop with the view's geometry folded in (one warp).

    ``params=None`` is the canonical crop (:func:`canonical_affine`).
    """
    if params is None:
        return canonical_affine(bbox_xywh, input_size_hw, padding)
    h, w = input_size_hw
    center, scale = bbox_to_center_scale(bbox_xywh, w / h, padding)
    center = center + np.asarray(params.shift) * scale
    return udp_affine(center, scale * params.scale, input_size_hw, params.rotation, params.flip)


def crop_to_crop(source: Array, target: Array) -> Array:
    """``(..., 2, 3)`` source crop px -> target crop px, from the two crops' image -> crop affines.

    ``target o source^-1``; torch tensors are composed in float64 and returned in ``target``'s dtype.
    """
    if isinstance(target, np.ndarray):
        return compose_affine(target, invert_affine(source))
    return compose_affine(target.double(), invert_affine(source.double())).to(target.dtype)


def canonical_to_view(canonical: Array, view: Array) -> Array:
    """Canonical crop px -> view px, from a sample's ``canonical_affine`` and its view's affine."""
    return crop_to_crop(canonical, view)


def view_to_canonical(canonical: Array, view: Array) -> Array:
    """View px -> canonical crop px (the inverse of :func:`canonical_to_view`, same argument order)."""
    return crop_to_crop(view, canonical)


def warp_image(
    image: np.ndarray,
    affine: np.ndarray,
    output_size_hw: tuple[int, int],
    interpolation: int = cv2.INTER_LINEAR,
    border_value: float | tuple[float, ...] = 0,
) -> np.ndarray:
    """Warp an image (HxW or HxWxC) into the crop with ``cv2.warpAffine`` (constant border).

    Use ``interpolation=cv2.INTER_NEAREST`` for label masks.
    """
    out_h, out_w = output_size_hw
    return cv2.warpAffine(
        image,
        np.asarray(affine, dtype=np.float64),
        (int(out_w), int(out_h)),
        flags=interpolation,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=border_value,
    )
