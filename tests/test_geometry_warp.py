"""Warping critic maps between crop frames against an analytic scene rendered directly in each frame.

A sphere seen by a pinhole camera is ray-cast in the canonical frame, warped into a view with
``warp_maps``, and compared with the same sphere ray-cast by the view's own camera. For a similarity
``A = [s R | t]`` (R a rotation, or a rotation times a mirror) the view camera is ``K' = [[s f, 0, c'], ...]``
with ``c' = s R c + t`` looking at the scene transformed by ``diag(R, 1)``: an independent rendering, so
the normals' rotation and flip are checked against geometry, not against the implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from geosapiens.models.critics import GeometryMaps
from geosapiens.models.geometry import (
    normalize_relative_depth,
    normals_from_depth,
    polar_rotation,
    warp_maps,
)

F_PX = 110.0
SPHERE_C = np.array([0.08, -0.05, 1.0])
SPHERE_R = 0.2


def render_sphere(
    h: int, w: int, f: float, c: np.ndarray, centre: np.ndarray = SPHERE_C, radius: float = SPHERE_R
):
    """Ray-cast a sphere: depth (h, w) along the optical axis, outward normals (h, w, 3), mask (h, w)."""
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    d = np.stack([(u - c[0]) / f, (v - c[1]) / f, np.ones_like(u)], axis=-1)
    dd = (d * d).sum(-1)
    dc = d @ centre
    disc = dc**2 - dd * (centre @ centre - radius**2)
    hit = disc > 0
    t = np.where(hit, (dc - np.sqrt(np.maximum(disc, 0))) / dd, 0.0)
    p = d * t[..., None]
    n = (p - centre) / radius * hit[..., None]
    return t.astype(np.float32), n.astype(np.float32), hit


def similarity(angle_deg: float, scale: float, shift: tuple[float, float], flip: bool) -> np.ndarray:
    a = math.radians(angle_deg)
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    if flip:
        R = R @ np.diag([-1.0, 1.0])
    return np.concatenate([scale * R, np.array(shift)[:, None]], axis=1)


def render_view(A: np.ndarray, h: int, w: int, c: np.ndarray):
    """The sphere as the camera of view ``A`` (a similarity of the canonical image) sees it."""
    s = math.sqrt(abs(np.linalg.det(A[:, :2])))
    R = A[:, :2] / s
    R3 = np.eye(3)
    R3[:2, :2] = R
    return render_sphere(h, w, s * F_PX, s * R @ c + A[:, 2], centre=R3 @ SPHERE_C)


def as_maps(depth, normals, mask) -> GeometryMaps:
    return GeometryMaps(
        depth=torch.from_numpy(depth)[None, None],
        normals=torch.from_numpy(normals).permute(2, 0, 1)[None],
        valid=torch.from_numpy(mask)[None, None],
    )


CANON_HW = (96, 80)
CANON_C = np.array([39.5, 47.5])
SPHERE_PX = CANON_C + F_PX * SPHERE_C[:2] / SPHERE_C[2]  # where the sphere's centre projects


def view(
    angle_deg: float, scale: float, flip: bool, out_hw: tuple[int, int], offset=(0.0, 0.0)
) -> np.ndarray:
    """A view similarity putting the sphere near the middle of an ``out_hw`` crop."""
    A = similarity(angle_deg, scale, (0.0, 0.0), flip)
    target = np.array([(out_hw[1] - 1) / 2 + offset[0], (out_hw[0] - 1) / 2 + offset[1]])
    A[:, 2] = target - A[:, :2] @ np.round(SPHERE_PX)
    return A


VIEWS = [
    ("identity", similarity(0, 1.0, (0, 0), False), (96, 80)),
    ("shift-zoom", view(0, 1.3, False, (88, 72), (-3.0, 5.0)), (88, 72)),
    ("rot40", view(40, 0.9, False, (96, 96), (4.0, -2.0)), (96, 96)),
    ("flip", similarity(0, 1.0, (79.0, 0.0), True), (96, 80)),
    ("rot-110-flip-zoom", view(-110, 1.15, True, (100, 90), (2.5, 1.5)), (100, 90)),
]


@pytest.mark.parametrize("name,A,out_hw", VIEWS, ids=[v[0] for v in VIEWS])
def test_warped_maps_match_direct_rendering(name, A, out_hw):
    src = as_maps(*render_sphere(*CANON_HW, F_PX, CANON_C))
    out = warp_maps(src, torch.from_numpy(A)[None].float(), out_hw)
    d_ref, n_ref, m_ref = render_view(A, *out_hw, CANON_C)
    assert out.depth.shape == (1, 1, *out_hw) and out.normals.shape == (1, 3, *out_hw)

    valid = out.valid[0, 0].numpy()
    # masks agree except along the silhouette (sub-pixel edge placement)
    assert (valid != m_ref).mean() < 0.02
    both = valid & m_ref
    assert both.sum() > 500
    inner = binary_erosion(both, iterations=2)  # away from the silhouette, where depth is steep
    depth_err = np.abs(out.depth[0, 0].numpy() - d_ref)
    assert np.median(depth_err[both]) < 5e-4 and depth_err[inner].max() < 3e-3  # metres; sphere radius 0.2
    n_out = out.normals[0].permute(1, 2, 0).numpy()
    angle = np.degrees(np.arccos(np.clip((n_out * n_ref).sum(-1), -1, 1)))
    assert np.median(angle[both]) < 0.2 and angle[inner].max() < 1.0
    np.testing.assert_allclose(np.linalg.norm(n_out[both], axis=-1), 1.0, atol=1e-5)


def test_normal_direction_at_a_point_rotates_and_flips():
    """At the view pixel of a chosen canonical pixel, the normal is R applied to the canonical normal."""
    d, n, m = render_sphere(*CANON_HW, F_PX, CANON_C)
    src = as_maps(d, n, m)
    p = np.round(SPHERE_PX) + np.array(
        [14.0, 0.0]
    )  # right half of the sphere: normal has a clear +x component
    n_src = n[int(p[1]), int(p[0])]
    assert n_src[0] > 0.4
    for angle, flip in [(90, False), (0, True), (90, True)]:
        A = view(angle, 1.0, flip, (81, 81))  # integer pixels map to integer pixels
        q = A[:, :2] @ p + A[:, 2]
        out = warp_maps(src, torch.from_numpy(A)[None].float(), (81, 81))
        n_view = out.normals[0, :, int(round(q[1])), int(round(q[0]))].numpy()
        expected = np.concatenate([A[:, :2] @ n_src[:2], n_src[2:]])
        np.testing.assert_allclose(n_view, expected, atol=2e-3)
    # explicitly: a 90 deg rotation (x right -> y down) turns a +x normal into +y; a flip makes it -x
    A = similarity(90, 1.0, (0, 0), False)
    assert np.allclose(A[:, :2] @ np.array([1.0, 0.0]), [0.0, 1.0])
    A = similarity(0, 1.0, (0, 0), True)
    assert np.allclose(A[:, :2] @ np.array([1.0, 0.0]), [-1.0, 0.0])


def test_polar_rotation_ignores_scale_and_shift():
    R = similarity(33, 1.0, (0, 0), False)[:, :2]
    A = np.concatenate([R @ np.diag([2.5, 0.7]), [[13.0], [-4.0]]], axis=1)
    Af = np.concatenate([R @ np.diag([-2.5, 0.7]), [[13.0], [-4.0]]], axis=1)
    got = polar_rotation(torch.tensor(np.stack([A, Af])))
    np.testing.assert_allclose(got[0].numpy(), R, atol=1e-9)
    np.testing.assert_allclose(got[1].numpy(), R @ np.diag([-1.0, 1.0]), atol=1e-9)
    assert torch.linalg.det(got[1]) < 0


def test_warp_valid_is_false_outside_source_and_none_means_all_valid():
    maps = GeometryMaps(
        depth=torch.full((2, 1, 8, 8), 3.0),
        normals=torch.tensor([0.0, 0.0, -1.0]).view(1, 3, 1, 1).expand(2, 3, 8, 8).clone(),
    )
    A = torch.tensor([[1.0, 0.0, 4.0], [0.0, 1.0, 0.0]]).expand(2, 2, 3)
    out = warp_maps(maps, A, (8, 8))
    assert not out.valid[..., :4].any() and out.valid[..., 4:].all()
    assert torch.allclose(out.depth[..., 4:], torch.tensor(3.0))
    assert torch.allclose(out.normals[..., 4:], torch.tensor([0.0, 0.0, -1.0]).view(1, 3, 1, 1))
    assert (out.depth[..., :4] == 0).all() and (out.normals[..., :4] == 0).all()


def test_normalize_relative_depth_is_scale_shift_invariant_and_masked():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(3, 1, 16, 16, generator=g) + 1.0
    valid = torch.rand(3, 1, 16, 16, generator=g) > 0.3
    valid[2] = False
    a = normalize_relative_depth(d, valid)
    b = normalize_relative_depth(1000 * d + 250, valid)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert (a[~valid] == 0).all() and (a[2] == 0).all()
    v0 = a[0][valid[0]]
    assert abs(v0.median().item()) < 1e-6  # zero at the median
    assert abs(v0.abs().mean().item() - 1.0) < 0.05  # unit mean absolute deviation (about the median)
    # order (larger = farther) survives on the valid pixels
    order = torch.argsort(d[0][valid[0]])
    assert (torch.diff(a[0][valid[0]][order]) >= 0).all()
    # gradients are finite, the empty image included
    dd = d.clone().requires_grad_(True)
    normalize_relative_depth(dd, valid).square().sum().backward()
    assert torch.isfinite(dd.grad).all() and dd.grad[0].abs().sum() > 0


def test_normals_from_depth_recover_the_sphere():
    d, n, m = render_sphere(*CANON_HW, F_PX, CANON_C)
    K = np.array([[F_PX, 0, CANON_C[0]], [0, F_PX, CANON_C[1]], [0, 0, 1.0]])
    est, ok = normals_from_depth(d * 1000.0, m, K, smooth_sigma=0.0)
    assert ok.sum() > 0.8 * m.sum()
    angle = np.degrees(np.arccos(np.clip((est[ok] * n[ok]).sum(-1), -1, 1)))
    assert np.median(angle) < 1.5 and np.percentile(angle, 90) < 5.0
    assert (est[ok][:, 2] < 0).all()  # towards the camera
