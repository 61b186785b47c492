"""The affine algebra (geosapiens.affine) on real crop affines: round trips, composition order, batches,
and NumPy and torch giving the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geosapiens.affine import apply_affine, compose_affine, invert_affine, is_mirror, to_3x3, udp_rescale
from geosapiens.data.crop import bbox_to_center_scale, udp_affine


def crop_affines(n: int, seed: int) -> np.ndarray:
    """(n, 2, 3) random UDP crops of 1024x768 (scaled, rotated, every other one mirrored) of a video frame."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        bbox = np.concatenate([rng.uniform(0, 1500, 2), rng.uniform(50, 900, 2)])
        center, scale = bbox_to_center_scale(bbox, 0.75)
        out.append(udp_affine(center, scale * rng.uniform(0.7, 1.3), (1024, 768), rng.uniform(-180, 180),
                              flip=bool(i % 2)))
    return np.stack(out)


def test_invert_round_trips_points_in_numpy_and_torch():
    A = crop_affines(6, seed=0)
    points = np.random.default_rng(1).uniform(-200, 2100, size=(6, 17, 2))
    for a, p in zip(A, points, strict=True):  # one affine, (K, 2) points
        np.testing.assert_allclose(apply_affine(apply_affine(p, a), invert_affine(a)), p, atol=1e-9)
    back = apply_affine(apply_affine(points, A), invert_affine(A))  # a batch: sample by sample
    np.testing.assert_allclose(back, points, atol=1e-9)
    At, pt = torch.from_numpy(A), torch.from_numpy(points)
    back_t = apply_affine(apply_affine(pt, At), invert_affine(At))
    torch.testing.assert_close(back_t, pt, atol=1e-9, rtol=0)
    np.testing.assert_allclose(invert_affine(At).numpy(), invert_affine(A), atol=1e-12)
    torch.testing.assert_close(invert_affine(At[0]), invert_affine(At)[0])


def test_inverse_of_a_known_crop():
    # box centre (300, 200), 2 image px per crop px, no rotation: crop = (x - 300) / 2 + 95.5
    A = np.array([[0.5, 0.0, 95.5 - 150.0], [0.0, 0.5, 127.5 - 100.0]])
    np.testing.assert_allclose(invert_affine(A), [[2.0, 0.0, 109.0], [0.0, 2.0, -55.0]], atol=1e-12)
    np.testing.assert_allclose(apply_affine(np.array([300.0, 200.0]), A), [95.5, 127.5], atol=1e-12)
    np.testing.assert_allclose(apply_affine(np.array([95.5, 127.5]), invert_affine(A)), [300.0, 200.0])


def test_compose_is_a_after_b_and_matches_3x3_products():
    A, B = crop_affines(4, seed=2), crop_affines(4, seed=3)
    points = np.random.default_rng(4).uniform(0, 1000, size=(4, 9, 2))
    np.testing.assert_allclose(
        apply_affine(points, compose_affine(A, B)), apply_affine(apply_affine(points, B), A), atol=1e-8
    )
    np.testing.assert_allclose(to_3x3(compose_affine(A, B)), to_3x3(A) @ to_3x3(B), atol=1e-9)
    identity = np.tile(np.eye(3)[:2], (4, 1, 1))
    np.testing.assert_allclose(compose_affine(A, invert_affine(A)), identity, atol=1e-12)
    At, Bt = torch.from_numpy(A), torch.from_numpy(B)
    np.testing.assert_allclose(compose_affine(At, Bt).numpy(), compose_affine(A, B), atol=1e-9)
    assert to_3x3(At).shape == (4, 3, 3) and (to_3x3(At)[:, 2] == torch.tensor([0.0, 0.0, 1.0])).all()


def test_apply_keeps_the_points_dtype():
    a = crop_affines(1, seed=5)[0]
    p32 = np.array([[100.0, 200.0], [640.0, 480.0]], np.float32)
    assert apply_affine(p32, a).dtype == np.float32
    assert apply_affine(np.array([[1, 2]]), a).dtype == np.float64  # integer points come back float64
    # float32 points through float32 affines (what batches carry) still round-trip within 1e-3 px
    back = apply_affine(apply_affine(p32, a.astype(np.float32)), invert_affine(a).astype(np.float32))
    assert np.abs(back - p32).max() < 1e-3
    t = apply_affine(torch.from_numpy(p32)[None], torch.from_numpy(a)[None])
    assert t.dtype == torch.float32
    np.testing.assert_allclose(t[0].numpy(), apply_affine(p32, a), atol=1e-3)


def test_is_mirror_and_udp_rescale():
    A = crop_affines(4, seed=6)  # odd indices are mirrored
    assert is_mirror(A).tolist() == [False, True, False, True]
    assert is_mirror(torch.from_numpy(A)).tolist() == [False, True, False, True]
    # a stride-4 map of a 256x192 crop: first and last pixel centres coincide
    S = udp_rescale((64, 48), (256, 192))
    np.testing.assert_allclose(apply_affine(np.array([[0.0, 0.0], [47.0, 63.0]]), S), [[0, 0], [191, 255]])
    back = udp_rescale((256, 192), (64, 48))
    np.testing.assert_allclose(compose_affine(back, S), np.eye(3)[:2], atol=1e-12)


@pytest.mark.parametrize("shape", [(2,), (5, 2), (3, 4, 2)])
def test_one_affine_moves_points_of_any_shape(shape):
    a = crop_affines(1, seed=7)[0]
    points = np.random.default_rng(8).uniform(0, 500, size=shape)
    flat = points.reshape(-1, 2)
    expected = np.stack([a[:, :2] @ p + a[:, 2] for p in flat]).reshape(shape)
    np.testing.assert_allclose(apply_affine(points, a), expected, atol=1e-9)
