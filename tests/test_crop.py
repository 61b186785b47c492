"""Top-down UDP crops: mmpose's formula, exact round trips, image and points agree."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from geosapiens.affine import apply_affine, compose_affine, invert_affine
from geosapiens.data.crop import bbox_to_center_scale, udp_affine, warp_image


def mmpose_udp_warp_matrix(center, scale, rot, output_size_wh):
    """mmpose 1.x ``get_udp_warp_matrix``, transcribed as the reference (float64 instead of float32)."""
    input_size = np.asarray(center) * 2
    rot_rad = np.deg2rad(rot)
    warp_mat = np.zeros((2, 3))
    scale_x = (output_size_wh[0] - 1) / scale[0]
    scale_y = (output_size_wh[1] - 1) / scale[1]
    warp_mat[0, 0] = math.cos(rot_rad) * scale_x
    warp_mat[0, 1] = -math.sin(rot_rad) * scale_x
    warp_mat[0, 2] = scale_x * (
        -0.5 * input_size[0] * math.cos(rot_rad) + 0.5 * input_size[1] * math.sin(rot_rad) + 0.5 * scale[0]
    )
    warp_mat[1, 0] = math.sin(rot_rad) * scale_y
    warp_mat[1, 1] = math.cos(rot_rad) * scale_y
    warp_mat[1, 2] = scale_y * (
        -0.5 * input_size[0] * math.sin(rot_rad) - 0.5 * input_size[1] * math.cos(rot_rad) + 0.5 * scale[1]
    )
    return warp_mat


def test_center_scale_pads_and_enlarges_the_short_side():
    # 100 x 400 box, padding 1.25 -> 125 x 500; aspect 0.75 -> width grows to 375.
    center, scale = bbox_to_center_scale([10, 20, 100, 400], aspect_wh=0.75)
    np.testing.assert_allclose(center, [60, 220])
    np.testing.assert_allclose(scale, [375, 500])
    # A wide box keeps its width; the height grows.
    _, scale = bbox_to_center_scale([0, 0, 400, 100], aspect_wh=0.75)
    np.testing.assert_allclose(scale, [500, 500 / 0.75])


@pytest.mark.parametrize("rot", [0.0, 17.0, -63.5, 180.0])
def test_udp_affine_is_mmpose_get_udp_warp_matrix(rot):
    center, scale = np.array([412.3, 250.7]), np.array([300.0, 400.0])
    ours = udp_affine(center, scale, (256, 192), rotation_deg=rot)
    np.testing.assert_allclose(ours, mmpose_udp_warp_matrix(center, scale, rot, (192, 256)), atol=1e-9)


def test_udp_box_spans_out_minus_one_pixels():
    center, scale = np.array([100.0, 80.0]), np.array([60.0, 80.0])
    affine = udp_affine(center, scale, (256, 192))
    corners = np.array([center - scale / 2, center, center + scale / 2])
    expected = [[0, 0], [95.5, 127.5], [191, 255]]
    np.testing.assert_allclose(apply_affine(corners, affine), expected, atol=1e-9)


def test_flip_mirrors_the_crop():
    center, scale = np.array([300.0, 200.0]), np.array([150.0, 200.0])
    points = np.random.default_rng(0).uniform(0, 500, size=(20, 2))
    plain = apply_affine(points, udp_affine(center, scale, (256, 192), 30.0))
    flipped = apply_affine(points, udp_affine(center, scale, (256, 192), 30.0, flip=True))
    np.testing.assert_allclose(flipped[:, 0], 191 - plain[:, 0], atol=1e-9)
    np.testing.assert_allclose(flipped[:, 1], plain[:, 1], atol=1e-9)


def test_round_trip_image_crop_image_below_1e3_px():
    rng = np.random.default_rng(1)
    for _ in range(200):
        bbox = np.concatenate([rng.uniform(-100, 2000, 2), rng.uniform(5, 1500, 2)])
        center, scale = bbox_to_center_scale(bbox, 0.75)
        affine = udp_affine(center, scale * rng.uniform(0.5, 1.5), (1024, 768), rng.uniform(-180, 180),
                            flip=bool(rng.integers(2)))
        points = rng.uniform(-500, 3000, size=(17, 2))
        back = apply_affine(apply_affine(points, affine), invert_affine(affine))
        assert np.abs(back - points).max() < 1e-3
        # float32 (what batches carry) is also good enough at these coordinates.
        back32 = apply_affine(apply_affine(points, affine.astype(np.float32)),
                                  invert_affine(affine).astype(np.float32))
        assert np.abs(back32 - points).max() < 1e-3


def test_compose_is_a_after_b():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    points = rng.normal(size=(5, 2))
    np.testing.assert_allclose(
        apply_affine(points, compose_affine(a, b)), apply_affine(apply_affine(points, b), a),
        atol=1e-12,
    )
    np.testing.assert_allclose(compose_affine(a, invert_affine(a)), np.eye(3)[:2], atol=1e-12)


def test_warped_image_follows_the_points():
    """A dot drawn in the image lands where apply_affine puts its centre (bilinear warp, no bias)."""
    rng = np.random.default_rng(3)
    for _ in range(10):
        image = np.zeros((480, 640), np.float32)
        centre = rng.uniform(200, 400, size=2)
        ys, xs = np.mgrid[0:480, 0:640]
        image[:] = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * 4.0**2))
        affine = udp_affine(centre + rng.uniform(-30, 30, 2), np.array([200.0, 266.0]), (256, 192),
                            rng.uniform(-90, 90), flip=bool(rng.integers(2)))
        crop = warp_image(image, affine, (256, 192))
        cy, cx = np.mgrid[0:256, 0:192]
        centroid = np.array([(cx * crop).sum(), (cy * crop).sum()]) / crop.sum()
        np.testing.assert_allclose(centroid, apply_affine(centre, affine), atol=0.05)


def test_warp_image_constant_zero_border_and_nearest_for_masks():
    image = np.full((50, 60, 3), 200, np.uint8)
    mask = np.zeros((50, 60), np.uint8)
    mask[10:20, 10:20] = 1
    affine = udp_affine(np.array([30.0, 25.0]), np.array([120.0, 100.0]), (64, 64))
    crop = warp_image(image, affine, (64, 64))
    assert crop[0, 0].tolist() == [0, 0, 0] and crop[32, 32].tolist() == [200, 200, 200]
    warped = warp_image(mask, affine, (64, 64), interpolation=cv2.INTER_NEAREST)
    assert set(np.unique(warped)) == {0, 1}


def test_canonical_and_view_frames_round_trip():
    """A record's canonical crop and a random view of it: the named frame changes take the same image points
    from one crop to the other and back, in NumPy and torch."""
    from geosapiens.affine import apply_affine, compose_affine
    from geosapiens.data.crop import (
        ViewParams,
        canonical_affine,
        canonical_to_view,
        crop_to_crop,
        view_affine,
        view_to_canonical,
    )

    bbox, size = np.array([410.0, 120.0, 260.0, 380.0]), (256, 192)
    canonical = canonical_affine(bbox, size)
    np.testing.assert_allclose(canonical, view_affine(bbox, size, None))
    np.testing.assert_allclose(canonical, view_affine(bbox, size, ViewParams()))
    center, scale = bbox_to_center_scale(bbox, 192 / 256)
    np.testing.assert_allclose(canonical, udp_affine(center, scale, size))
    view = view_affine(bbox, size, ViewParams(scale=1.2, rotation=35.0, flip=True, shift=(0.05, -0.1)))
    image_points = np.random.default_rng(9).uniform([400, 100], [700, 520], size=(17, 2))
    in_canonical, in_view = apply_affine(image_points, canonical), apply_affine(image_points, view)

    to_view, to_canonical = canonical_to_view(canonical, view), view_to_canonical(canonical, view)
    np.testing.assert_allclose(apply_affine(in_canonical, to_view), in_view, atol=1e-9)
    np.testing.assert_allclose(apply_affine(in_view, to_canonical), in_canonical, atol=1e-9)
    np.testing.assert_allclose(compose_affine(to_canonical, to_view), np.eye(3)[:2], atol=1e-12)
    np.testing.assert_allclose(crop_to_crop(view, canonical), to_canonical)

    # batches of float32 tensors (what a DataLoader carries): computed in float64, returned in float32
    c32, v32 = (torch.from_numpy(a.astype(np.float32))[None] for a in (canonical, view))
    got = view_to_canonical(c32, v32)
    assert got.dtype == torch.float32 and got.shape == (1, 2, 3)
    np.testing.assert_allclose(got[0].numpy(), to_canonical, atol=1e-4)
    np.testing.assert_allclose(canonical_to_view(c32, v32)[0].numpy(), to_view, atol=1e-4)
