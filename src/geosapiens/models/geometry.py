"""Moving critic geometry between crop frames, and the one per-image depth normalisation.

Critic maps are computed once per image in the canonical crop frame and re-used for every augmented view by
warping them with the view's affine (:func:`warp_maps`). An image-plane rotation is a camera roll, so the
normals' x/y components rotate with it; a mirror flips the scene, so x is negated. Both come from the
orthogonal factor of the affine's 2x2 linear part (polar decomposition), which ignores scale and shift.

Every depth source (Sapiens' relative depth, a small critic, rendered depth in millimetres) is put on the
same footing by :func:`normalize_relative_depth`, which the Sapiens critic, the oracle and the small critic
all call.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from geosapiens.affine import invert_affine
from geosapiens.models.codec import resize_aligned
from geosapiens.models.critics import GeometryMaps

__all__ = [
    "normalize_relative_depth",
    "polar_rotation",
    "rotate_normals",
    "warp_maps",
    "resample_maps",
    "body_distance",
    "normals_from_depth",
]


def normalize_relative_depth(
    depth: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-6
) -> torch.Tensor:
    """Per-image robust standardisation of depth: ``(d - median(d[valid])) / (mean|d - median| + eps)``.

    The result is invariant to a positive scale and shift of the input (millimetres, metres, or Sapiens'
    scale-ambiguous relative depth all give the same map) and keeps "larger = farther". Statistics use only
    ``valid`` pixels (the body: background depth is meaningless for Sapiens and zero for rendered data);
    the output is 0 outside ``valid``. An image with no valid pixel is all zeros. Differentiable (the median
    is a gather), so the small critic trains through it.

    Args:
        depth: (B, 1, H, W).
        valid: (B, 1, H, W) bool, or None for every pixel.
        eps: added to the mean absolute deviation (flat depth gives 0, not inf).

    Returns:
        (B, 1, H, W) same dtype as ``depth``.
    """
    B = depth.shape[0]
    flat = depth.reshape(B, -1)
    mask = torch.ones_like(flat, dtype=torch.bool) if valid is None else valid.reshape(B, -1).bool()
    n = mask.sum(dim=1)
    empty = n == 0
    stats_mask = mask | empty[:, None]
    n = stats_mask.sum(dim=1)
    inf = torch.tensor(float("inf"), dtype=flat.dtype, device=flat.device)
    ordered = torch.where(stats_mask, flat, inf).sort(dim=1).values
    median = ordered.gather(1, ((n - 1) // 2)[:, None])  # lower median, as torch.median
    mad = ((flat - median).abs() * stats_mask).sum(dim=1, keepdim=True) / n[:, None]
    out = (flat - median) / (mad + eps)
    out = torch.where(mask & ~empty[:, None], out, torch.zeros_like(out))
    return out.reshape(depth.shape)


def polar_rotation(affine: torch.Tensor) -> torch.Tensor:
    """(B, 2, 2) orthogonal factor R of the linear part A = R P (P symmetric positive): the in-plane rotation,
    composed with a mirror when det(A) < 0. Scale, anisotropy and shift do not affect it."""
    U, _, Vh = torch.linalg.svd(affine[:, :, :2].double())
    return (U @ Vh).to(affine.dtype)


def rotate_normals(normals: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Apply (B, 2, 2) ``rotation`` to the x/y of (B, 3, H, W) camera-frame normals; z is unchanged.

    A mirror (det -1, e.g. diag(-1, 1)) negates x, which is what a horizontal flip does to a scene's normals.
    """
    xy = torch.einsum("bij,bjhw->bihw", rotation.to(normals.dtype), normals[:, :2])
    return torch.cat([xy, normals[:, 2:]], dim=1)


