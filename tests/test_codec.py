"""UDP heatmap codec: round trips, flip consistency, soft-argmax gradients, affine back-projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geosapiens.affine import apply_affine, invert_affine
from geosapiens.models.codec import UDPHeatmapCodec, flip_heatmaps, flip_test
from geosapiens.skeleton import COCO17

INPUT_HW, HEATMAP_HW = (256, 192), (64, 48)


def flip_keypoints(keypoints: torch.Tensor, flip_indices, width: int) -> torch.Tensor:
    """(B, K, 2) keypoints of a ``width``-px input, mirrored (x -> (width - 1) - x), left/right swapped."""
    flipped = keypoints[:, list(flip_indices)].clone()
    flipped[..., 0] = (width - 1) - flipped[..., 0]
    return flipped


def random_keypoints(codec: UDPHeatmapCodec, b: int, k: int, margin_hm: float, seed: int) -> torch.Tensor:
    """(b, k, 2) input px whose heatmap position is at least ``margin_hm`` heatmap px inside the heatmap."""
    g = torch.Generator().manual_seed(seed)
    h, w = codec.heatmap_size
    u = torch.rand(b, k, 2, generator=g, dtype=torch.float64)
    hm = torch.stack(
        [margin_hm + u[..., 0] * (w - 1 - 2 * margin_hm), margin_hm + u[..., 1] * (h - 1 - 2 * margin_hm)], -1
    )
    return codec.to_input(hm).float()


def test_udp_scale_maps_heatmap_corners_to_input_corners():
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    corners_hm = torch.tensor([[[0.0, 0.0], [47.0, 63.0]]])
    torch.testing.assert_close(codec.to_input(corners_hm), torch.tensor([[[0.0, 0.0], [191.0, 255.0]]]))


@pytest.mark.parametrize("sigma", [1.5, 2.0, 3.0])
def test_encode_decode_recovers_subpixel_keypoints(sigma):
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW, sigma=sigma)
    # DARK's blur is zero-padded (as mmpose's): within ~1.5 sigma of the heatmap border it is biased, so the
    # sub-pixel claim is for joints at least 2 sigma inside (see UDPHeatmapCodec.decode)
    kp = random_keypoints(codec, 8, 17, margin_hm=2 * sigma, seed=1)
    heatmaps, tw = codec.encode(kp, torch.ones(8, 17))
    assert heatmaps.shape == (8, 17, *HEATMAP_HW) and tw.shape == (8, 17) and (tw == 1).all()
    decoded, scores = codec.decode(heatmaps)
    err_hm = (codec.to_heatmap(decoded) - codec.to_heatmap(kp)).norm(dim=-1)
    assert err_hm.max() < 0.1
    # the refinement does real work: plain argmax is off by up to ~0.7 heatmap px
    argmax_err = (codec.to_heatmap(kp) - codec.to_heatmap(kp).round()).norm(dim=-1)
    assert argmax_err.max() > 0.4
    assert ((scores > 0.5) & (scores <= 1.0)).all()


def test_encode_zero_weight_for_unlabelled_and_far_outside_joints():
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW, sigma=2.0)
    kp = torch.tensor([[[50.0, 60.0], [-40.0, 60.0], [195.0, 100.0], [50.0, 1000.0], [80.0, 80.0]]])
    weights = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    heatmaps, tw = codec.encode(kp, weights)
    # -40 px = -10 hm px (beyond 3 sigma): out; 195 px = 48.75 hm px (inside 3 sigma of the edge): kept
    assert tw.tolist() == [[1.0, 0.0, 1.0, 0.0, 0.0]]
    assert heatmaps[0, [1, 3, 4]].abs().max() == 0
    assert heatmaps[0, 2].max() > 0.5


def test_decode_scores_and_batched_equals_per_sample():
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    kp = random_keypoints(codec, 4, 5, margin_hm=3.0, seed=2)
    heatmaps, _ = codec.encode(kp, torch.ones(4, 5))
    heatmaps = heatmaps * torch.linspace(0.2, 1.0, 5).view(1, 5, 1, 1)
    decoded, scores = codec.decode(heatmaps)
    # score = raw maximum: the amplitude times the sampled Gaussian's peak (>= exp(-0.25 / sigma^2) off-grid)
    ratio = scores / torch.linspace(0.2, 1.0, 5)
    assert ((ratio > 0.93) & (ratio <= 1.0)).all()
    for i in range(4):
        one, _ = codec.decode(heatmaps[i : i + 1])
        torch.testing.assert_close(one[0], decoded[i])
    # an empty heatmap decodes to a finite point with score 0
    d0, s0 = codec.decode(torch.zeros(1, 1, *HEATMAP_HW))
    assert torch.isfinite(d0).all() and s0.item() == 0


def test_flip_of_encoded_equals_encoding_of_flipped_keypoints():
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    flip = COCO17.flip_indices
    kp = random_keypoints(codec, 3, 17, margin_hm=0.0, seed=3)
    weights = torch.ones(3, 17)
    weights[0, 5] = 0
    hm, tw = codec.encode(kp, weights)
    hm_of_flipped, tw_flipped = codec.encode(flip_keypoints(kp, flip, INPUT_HW[1]), weights[:, list(flip)])
    # x -> (W_in - 1) - x needs no shift under UDP: exact up to float rounding
    torch.testing.assert_close(flip_heatmaps(hm, flip), hm_of_flipped, atol=1e-5, rtol=0)
    torch.testing.assert_close(tw[:, list(flip)], tw_flipped)
    # a half-pixel shift (the MSRA convention's correction) would break it
    shifted = flip_keypoints(kp, flip, INPUT_HW[1]) + torch.tensor([codec.scale[0] * 0.5, 0.0])
    assert (flip_heatmaps(hm, flip) - codec.encode(shifted, weights[:, list(flip)])[0]).abs().max() > 0.1


def test_flip_test_average_of_a_symmetric_model_keeps_the_keypoints():
    """A model that is exactly flip-equivariant: the flip-test average equals its plain output."""
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    flip = COCO17.flip_indices
    kp = random_keypoints(codec, 2, 17, margin_hm=4.0, seed=4)
    hm, _ = codec.encode(kp, torch.ones(2, 17))
    hm_flipped_input, _ = codec.encode(flip_keypoints(kp, flip, INPUT_HW[1]), torch.ones(2, 17))
    avg = flip_test(hm, hm_flipped_input, flip)
    torch.testing.assert_close(avg, hm, atol=1e-5, rtol=0)
    decoded, _ = codec.decode(avg)
    assert (decoded - kp).norm(dim=-1).max() < 0.1 * max(codec.scale)
    # flipping twice is the identity (flip indices are an involution)
    torch.testing.assert_close(flip_heatmaps(flip_heatmaps(hm, flip), flip), hm)


def test_soft_argmax_matches_keypoints_and_gradient_moves_towards_peak():
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    kp = random_keypoints(codec, 2, 4, margin_hm=6.0, seed=5)
    hm, _ = codec.encode(kp, torch.ones(2, 4))
    est = codec.soft_argmax(hm)
    assert (est - kp).norm(dim=-1).max() < 0.5  # input px

    # logits = a bump at the true keypoint plus a weaker decoy: the estimate sits between them
    decoy = kp + torch.tensor([30.0, -25.0])
    logits = (hm + 0.8 * codec.encode(decoy, torch.ones(2, 4))[0]).requires_grad_(True)
    temperature = 0.3
    before = (codec.soft_argmax(logits, temperature) - kp).norm(dim=-1)
    loss = (codec.soft_argmax(logits, temperature) - kp).square().sum()  # input-space loss
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = logits - 0.5 * logits.grad
    after = (codec.soft_argmax(stepped, temperature) - kp).norm(dim=-1)
    assert (after < before).all() and before.min() > 1.0


def test_soft_argmax_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        UDPHeatmapCodec(INPUT_HW, HEATMAP_HW).soft_argmax(torch.zeros(1, 1, 4, 4), temperature=0)


@pytest.mark.slow
def test_long_dark_steps_are_applied_they_land_nearer_the_peak_on_noisy_heatmaps():
    """The decode default (``long_step="apply"``, mmpose's) against dropping steps longer than 1 heatmap px,
    on sigma-2 targets with white noise 0.1 (``benchmarks/dark_refinement.py``: 0.10 vs 0.21 px mean)."""
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW, sigma=2.0)
    kp = random_keypoints(codec, 64, 17, margin_hm=4.0, seed=3)
    heatmaps, _ = codec.encode(kp, torch.ones(64, 17))
    noisy = heatmaps + 0.1 * torch.randn(heatmaps.shape, generator=torch.Generator().manual_seed(0))
    errors = {}
    for rule in ("apply", "drop", "clamp"):
        decoded = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW, sigma=2.0, long_step=rule).decode(noisy)[0]
        errors[rule] = (codec.to_heatmap(decoded) - codec.to_heatmap(kp)).norm(dim=-1)
    assert codec.long_step == "apply"  # the default
    assert errors["apply"].mean() < 0.8 * errors["drop"].mean()
    assert errors["apply"].quantile(0.95) < 0.5 * errors["drop"].quantile(0.95)
    assert errors["apply"].mean() <= errors["clamp"].mean()
    with pytest.raises(ValueError, match="long_step"):
        UDPHeatmapCodec(INPUT_HW, HEATMAP_HW, long_step="keep")


@pytest.mark.parametrize("bad", [dict(sigma=0.0), dict(blur_kernel_size=4), dict(heatmap_size_hw=(1, 48))])
def test_codec_validates_options(bad):
    args = dict(input_size_hw=INPUT_HW, heatmap_size_hw=HEATMAP_HW) | bad
    with pytest.raises(ValueError, match="UDPHeatmapCodec"):
        UDPHeatmapCodec(**args)


def test_apply_affine_and_inverse_back_project_crop_px_to_image_px():
    # a UDP crop affine: image bbox centre (300, 200), scale (150, 200) px -> 192x256 crop, rotated 30 deg
    a = np.radians(30.0)
    s = np.array([191.0 / 150.0, 255.0 / 200.0])
    R = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    lin = np.diag(s) @ R
    shift = np.array([95.5, 127.5]) - lin @ np.array([300.0, 200.0])
    A = torch.tensor(np.concatenate([lin, shift[:, None]], 1), dtype=torch.float64)[None].repeat(2, 1, 1)
    pts = torch.tensor([[[300.0, 200.0], [310.0, 150.0]], [[250.0, 260.0], [0.0, 0.0]]], dtype=torch.float64)
    crop = apply_affine(pts, A)
    torch.testing.assert_close(crop[0, 0], torch.tensor([95.5, 127.5], dtype=torch.float64))
    ref = pts.numpy() @ lin.T + shift
    np.testing.assert_allclose(crop.numpy(), ref, atol=1e-9)
    back = apply_affine(crop, invert_affine(A))
    torch.testing.assert_close(back, pts)
    torch.testing.assert_close(invert_affine(A[0]), invert_affine(A)[0])
    # decode -> image px through the inverse crop affine, end to end
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    kp_img = torch.tensor([[[280.0, 190.0], [320.0, 230.0]]], dtype=torch.float64)
    hm, _ = codec.encode(apply_affine(kp_img, A[:1]).float(), torch.ones(1, 2))
    decoded, _ = codec.decode(hm)
    assert (apply_affine(decoded.double(), invert_affine(A[:1])) - kp_img).norm(dim=-1).max() < 0.1
