"""Losses on constructed scenes with known answers: a curved body (dome of depth, tilted normals) on a flat
background, symmetric and asymmetric poses, heatmaps warped by known affines, and degenerate inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from geosapiens.losses.functional import (
    bone_length_consistency,
    bone_symmetry_loss,
    consistency_loss,
    domain_adversarial_losses,
    heatmap_mse,
    manifold_loss,
    normal_prior_loss,
    sample_maps,
)
from geosapiens.models.pose_vae import PoseVAE
from geosapiens.skeleton import COCO17, SYMMETRIC_BONES

S = 64  # scene maps are S x S; uv = px / (S - 1)
BODY_C, BODY_R = (31.5, 31.5), (18.0, 28.0)  # ellipse (x, y) centre and radii, in px


def dome_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1,1,S,S) depth, (1,3,S,S) normals, (1,1,S,S) body mask: an ellipsoidal dome nearer than a flat wall.

    Depth is in the critic's units (median-centred, ~1 per body MAD); the wall sits 3 units behind.
    Normals face the camera (-z), tilted on the dome by its slope; the wall's are exactly (0, 0, -1).
    """
    y, x = torch.meshgrid(
        torch.arange(S, dtype=torch.float64), torch.arange(S, dtype=torch.float64), indexing="ij"
    )
    ex, ey = (x - BODY_C[0]) / BODY_R[0], (y - BODY_C[1]) / BODY_R[1]
    r2 = ex**2 + ey**2
    body = r2 < 1.0
    cap = torch.sqrt((1.0 - r2).clamp_min(0.0))
    depth = torch.where(body, 1.0 - 2.0 * cap, torch.full_like(x, 3.0))
    # normal of z = 1 - 2 sqrt(1 - r2) in the (u, v) frame of the maps: (dz/du, dz/dv, -1)
    dzdx = torch.where(body, 2.0 * ex / BODY_R[0] / cap.clamp_min(0.2) * (S - 1), torch.zeros_like(x))
    dzdy = torch.where(body, 2.0 * ey / BODY_R[1] / cap.clamp_min(0.2) * (S - 1), torch.zeros_like(x))
    n = torch.stack([dzdx / 8.0, dzdy / 8.0, -torch.ones_like(x)])
    n = n / n.norm(dim=0, keepdim=True)
    return depth[None, None].float(), n[None].float(), body[None, None].float()


def symmetric_pose_px() -> torch.Tensor:
    """(17, 2) a pose mirror-symmetric about the dome's vertical axis x = 31.5, every joint on the body."""
    cx = BODY_C[0]
    half = {  # (dx from the axis, y) for left joints; right joints mirror
        "shoulder": (7.0, 16.0),
        "elbow": (11.0, 24.0),
        "wrist": (12.0, 32.0),
        "hip": (5.0, 40.0),
        "knee": (7.0, 48.0),
        "ankle": (6.0, 55.0),
    }
    kp = torch.zeros(17, 2)
    kp[0] = torch.tensor([cx, 8.0])
    for i, (dx, y) in ((1, (2.0, 6.0)), (3, (4.0, 7.0))):
        kp[i], kp[i + 1] = torch.tensor([cx + dx, y]), torch.tensor([cx - dx, y])
    for name, (dx, y) in half.items():
        kp[COCO17.index(f"left_{name}")] = torch.tensor([cx + dx, y])
        kp[COCO17.index(f"right_{name}")] = torch.tensor([cx - dx, y])
    return kp


def to_uv(px: torch.Tensor) -> torch.Tensor:
    return (px / (S - 1)).unsqueeze(0)


