"""G-Error and jitter on synthetic sequences with known answers; their Metrics on shuffled, padded input."""

from __future__ import annotations

import math

import pytest
import torch

from geosapiens.metrics.temporal import (
    DEFAULT_BONES,
    GError,
    Jitter,
    bone_length_cv,
    g_error,
    jitter,
)
from geosapiens.skeleton import COCO17

K = COCO17.num_keypoints


def _rotation(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: ``(T, 3, 3)`` rotations about a unit ``axis`` by ``angle`` ``(T,)``."""
    x, y, z = axis
    k = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=torch.float64)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    return torch.eye(3, dtype=torch.float64) + s * k + (1 - c) * (k @ k)


def rigid_sequence(frames: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A COCO-17 body in 3D whose limbs keep their lengths while every limb rotates over time.

    Returns keypoints ``(T, 17, 3)`` and the limb lengths ``(E,)`` of :data:`DEFAULT_BONES`.
    """
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames, dtype=torch.float64)
    kp = torch.zeros(frames, K, 3, dtype=torch.float64)
    anchors = {5: (-6.0, 0.0, 50.0), 6: (6.0, 0.0, 50.0), 11: (-4.0, 18.0, 50.0), 12: (4.0, 18.0, 50.0)}
    for j, p in anchors.items():  # the torso drifts slowly; lengths do not care
        kp[:, j] = torch.tensor(p, dtype=torch.float64) + 0.01 * t[:, None]
    lengths = 8.0 + 6.0 * torch.rand(len(DEFAULT_BONES), generator=g, dtype=torch.float64)
    for e, (parent, child) in enumerate(DEFAULT_BONES):
        axis = torch.nn.functional.normalize(torch.randn(3, generator=g, dtype=torch.float64), dim=0)
        rest = torch.nn.functional.normalize(torch.randn(3, generator=g, dtype=torch.float64), dim=0)
        direction = _rotation(axis, 0.05 * (e + 1) * t) @ rest
        kp[:, child] = kp[:, parent] + lengths[e] * direction
    return kp, lengths


def test_rigid_3d_chain_has_zero_g_error() -> None:
    kp, lengths = rigid_sequence()
    assert torch.allclose(torch.linalg.vector_norm(kp[:, 7] - kp[:, 5], dim=-1), lengths[0].expand(len(kp)))
    assert (kp[1:, 9] - kp[:-1, 9]).norm(dim=-1).mean() > 0.1  # it really moves
    assert g_error(kp).item() < 1e-12


