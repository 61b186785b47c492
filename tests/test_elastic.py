"""Elastic scale augmentation on real SyRIP poses: proportions change as asked, nothing folds."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from geosapiens.affine import apply_affine
from geosapiens.data.crop import canonical_affine
from geosapiens.data.elastic import (
    ElasticScale,
    ThinPlateSpline,
    control_points,
    fold_free,
    node_grid,
    skeleton_targets,
    upsample_map,
)
from geosapiens.data.formats.syrip import read_syrip
from geosapiens.skeleton import COCO17_CHAIN, COCO17_HEAD

SIZE = (512, 512)
TRAIN = "annotations/200R/person_keypoints_train_infant.json"


@pytest.fixture(scope="module")
def crop_poses(syrip_sample):
    """(keypoints (K, 2) in the canonical 512 crop, labelled (K,)) per SyRIP sample record."""
    poses = []
    for record in read_syrip(syrip_sample, TRAIN):
        affine = canonical_affine(record.bbox, SIZE)
        poses.append((apply_affine(record.keypoints.astype(np.float64), affine), record.labelled.copy()))
    return poses


def head_to_torso(keypoints: np.ndarray, labelled: np.ndarray) -> float:
    """Mean head-point distance to the neck over neck-to-mid-hip length."""
    neck, hip = keypoints[[5, 6]].mean(0), keypoints[[11, 12]].mean(0)
    head = [k for k in COCO17_HEAD if labelled[k]]
    return np.linalg.norm(keypoints[head] - neck, axis=1).mean() / np.linalg.norm(hip - neck)


def dense_jacobian_det(dense: np.ndarray) -> np.ndarray:
    """Finite-difference Jacobian determinant of an (H, W, 2) map."""
    dx = dense[:-1, 1:] - dense[:-1, :-1]
    dy = dense[1:, :-1] - dense[:-1, :-1]
    return dx[..., 0] * dy[..., 1] - dx[..., 1] * dy[..., 0]


def test_thin_plate_spline_interpolates_its_control_points():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 500, size=(30, 2))
    dst = src + rng.normal(0, 20, size=src.shape)
    tps = ThinPlateSpline(src, dst, norm=500)
    np.testing.assert_allclose(tps(src), dst, atol=1e-8)
    # An affine set of displacements is reproduced exactly everywhere (TPS's affine part).
    affine = np.array([[1.1, 0.2, 5.0], [-0.1, 0.9, -3.0]])
    tps = ThinPlateSpline(src, apply_affine(src, affine), norm=500)
    probe = rng.uniform(0, 500, size=(50, 2))
    np.testing.assert_allclose(tps(probe), apply_affine(probe, affine), atol=1e-6)


def test_skeleton_rule_scales_head_and_segments_exactly(crop_poses):
    keypoints, labelled = crop_poses[0]
    factors = np.linspace(0.7, 1.1, len(COCO17_CHAIN))
    out = skeleton_targets(keypoints, labelled, 1.4, factors)
    assert head_to_torso(out, labelled) == pytest.approx(1.4 * head_to_torso(keypoints, labelled), rel=1e-9)
    for (parent, child), factor in zip(COCO17_CHAIN, factors, strict=True):
        before = np.linalg.norm(keypoints[child] - keypoints[parent])
        assert np.linalg.norm(out[child] - out[parent]) == pytest.approx(factor * before, rel=1e-9)
    np.testing.assert_array_equal(out[[5, 6, 11, 12]], keypoints[[5, 6, 11, 12]])  # the torso stays


def test_warp_changes_head_to_torso_ratio_by_the_requested_factor(crop_poses):
    elastic = ElasticScale()
    ratios, applied = [], 0
    for keypoints, labelled in crop_poses:
        warp = elastic.warp(keypoints, labelled, SIZE, 1.4, np.ones(len(COCO17_CHAIN)))
        if warp.head_factor != 1.4:
            continue  # shrunk to avoid a fold; checked elsewhere
        applied += 1
        ratios.append(head_to_torso(warp.keypoints, labelled) / head_to_torso(keypoints, labelled))
    assert applied >= 0.6 * len(crop_poses)
    ratios = np.array(ratios)
    # Output keypoints follow the *applied* (grid-interpolated) map: proportions match to < 1% (measured:
    # worst 0.65%, mean 0.24%).
    assert np.abs(ratios / 1.4 - 1).max() < 0.015
    assert abs(np.mean(ratios) / 1.4 - 1) < 0.005


def test_warp_scales_limb_segments(crop_poses):
    elastic = ElasticScale()
    factors = np.array([0.75, 0.75, 0.75, 0.75, 1.1, 1.1, 1.1, 1.1])  # short arms, long legs
    errors = []
    for keypoints, labelled in crop_poses:
        warp = elastic.warp(keypoints, labelled, SIZE, 1.0, factors)
        if not np.array_equal(warp.segment_factors, factors):
            continue
        for (parent, child), factor in zip(COCO17_CHAIN, factors, strict=True):
            before = np.linalg.norm(keypoints[child] - keypoints[parent])
            after = np.linalg.norm(warp.keypoints[child] - warp.keypoints[parent])
            errors.append(abs(after - factor * before))
    assert len(errors) >= 0.6 * len(crop_poses) * len(factors)
    # px, on segments of ~40-150 px (measured: median 0.15, worst 1.6)
    assert np.median(errors) < 0.3 and max(errors) < 2.5


def test_output_keypoints_are_where_the_applied_map_sends_them(crop_poses):
    rng = np.random.default_rng(1)
    elastic = ElasticScale()
    for keypoints, labelled in crop_poses[:10]:
        warp = elastic(keypoints, labelled, SIZE, rng)
        dense = warp.dense_map(SIZE)
        out = warp.keypoints[labelled].astype(np.float32)
        inside = (out >= 0).all(1) & (out <= 511).all(1)
        sampled = cv2.remap(dense, out[inside, :1].T, out[inside, 1:].T, cv2.INTER_LINEAR)[0]
        np.testing.assert_allclose(sampled, keypoints[labelled][inside], atol=0.05)


def test_unlabelled_joints_are_not_control_points(crop_poses):
    keypoints, labelled = crop_poses[1]
    labelled = labelled.copy()
    labelled[1:5] = False  # eyes and ears, as in MINI-RGBD
    factors = np.full(len(COCO17_CHAIN), 0.9)
    a, b = keypoints.copy(), keypoints.copy()
    a[1:5], b[1:5] = 0.0, 400.0  # placeholder positions must not matter
    warp_a = ElasticScale().warp(a, labelled, SIZE, 1.3, factors)
    warp_b = ElasticScale().warp(b, labelled, SIZE, 1.3, factors)
    np.testing.assert_array_equal(warp_a.nodes_map, warp_b.nodes_map)
    np.testing.assert_array_equal(warp_a.keypoints[1:5], a[1:5])
    np.testing.assert_array_equal(warp_b.keypoints[1:5], b[1:5])
    assert np.abs(warp_a.keypoints[0] - a[0]).max() > 1.0  # the labelled nose did move with the head


def test_random_warps_never_fold(crop_poses):
    rng = np.random.default_rng(2)
    elastic = ElasticScale()
    for keypoints, labelled in crop_poses:
        warp = elastic(keypoints, labelled, SIZE, rng)
        assert fold_free(warp.nodes_map, warp.step)
        assert (dense_jacobian_det(warp.dense_map(SIZE)) > 0).all()


def test_folding_factors_are_shrunk_or_dropped(crop_poses):
    keypoints, labelled = crop_poses[2]
    elastic = ElasticScale()
    factors = np.full(len(COCO17_CHAIN), 0.2)
    src, dst = control_points(keypoints, labelled, 4.0, factors, SIZE, anchor_margin=elastic.anchor_margin)
    step = elastic.grid_step(SIZE)
    raw = ThinPlateSpline(dst, src, 512)(node_grid(SIZE, step))
    assert not fold_free(raw, step, elastic.max_stretch)  # the requested warp is unacceptable ...
    warp = elastic.warp(keypoints, labelled, SIZE, 4.0, factors)
    assert warp.head_factor < 4.0  # ... so it was shrunk (or dropped: factor 1)
    assert fold_free(warp.nodes_map, step, elastic.max_stretch)
    assert (dense_jacobian_det(warp.dense_map(SIZE)) > 0).all()


def test_fold_free_detects_a_fold():
    nodes = node_grid((64, 64), 8).copy()
    assert fold_free(nodes, 8, 1.01)
    nodes[4, 4], nodes[4, 5] = nodes[4, 5].copy(), nodes[4, 4].copy()  # two nodes swapped: the map folds
    assert not fold_free(nodes, 8)
    squeezed = node_grid((64, 64), 8) * [1.0, 0.2]  # no fold, but a 5x squeeze
    assert fold_free(squeezed, 8) and not fold_free(squeezed, 8, max_stretch=3.0)


def test_upsampled_map_interpolates_the_nodes_exactly():
    nodes = node_grid((100, 80), 8)
    dense = upsample_map(nodes, (100, 80), 8)
    ys, xs = np.mgrid[0:100, 0:80]
    np.testing.assert_allclose(dense[..., 0], xs, atol=1e-3)  # identity nodes -> identity map
    np.testing.assert_allclose(dense[..., 1], ys, atol=1e-3)