def rotate_about(p: torch.Tensor, centre: torch.Tensor, deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    d = p - centre
    return centre + torch.stack([c * d[0] - s * d[1], s * d[0] + c * d[1]])


# L_sup -----------------------------------------------------------------------------------------------------


def test_heatmap_mse_weighted_mean_over_joints():
    target = torch.zeros(2, 3, 4, 5)
    pred = target.clone()
    pred[0, 0] += 2.0  # squared error 4 on joint (0, 0)
    pred[1, 2] += 1.0  # squared error 1 on joint (1, 2), weight 0 below
    weights = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    assert heatmap_mse(pred, target, weights).item() == pytest.approx(4.0 / 5.0)
    pred.requires_grad_(True)
    loss = heatmap_mse(pred, target, torch.zeros(2, 3))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() == 0


# L_cons ----------------------------------------------------------------------------------------------------


def gaussians(points_hm: torch.Tensor, h: int, w: int, sigma: float = 2.0) -> torch.Tensor:
    """(B, K, h, w) unit-peak Gaussians at heatmap-pixel points (B, K, 2)."""
    y, x = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    p = points_hm.double()
    d2 = (x - p[..., 0, None, None]) ** 2 + (y - p[..., 1, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma**2)).float()


def affine_rt(deg: float, centre: tuple[float, float], shift: tuple[float, float]) -> torch.Tensor:
    """(2, 3) rotation by ``deg`` about ``centre`` followed by a shift, in input pixels."""
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    R = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    t = torch.tensor(centre, dtype=torch.float64) - R @ torch.tensor(centre, dtype=torch.float64)
    return torch.cat([R, (t + torch.tensor(shift, dtype=torch.float64))[:, None]], 1).float()


INPUT_HW, HM_HW = (256, 192), (64, 48)
HM_SCALE = torch.tensor([(HM_HW[1] - 1) / (INPUT_HW[1] - 1), (HM_HW[0] - 1) / (INPUT_HW[0] - 1)])
SHIFT = (2.0 / float(HM_SCALE[0]), -1.0 / float(HM_SCALE[1]))  # whole heatmap pixels (2, -1): an exact warp


def consistency_case(deg: float, student_shift_px: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher Gaussians in the weak view and student Gaussians where the weak->strong affine sends them,
    moved by ``student_shift_px`` input pixels along x; returns ``(loss, kept)``."""
    g = torch.Generator().manual_seed(0)
    pts_weak = torch.rand(2, 5, 2, generator=g) * torch.tensor([110.0, 150.0]) + torch.tensor([40.0, 50.0])
    A = affine_rt(deg, (95.5, 127.5), SHIFT).expand(2, 2, 3)
    pts_strong = torch.einsum("bij,bkj->bki", A[..., :2], pts_weak) + A[..., 2].unsqueeze(1)
    teacher = gaussians(pts_weak * HM_SCALE, *HM_HW)
    student = gaussians((pts_strong + torch.tensor([student_shift_px, 0.0])) * HM_SCALE, *HM_HW)
    return consistency_loss(student, teacher, A, INPUT_HW)


def test_consistency_zero_when_aligned_and_rising_with_shift():
    # Whole-heatmap-pixel translation: the warp is exact, so aligned views agree to float precision.
    aligned, kept = consistency_case(0.0, 0.0)
    assert aligned.item() < 1e-9 and kept.item() == 1.0
    shifted = [consistency_case(0.0, s)[0].item() for s in (2.0, 4.0, 8.0, 16.0)]
    assert shifted[0] > 1e-4 and all(a < b for a, b in zip(shifted, shifted[1:], strict=False))
    # Rotation + translation: only bilinear resampling error is left, far below a 2-input-px shift
    # (half a heatmap pixel).
    rotated = consistency_case(25.0, 0.0)[0].item()
    assert rotated < 0.05 * consistency_case(25.0, 2.0)[0].item()


def test_consistency_of_bf16_heatmaps_is_computed_in_float32():
    """bf16-mixed training hands the loss bf16 heatmaps: it warps and compares them in float32 (half-precision
    det/inv do not exist; a bf16 warp would be off by pixels) and the gradient reaches the bf16 student."""
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(2, 5, 2, generator=g) * torch.tensor([110.0, 150.0]) + torch.tensor([40.0, 50.0])
    A = affine_rt(25.0, (95.5, 127.5), SHIFT).expand(2, 2, 3)
    teacher = gaussians(pts * HM_SCALE, *HM_HW).bfloat16()
    student = gaussians((pts + 3.0) * HM_SCALE, *HM_HW).bfloat16().requires_grad_(True)
    loss, kept = consistency_loss(student, teacher, A, INPUT_HW)
    reference, _ = consistency_loss(student.detach().float(), teacher.float(), A, INPUT_HW)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(reference.item(), rel=1e-6)
    loss.backward()
    assert student.grad.dtype == torch.bfloat16 and torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


def test_consistency_uses_udp_heatmap_stride():
    """The same warp read with a wrong stride (affine applied in heatmap pixels) no longer aligns."""
    right = consistency_case(0.0, 0.0)[0].item()
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(2, 5, 2, generator=g) * torch.tensor([110.0, 150.0]) + torch.tensor([40.0, 50.0])
    A = affine_rt(0.0, (95.5, 127.5), SHIFT).expand(2, 2, 3)
    teacher = gaussians(pts * HM_SCALE, *HM_HW)
    student = gaussians((pts + torch.tensor(SHIFT)) * HM_SCALE, *HM_HW)
    wrong, _ = consistency_loss(student, teacher, A, HM_HW)  # input size mistaken for the heatmap size
    assert right < 1e-9 < 1e-4 < wrong.item()


def test_consistency_swaps_channels_between_mirrored_views():
    g = torch.Generator().manual_seed(1)
    pts = torch.rand(1, 17, 2, generator=g) * torch.tensor([110.0, 150.0]) + torch.tensor([40.0, 50.0])
    W = INPUT_HW[1]
    mirror = torch.tensor([[[-1.0, 0.0, W - 1.0], [0.0, 1.0, 0.0]]])  # x -> (W - 1) - x
    pts_strong = pts * torch.tensor([-1.0, 1.0]) + torch.tensor([W - 1.0, 0.0])
    flip = list(COCO17.flip_indices)
    teacher = gaussians(pts * HM_SCALE, *HM_HW)
    # flip augmentation relabels: the strong view's channel k shows the weak view's joint flip[k]
    student = gaussians(pts_strong[:, flip] * HM_SCALE, *HM_HW)
    swapped, _ = consistency_loss(student, teacher, mirror, INPUT_HW)
    unswapped, _ = consistency_loss(student, teacher, mirror, INPUT_HW, flip_indices=None)
    assert swapped.item() < 1e-9 < 1e-3 < unswapped.item()


def test_consistency_confidence_masking_and_gradients():
    peaks = torch.tensor([1.0, 0.9, 0.2, 0.1]).view(1, 4, 1, 1)
    teacher = gaussians(torch.full((2, 4, 2), 20.0), *HM_HW) * peaks
    student = torch.zeros(2, 4, *HM_HW, requires_grad=True)
    A = torch.eye(2, 3).expand(2, 2, 3)
    per_joint = teacher.pow(2).mean(dim=(-2, -1))  # MSE of a zero student, per joint
    loss, kept = consistency_loss(student, teacher, A, INPUT_HW, threshold=0.5)
    assert kept.item() == 0.5 and loss.item() == pytest.approx(per_joint[:, :2].mean().item(), rel=1e-5)
    loss, kept = consistency_loss(student, teacher, A, INPUT_HW, quantile=0.75)
    assert kept.item() == 0.25 and loss.item() == pytest.approx(per_joint[:, 0].mean().item(), rel=1e-5)
    ignore = torch.tensor([[True, False, False, False]] * 2)
    loss, kept = consistency_loss(student, teacher, A, INPUT_HW, threshold=0.5, ignore_mask=ignore)
    assert kept.item() == 0.25 and loss.item() == pytest.approx(per_joint[:, 1].mean().item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(student.grad).all() and student.grad[:, 1].abs().sum() > 0
    assert student.grad[:, [0, 2, 3]].abs().sum() == 0
    # nothing confident: an exact, differentiable zero
    student.grad = None
    loss, kept = consistency_loss(
        student, torch.zeros_like(teacher), A, INPUT_HW, threshold=0.5, quantile=0.5
    )
    loss.backward()
    assert loss.item() == 0.0 and kept.item() == 0.0 and torch.isfinite(student.grad).all()


# L_geo-depth -----------------------------------------------------------------------------------------------


def test_bone_symmetry_symmetric_pose_scores_lower_than_asymmetric():
    depth, _, body = dome_scene()
    sym = symmetric_pose_px()
    asym = sym.clone()
    le, lw = COCO17.index("left_elbow"), COCO17.index("left_wrist")
    asym[lw] = sym[le] + 1.5 * (sym[lw] - sym[le])  # left forearm 1.5x longer in the image
    l_sym = bone_symmetry_loss(to_uv(sym), depth, valid=body).item()
    l_asym = bone_symmetry_loss(to_uv(asym), depth, valid=body).item()
    assert l_sym < 1e-6 and l_asym > 0.015
    # Flat depth: the forearm pair scores (1.5 - 1) / (1.5 + 1) = 0.2 exactly, averaged over the 5 pairs.
    flat = torch.zeros_like(depth)
    assert bone_symmetry_loss(to_uv(asym), flat).item() == pytest.approx(0.2 / len(SYMMETRIC_BONES), rel=1e-4)


def test_bone_symmetry_rises_when_a_joint_leaves_the_body_for_the_flat_background():
    depth, _, body = dome_scene()
    true = symmetric_pose_px()
    le, lw = COCO17.index("left_elbow"), COCO17.index("left_wrist")
    moved = true.clone()
    # Swing the left forearm about the elbow until the wrist is off the dome: same 2D length.
    moved[lw] = rotate_about(true[lw], true[le], -80.0)
    assert float(sample_maps(body, to_uv(moved))[0, lw, 0]) == 0.0  # off the body, on the flat wall
    assert float(sample_maps(body, to_uv(true))[0, lw, 0]) == 1.0

    lam = 1e-2
    assert bone_symmetry_loss(to_uv(moved), depth, lambda_z=0.0).item() < 1e-6  # 2D alone: nothing changed
    on_body = bone_symmetry_loss(to_uv(true), depth, lambda_z=lam).item()
    off_body = bone_symmetry_loss(to_uv(moved), depth, lambda_z=lam).item()
    assert on_body < 1e-6 and off_body > 0.02
    # With the body mask, the off-body joint gates its pair off instead.
    assert bone_symmetry_loss(to_uv(moved), depth, lambda_z=lam, valid=body).item() < 1e-6


def test_bone_symmetry_gates_joints_on_depth_discontinuities():
    kp = to_uv(symmetric_pose_px())
    lw = COCO17.index("left_wrist")
    x_wrist = int(round(float(symmetric_pose_px()[lw, 0])))
    step = torch.zeros(1, 1, S, S)
    # a depth step under the left wrist: the left forearm sees it, the right one does not
    step[..., x_wrist:] = 2.0
    loss = bone_symmetry_loss(kp, step, lambda_z=1.0)
    no_gate = bone_symmetry_loss(kp, step, lambda_z=1.0, edge_threshold=float("inf"))
    assert loss.item() < 1e-6 < 0.01 < no_gate.item()


def test_bone_symmetry_gradient_reduces_the_asymmetry():
    depth, _, body = dome_scene()
    kp = symmetric_pose_px()
    lw = COCO17.index("left_wrist")
    kp[lw, 1] += 4.0
    uv = to_uv(kp).requires_grad_(True)
    loss = bone_symmetry_loss(uv, depth, valid=body)
    loss.backward()
    stepped = bone_symmetry_loss((uv - 1e-3 * uv.grad / uv.grad.norm()).detach(), depth, valid=body)
    assert uv.grad[0, lw, 1] > 0 and stepped.item() < loss.item()


# L_geo-norm ------------------------------------------------------------------------------------------------


def test_normal_prior_rises_when_a_joint_leaves_the_body_and_follows_kappa():
    _, normals, body = dome_scene()
    true = symmetric_pose_px()
    prior_mean = sample_maps(normals, to_uv(true))[0]
    prior_mean = prior_mean / prior_mean.norm(dim=-1, keepdim=True)
    kappa = torch.full((17,), 10.0)
    lw = COCO17.index("left_wrist")
    moved = true.clone()
    moved[lw] = torch.tensor([60.0, 60.0])  # flat wall corner, normal (0, 0, -1)
    at_truth = normal_prior_loss(to_uv(true), normals, prior_mean, kappa).item()
    off_body = normal_prior_loss(to_uv(moved), normals, prior_mean, kappa).item()
    expected = (1.0 - float(-prior_mean[lw, 2])) / 17  # 1 - cos to (0,0,-1), one joint of 17, kappa weight 1
    assert at_truth < 1e-6 and off_body == pytest.approx(expected, rel=1e-4) and expected > 0.01
    # The body mask gates the off-body joint instead.
    assert normal_prior_loss(to_uv(moved), normals, prior_mean, kappa, valid=body).item() < 1e-6
    # Concentration weights, normalised to mean 1: the wrist at kappa 27 among sixteen joints at kappa 1
    # weighs 2.5.
    kappa_w = torch.ones(17)
    kappa_w[lw] = 27.0
    weighted = normal_prior_loss(to_uv(moved), normals, prior_mean, kappa_w).item()
    assert weighted == pytest.approx(expected * 27.0 / (43.0 / 17.0), rel=1e-4)


def test_normal_prior_gradient_points_back_to_the_matching_surface():
    _, normals, body = dome_scene()
    true = symmetric_pose_px()
    prior_mean = sample_maps(normals, to_uv(true))[0]
    lw = COCO17.index("left_wrist")
    off = true.clone()
    off[lw, 0] -= 3.0  # towards the dome's centre: a less tilted normal than the prior's
    uv = to_uv(off).requires_grad_(True)
    normal_prior_loss(uv, normals, prior_mean, torch.ones(17), valid=body).backward()
    assert uv.grad[0, lw, 0] < 0  # descent moves the wrist back outwards (+x)


# degenerate inputs -----------------------------------------------------------------------------------------


def test_every_loss_has_finite_gradients_on_degenerate_inputs():
    B, K = 2, 17
    coincident = torch.full((B, K, 2), 0.5, requires_grad=True)
    const_depth = torch.full((B, 1, S, S), 0.7)
    zero_depth = torch.zeros(B, 1, S, S)
    zero_normals = torch.zeros(B, 3, S, S)
    empty = torch.zeros(B, 1, S, S)
    cases = [
        bone_symmetry_loss(coincident, const_depth),
        bone_symmetry_loss(coincident, zero_depth, valid=empty),
        bone_symmetry_loss(coincident, const_depth, joint_weights=torch.zeros(B, K)),
        normal_prior_loss(coincident, zero_normals, torch.zeros(K, 3), torch.zeros(K)),
        normal_prior_loss(
            coincident, dome_scene()[1].expand(B, -1, -1, -1), torch.randn(K, 3), torch.ones(K), valid=empty
        ),
        bone_length_consistency(coincident.unsqueeze(0).expand(3, -1, -1, -1)),
        manifold_loss(coincident * 100.0, PoseVAE().freeze(), torch.ones(K, dtype=torch.bool)),
        manifold_loss(coincident * 100.0, PoseVAE().freeze(), torch.zeros(K, dtype=torch.bool)),
    ]
    for i, loss in enumerate(cases):
        (grad,) = torch.autograd.grad(loss, coincident)
        assert torch.isfinite(loss), i
        assert torch.isfinite(grad).all(), i
    # gated-out cases are exact zeros
    for i in (1, 2, 3, 4):
        assert cases[i].item() == 0.0


# L_manifold plumbing ---------------------------------------------------------------------------------------


def test_manifold_loss_reaches_keypoints_not_the_vae():
    vae = PoseVAE()  # deliberately not frozen
    kp = (symmetric_pose_px().unsqueeze(0) * 3.0 + 10.0).requires_grad_(True)
    loss = manifold_loss(kp, vae, torch.ones(17, dtype=torch.bool))
    loss.backward()
    assert kp.grad is not None and kp.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())
    # invariant to translation and scale of the pixel frame
    again = manifold_loss(kp.detach() * 0.25 - 40.0, vae, torch.ones(17, dtype=torch.bool))
    assert again.item() == pytest.approx(loss.item(), rel=1e-4)


def test_manifold_margin_is_a_hinge_on_each_pose():
    torch.manual_seed(0)
    vae = PoseVAE().freeze()
    base = symmetric_pose_px()
    kp = torch.stack([base, base.flip(0), base * torch.tensor([1.0, 0.3])]).requires_grad_(True)
    labelled = torch.ones(17, dtype=torch.bool)
    per_pose = torch.stack([manifold_loss(kp[i : i + 1], vae, labelled) for i in range(3)]).detach()
    low, high = per_pose.sort().values[1:]
    margin = float(low + high) / 2  # two poses under it, one over
    expected = (per_pose - margin).clamp_min(0).mean()
    loss = manifold_loss(kp, vae, labelled, margin=margin)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and loss.item() > 0
    (grad,) = torch.autograd.grad(loss, kp)
    # poses at or under the margin get no gradient; the one above it does
    below = per_pose <= margin
    assert grad[below].abs().max() == 0 and grad[~below].abs().sum() > 0
    assert manifold_loss(kp, vae, labelled, margin=float(per_pose.max()) + 1e-3).item() == 0.0
    with pytest.raises(ValueError, match="margin"):
        manifold_loss(kp, vae, labelled, margin=-0.1)


# FiDIP -----------------------------------------------------------------------------------------------------


def test_domain_adversarial_alternation():
    torch.manual_seed(0)
    D = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    features = torch.randn(4, 3, 2, 2, requires_grad=True)
    labels = torch.tensor([1.0, 1.0, 0.0, 0.0])
    pose_loss = (features**2).mean()
    out = domain_adversarial_losses(D, features, labels, pose_loss, lam=0.5)
    bce = nn.functional.binary_cross_entropy_with_logits(D(features).reshape(-1), labels)
    assert out.classifier.item() == pytest.approx(bce.item())
    assert out.confusion.item() == pytest.approx(bce.item())
    assert out.pose.item() == pytest.approx(pose_loss.item() - 0.5 * bce.item())
    out.pose.backward(retain_graph=True)  # step II: pose network only
    assert all(p.grad is None for p in D.parameters()) and features.grad.abs().sum() > 0
    features.grad = None
    out.classifier.backward()  # step I: classifier only, on detached features
    assert features.grad is None and all(p.grad.abs().sum() > 0 for p in D.parameters())


# TTA over time ---------------------------------------------------------------------------------------------


def test_bone_length_consistency_rigid_motion_vs_stretching():
    base = symmetric_pose_px()
    rigid = torch.stack(
        [
            (base - 31.5) @ torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
            + 31.5
            + 3 * a
            for a in np.linspace(0, 1.2, 6)
        ]
    )
    assert bone_length_consistency(rigid).item() < 1e-8
    stretch = torch.stack([base * torch.tensor([1.0 + 0.1 * t, 1.0]) for t in range(6)])
    v = bone_length_consistency(stretch).item()
    assert v > 1e-3
    # scale-normalised: a 5x larger infant gives the same value; batched input averages over clips
    assert bone_length_consistency(stretch * 5.0).item() == pytest.approx(v, rel=1e-4)
    both = bone_length_consistency(torch.stack([stretch, rigid]))
    assert both.item() == pytest.approx(v / 2, rel=1e-4)
    assert bone_length_consistency(stretch[:1]).item() == 0.0