def test_gaussian_jitter_raises_g_error_by_the_predicted_amount() -> None:
    """Two endpoints each N(0, s^2 I): the length's std is ~ s sqrt(2), so CV ~ s sqrt(2) / L per bone."""
    kp, lengths = rigid_sequence(frames=3000)
    s = 0.05
    noisy = kp + s * torch.randn(kp.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = (s * math.sqrt(2) / lengths).mean().item()
    measured = g_error(noisy).item()
    assert measured == pytest.approx(expected, rel=0.05)
    per_bone = bone_length_cv(noisy)
    assert per_bone.numpy() == pytest.approx((s * math.sqrt(2) / lengths).numpy(), rel=0.1)


def test_g_error_works_in_2d_and_ignores_unlabelled_frames() -> None:
    kp, _ = rigid_sequence()
    flat = kp[..., :2].clone()  # foreshortened: lengths vary, G-Error > 0
    assert g_error(flat).item() > 0.01
    labelled = torch.ones(len(kp), K, dtype=torch.bool)
    broken = kp.clone()
    broken[::7, 9] += 50.0  # a wrist far off every 7th frame ...
    labelled[::7, 9] = False  # ... that is unlabelled there
    assert g_error(broken, labelled).item() < 1e-12
    assert g_error(broken).item() > 0.01


def test_g_error_averages_over_sequences() -> None:
    kp, lengths = rigid_sequence(frames=2000)
    noisy = kp + 0.1 * torch.randn(kp.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    both = g_error([kp, noisy]).item()
    assert both == pytest.approx(g_error(noisy).item() / 2, rel=1e-9)


def test_constant_velocity_track_has_zero_jitter_and_noise_has_the_predicted_jitter() -> None:
    t = torch.arange(200, dtype=torch.float64)[:, None, None]
    track = torch.randn(1, K, 3, dtype=torch.float64) + t * torch.randn(1, K, 3, dtype=torch.float64)
    assert jitter(track).item() < 1e-9
    # a = n[t+1] - 2 n[t] + n[t-1] ~ N(0, 6 s^2 I); in 3D E||a|| = sqrt(6) s * 2 sqrt(2 / pi)
    s = 0.2
    noisy = track + s * torch.randn(
        track.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    assert jitter(noisy).item() == pytest.approx(math.sqrt(6) * s * 2 * math.sqrt(2 / math.pi), rel=0.03)


def _shuffled_batches(n: int, seed: int) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(torch.split(perm, 37))


def test_metrics_regroup_shuffled_batches_and_drop_duplicates() -> None:
    """Frames arrive shuffled, from two sequences, split over two "ranks", with padding repeats."""
    seq_a, _ = rigid_sequence(frames=150, seed=0)
    seq_b, _ = rigid_sequence(frames=90, seed=5)
    gen = torch.Generator().manual_seed(4)
    pred_a = seq_a + 0.05 * torch.randn(seq_a.shape, generator=gen, dtype=torch.float64)
    pred_b = seq_b + 0.2 * torch.randn(seq_b.shape, generator=gen, dtype=torch.float64)
    preds, target = torch.cat([pred_a, pred_b]), torch.cat([seq_a, seq_b])
    seq_ids = torch.cat([torch.full((150,), 7), torch.full((90,), 2)])
    frames = torch.cat([torch.arange(150), torch.arange(90)])
    ranks = [(GError(with_target=True), Jitter(with_target=True)) for _ in range(2)]
    for i, idx in enumerate(_shuffled_batches(len(preds), seed=0)):
        for metric in ranks[i % 2]:
            metric.update(preds[idx], seq_ids[idx], frames[idx], target=target[idx])
    for metric in ranks[1]:
        metric.update(preds[:3], seq_ids[:3], frames[:3], target=target[:3])  # sampler padding
    ranks[0][0].merge_state(ranks[1][0])
    ranks[0][1].merge_state(ranks[1][1])
    ge, ji = ranks[0][0].compute(), ranks[0][1].compute()
    assert ge["g_error"].item() == pytest.approx(g_error([pred_a, pred_b]).item(), rel=1e-12)
    assert ge["g_error_gt"].item() < 1e-12
    assert ge["g_error_excess"].item() == pytest.approx(ge["g_error"].item() - ge["g_error_gt"].item())
    assert ji["jitter"].item() == pytest.approx(jitter([pred_a, pred_b]).item(), rel=1e-12)
    assert ji["jitter_gt"].item() == pytest.approx(jitter([seq_a, seq_b]).item(), rel=1e-12)
    # the acceleration error ||a_pred - a_gt|| is the jitter of pred - gt (second differences are linear)
    accel_error = jitter([pred_a - seq_a, pred_b - seq_b])
    assert ji["accel_error"].item() == pytest.approx(accel_error.item(), rel=1e-12)


def test_jitter_metric_does_not_difference_across_frame_gaps() -> None:
    t = torch.arange(30, dtype=torch.float64)[:, None, None]
    track = t * torch.ones(1, K, 2, dtype=torch.float64)
    track[20:] += 1000.0  # frames 10..19 are missing; the jump sits in the gap
    keep = torch.cat([torch.arange(10), torch.arange(20, 30)])
    metric = Jitter()
    metric.update(track[keep], torch.zeros(20, dtype=torch.long), keep)
    assert metric.compute()["jitter"].item() < 1e-9
    assert jitter(track[keep]).item() > 10.0  # treated as consecutive, the jump would count


def test_metric_argument_checks() -> None:
    with pytest.raises(ValueError, match="with_target"):
        GError().update(torch.zeros(2, K, 3), torch.zeros(2), torch.arange(2), target=torch.zeros(2, K, 3))
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(GError().compute()["g_error"].item())