def warp_maps(maps: GeometryMaps, affine: torch.Tensor, out_size_hw: tuple[int, int]) -> GeometryMaps:
    """Resample critic maps from a source crop frame into a target frame.

    Interpolation is masked: depth and normals are bilinear averages over *valid* source pixels only, so a
    body edge does not blend with background values; a target pixel is valid when more than half of its
    bilinear weight falls on valid source pixels inside the source image. Normals are rotated with
    :func:`polar_rotation` of ``affine`` and re-normalised.

    Args:
        maps: source maps, depth (B, 1, Hs, Ws), normals (B, 3, Hs, Ws), valid (B, 1, Hs, Ws) or None (all
            valid); any float dtype (float16 caches are computed in float32).
        affine: (B, 2, 3) source px -> target px (pixel centres at integers).
        out_size_hw: target (H, W).

    Returns:
        GeometryMaps in the target frame, float32 depth/normals and a bool valid; 0 where invalid.
    """
    depth = maps.depth.float()
    normals = maps.normals.float()
    B, _, Hs, Ws = depth.shape
    H, W = int(out_size_hw[0]), int(out_size_hw[1])
    device = depth.device
    valid = torch.ones_like(depth) if maps.valid is None else maps.valid.to(device=device, dtype=depth.dtype)
    affine = affine.to(device=device, dtype=torch.float64)

    inv = invert_affine(affine)  # target -> source
    ys, xs = torch.meshgrid(
        torch.arange(H, device=device, dtype=torch.float64),
        torch.arange(W, device=device, dtype=torch.float64),
        indexing="ij",
    )
    src_x = inv[:, 0, 0, None, None] * xs + inv[:, 0, 1, None, None] * ys + inv[:, 0, 2, None, None]
    src_y = inv[:, 1, 0, None, None] * xs + inv[:, 1, 1, None, None] * ys + inv[:, 1, 2, None, None]
    # align_corners=True: -1 and +1 are the centres of the first and last source pixels
    grid = torch.stack([2 * src_x / max(Ws - 1, 1) - 1, 2 * src_y / max(Hs - 1, 1) - 1], dim=-1).float()

    stacked = torch.cat([depth * valid, normals * valid, valid], dim=1)
    sampled = F.grid_sample(stacked, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    weight = sampled[:, 4:5]
    valid_out = weight > 0.5
    depth_out = torch.where(valid_out, sampled[:, 0:1] / weight.clamp_min(1e-6), torch.zeros_like(weight))
    normals_out = rotate_normals(sampled[:, 1:4], polar_rotation(affine).float())
    normals_out = F.normalize(normals_out, dim=1, eps=1e-6) * valid_out
    return GeometryMaps(depth=depth_out, normals=normals_out, valid=valid_out)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with zero padding (masked callers divide by a blurred mask)."""
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).repeat(x.shape[1], 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0)), k.unsqueeze(2), groups=x.shape[1])
    return F.conv2d(F.pad(x, (0, 0, radius, radius)), k.unsqueeze(3), groups=x.shape[1])


def resample_maps(maps: GeometryMaps, size_hw: tuple[int, int]) -> GeometryMaps:
    """Critic maps of a crop at another UDP-aligned resolution (``resize_aligned``'s pixel centres).

    Downsampling is antialiased: a masked Gaussian prefilter (std half the stride) over valid pixels, then
    :func:`warp_maps`' masked bilinear sampling, so depth and normals are averages over the body only and a
    pixel is valid where most of its footprint is; limbs at least ~3 source pixels wide survive a stride of 4.
    Returns ``maps`` itself at the same size.
    """
    H, W = maps.depth.shape[-2:]
    h, w = int(size_hw[0]), int(size_hw[1])
    if (h, w) == (H, W):
        return maps
    depth, normals = maps.depth.float(), maps.normals.float()
    valid = torch.ones_like(depth) if maps.valid is None else maps.valid.to(depth.dtype)
    sx, sy = (W - 1) / max(w - 1, 1), (H - 1) / max(h - 1, 1)
    if max(sx, sy) > 1:
        sigma = 0.5 * max(sx, sy)
        blurred = _blur(torch.cat([depth * valid, normals * valid, valid], dim=1), sigma)
        weight = blurred[:, 4:5].clamp_min(1e-6)
        depth, normals = blurred[:, 0:1] / weight, blurred[:, 1:4] / weight
        valid = blurred[:, 4:5] / _blur(torch.ones_like(valid[:1]), sigma)  # beyond the crop is not "invalid"
    scale = torch.tensor([[1 / sx, 0.0, 0.0], [0.0, 1 / sy, 0.0]], dtype=torch.float64, device=depth.device)
    return warp_maps(GeometryMaps(depth, normals, valid), scale.expand(depth.shape[0], 2, 3), (h, w))


def body_distance(valid: torch.Tensor, size_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """(B, 1, h, w) float32 distance from each pixel to the nearest body pixel, 0 on the body.

    In isotropic image units (the longer side of the crop = 1), so the value does not depend on the map's
    resolution; computed (exact Euclidean, OpenCV) at the mask's resolution, then resampled to ``size_hw``
    (a distance field is smooth, so bilinear resampling keeps it). An image with no body pixel has no
    silhouette to pull towards: all zeros.

    Args:
        valid: (B, 1, H, W) bool body mask.
        size_hw: output size, default the mask's.
    """
    import cv2

    masks = valid.detach().cpu().bool().numpy()[:, 0]
    H, W = masks.shape[-2:]
    side = float(max(H, W) - 1) or 1.0
    out = np.zeros(masks.shape, dtype=np.float32)
    for i, mask in enumerate(masks):
        if mask.any():
            outside = (~mask).astype(np.uint8)
            out[i] = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) / side
    distance = torch.from_numpy(out)[:, None].to(valid.device)
    return distance if size_hw is None else resize_aligned(distance, size_hw)


def normals_from_depth(
    depth_mm: np.ndarray,
    valid: np.ndarray,
    intrinsics: np.ndarray,
    smooth_sigma: float = 1.5,
    max_jump: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame unit normals from a depth image, for sources without rendered normals (MINI-RGBD).

    Depth is smoothed inside ``valid`` (normalised Gaussian convolution, so the background does not leak in
    and millimetre quantisation does not dominate), back-projected with the intrinsics
    ``X = z K^-1 [u, v, 1]``, and the normal is the cross product of the central differences along v and u,
    oriented towards the camera (``n . X < 0``). A pixel keeps a normal only where its four neighbours are
    valid and the depth changes by less than ``max_jump`` (relative) across them, i.e. not on an occlusion
    edge.

    Args:
        depth_mm: (H, W) depth (any unit, 0 = no data).
        valid: (H, W) bool.
        intrinsics: (3, 3) pinhole K.
        smooth_sigma: Gaussian std in px applied before differencing (0 = none).
        max_jump: largest relative depth change across the 2-px stencil still treated as one surface.

    Returns:
        normals (H, W, 3) float32 unit vectors (0 where invalid), valid (H, W) bool.
    """
    import cv2

    z = depth_mm.astype(np.float64)
    ok = valid.astype(bool) & (z > 0)
    if smooth_sigma > 0:
        w = cv2.GaussianBlur(ok.astype(np.float64), (0, 0), smooth_sigma)
        zs = cv2.GaussianBlur(z * ok, (0, 0), smooth_sigma)
        z = np.where(ok, zs / np.maximum(w, 1e-9), 0.0)
    H, W = z.shape
    u, v = np.meshgrid(np.arange(W, dtype=np.float64), np.arange(H, dtype=np.float64))
    Kinv = np.linalg.inv(np.asarray(intrinsics, dtype=np.float64))
    rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ Kinv.T
    X = rays * z[..., None]

    Xp = np.pad(X, ((1, 1), (1, 1), (0, 0)), mode="edge")
    okp = np.pad(ok, 1, mode="constant")
    zp = np.pad(z, 1, mode="edge")
    du = Xp[1:-1, 2:] - Xp[1:-1, :-2]
    dv = Xp[2:, 1:-1] - Xp[:-2, 1:-1]
    n = np.cross(dv, du)
    n /= np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)
    n *= np.where((n * X).sum(-1, keepdims=True) > 0, -1.0, 1.0)

    neighbours = okp[1:-1, 2:] & okp[1:-1, :-2] & okp[2:, 1:-1] & okp[:-2, 1:-1]
    jump = np.maximum(np.abs(zp[1:-1, 2:] - zp[1:-1, :-2]), np.abs(zp[2:, 1:-1] - zp[:-2, 1:-1]))
    out_valid = ok & neighbours & (jump < max_jump * np.maximum(z, 1e-9))
    return (n * out_valid[..., None]).astype(np.float32), out_valid
