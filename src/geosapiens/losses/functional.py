"""Every Geo-Sapiens training loss, as pure functions over tensors (SPEC §5).

No loss holds state: weights, schedules and the models whose outputs feed them live in the stages. Each
function documents its shapes; B = batch, K = keypoints (COCO-17), h x w = heatmap size, H x W = input (crop)
or map size.

Coordinate conventions:
    - crop pixels: pixel centres at integer coordinates, as everywhere in the project;
    - ``uv`` (the geometric losses): normalised image units with ``u = x / (W - 1)``, ``v = y / (H - 1)``, so
      0 and 1 are the centres of the first and last pixels of the map (``grid_sample(align_corners=True)``).

Every loss is finite, with finite gradients, for degenerate inputs: coincident joints, constant or zero depth,
zero normals, empty masks, all weights zero. Where nothing is left to average, a loss is an exact zero that is
still connected to its inputs' graph, so ``backward()`` works and gives zero gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from geosapiens.affine import compose_affine, invert_affine, is_mirror
from geosapiens.models.codec import resize_aligned
from geosapiens.models.critics import GeometryMaps
from geosapiens.models.geometry import normalize_relative_depth
from geosapiens.models.pose_vae import masked_pose_error, normalize_pose
from geosapiens.skeleton import COCO17, SYMMETRIC_BONES

__all__ = [
    "heatmap_mse",
    "distillation_loss",
    "consistency_loss",
    "bone_symmetry_loss",
    "normal_prior_loss",
    "manifold_loss",
    "DomainAdversarialLosses",
    "domain_adversarial_losses",
    "bone_length_consistency",
    "sample_maps",
    "warp_heatmaps",
    "pseudo_label_loss",
    "keypoint_distance_loss",
    "silhouette_loss",
    "BODY_BONES",
    "DEFAULT_LAMBDA_Z",
]

# COCO-17 limbs between body joints (shoulders, elbows, wrists, hips, knees, ankles): the face edges are
# short, noisy and foreshorten with every head turn, so the temporal bone-length term leaves them out.
BODY_BONES: tuple[tuple[int, int], ...] = tuple((a, b) for a, b in COCO17.limbs if min(a, b) >= 5)

# lambda_z for critics that cannot measure millimetres (Sapiens, TorchScript, the small critic): what the
# oracle measured on the demo renders (``geosapiens critics cache --critic oracle`` writes its own value to
# the manifest, and training then uses that). On 600 real-like demo crops one normalised depth unit (the
# body's mean absolute deviation of depth) is a median 40 mm and one image unit (the longer side of the
# 1.25-padded crop at the body's depth) 584 mm; the median per image of (depth unit / image unit)^2 is
# 4.8e-3 (10th-90th percentile 1.3e-3 - 2.8e-2; 4.0e-3 over all 2,600 real-like and synthetic crops; the
# geometry-signal issue estimated 5.6e-3 from 43 / 577 mm). Both units follow from the scene (an infant's
# depth spread against the crop it fills), not from the critic, so a critic right up to scale and shift has
# the same value; the old 1e-3 gave depth ~5x less than its metric weight.
DEFAULT_LAMBDA_Z = 4.8e-3


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(values * weights) / sum(weights), and an exact (graph-connected) 0 when the weights sum to 0."""
    total = weights.sum()
    return (values * weights).sum() / total.clamp_min(torch.finfo(values.dtype).tiny) * (total > 0)


def heatmap_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``L_sup``: per-joint heatmap MSE, averaged over the weighted joints.

    Each joint's squared error is averaged over its h x w pixels, then the joints are averaged with
    ``weights`` (0 for unlabelled joints), so the loss does not shrink when a dataset labels fewer joints.

    Args:
        pred: (B, K, h, w) predicted heatmaps.
        target: (B, K, h, w) target heatmaps.
        weights: (B, K) non-negative per-joint weights.

    Returns:
        () loss; 0 when every weight is 0.
    """
    per_joint = (pred - target).pow(2).mean(dim=(-2, -1))
    return _masked_mean(per_joint, weights.to(per_joint.dtype))


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, confidence_weighted: bool = False
) -> torch.Tensor:
    """``L_distill``: heatmap MSE between the student and the teacher's heatmaps (Hinton-style soft targets).

    The teacher's full heatmaps, not its decoded keypoints, are the target: they carry its uncertainty (a
    flat map where it cannot see a joint, two modes where it hesitates between left and right), which a
    Gaussian at its argmax would throw away. The teacher's maps are resampled to the student's heatmap size
    with :func:`~geosapiens.models.codec.resize_aligned` (the same UDP pixel centres at both sizes).

    Args:
        student: (B, K, h, w) student heatmaps.
        teacher: (B, K, h', w') teacher heatmaps (no gradient flows into them).
        confidence_weighted: weight each joint by the teacher's heatmap peak clamped to [0, 1], so joints it
            does not find (occluded, out of the crop) teach less; off, every joint counts the same.

    Returns:
        () loss.
    """
    target = resize_aligned(teacher.detach(), student.shape[-2:]).to(student.dtype)
    if confidence_weighted:
        weights = target.amax(dim=(-2, -1)).clamp(0.0, 1.0)
    else:
        weights = target.new_ones(target.shape[:2])
    return heatmap_mse(student, target, weights)


def _pixel_to_normalized(size_hw: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """(2, 3) affine from pixel coordinates of an H x W image to ``align_corners=True`` normalised ones."""
    H, W = size_hw
    sx, sy = 2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)
    return torch.tensor([[sx, 0.0, -1.0], [0.0, sy, -1.0]], dtype=like.dtype, device=like.device)


def warp_heatmaps(
    heatmaps: torch.Tensor,
    src_to_view: torch.Tensor,
    input_size_hw: Sequence[int],
    flip_indices: Sequence[int] | None = COCO17.flip_indices,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heatmaps of one crop frame resampled into another (a teacher's into the student's view).

    The affine is given in input (crop) pixels; heatmaps are UDP-aligned with the input, so in
    ``align_corners=True`` normalised coordinates both grids read ``2 x / (W - 1) - 1``: the warp is built
    once in the input frame and applies to heatmaps of any stride. When the two frames are mirrored
    relative to each other (``det < 0``), flip augmentation relabelled the joints left <-> right, so the
    channels are swapped with ``flip_indices`` first.

    Args:
        heatmaps: (B, K, h, w) in the source frame.
        src_to_view: (B, 2, 3) source-crop -> view-crop input pixels.
        input_size_hw: (H, W) of both crops.
        flip_indices: left/right channel swap for mirrored pairs (None: never mirrored).

    Returns:
        ``(swapped, warped, inside)``: (B, K, h, w) the source heatmaps in the view's channel order, the same
        resampled into the view, and (B, 1, h, w) 1 where a view pixel falls inside the source crop.
    """
    B, K, h, w = heatmaps.shape
    src_to_view = src_to_view.to(heatmaps.dtype)
    mirrored = is_mirror(src_to_view)
    if flip_indices is not None and bool(mirrored.any()):
        if len(flip_indices) != K:
            raise ValueError(f"{len(flip_indices)} flip indices for {K} heatmap channels")
        swapped = heatmaps[:, torch.as_tensor(flip_indices, device=heatmaps.device)]
        heatmaps = torch.where(mirrored[:, None, None, None], swapped, heatmaps)
    # Sampling grid: view pixel -> source pixel, in normalised coordinates.
    N = _pixel_to_normalized(input_size_hw, heatmaps)
    theta = compose_affine(compose_affine(N, invert_affine(src_to_view)), invert_affine(N))
    grid = F.affine_grid(theta, [B, K, h, w], align_corners=True)
    warped = F.grid_sample(heatmaps, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    inside = (grid.abs() <= 1.0 + 1e-6).all(dim=-1).unsqueeze(1).to(heatmaps.dtype)
    return heatmaps, warped, inside


def pseudo_label_loss(
    pred: torch.Tensor, target: torch.Tensor, inside: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Per-joint heatmap MSE over the ``inside`` pixels, averaged over the ``keep`` joints (0 when none).

    Args:
        pred: (B, K, h, w) predicted heatmaps.
        target: (B, K, h, w) pseudo-label heatmaps in the same frame (detached by the caller).
        inside: (B, 1, h, w) pixels where the target is defined.
        keep: (B, K) joints that count.
    """
    error = (pred - target).pow(2)
    pixels = inside.sum(dim=(-2, -1))  # (B, 1)
    per_joint = (error * inside).sum(dim=(-2, -1)) / pixels.clamp_min(1.0)
    return _masked_mean(per_joint, keep.to(per_joint.dtype) * (pixels > 0))


def keypoint_distance_loss(
    keypoints: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor,
    *,
    scale: float,
    eps: float = 1.0,
) -> torch.Tensor:
    """Mean distance of the ``keep`` joints to their target, in units of ``scale`` (0 when none).

    A pseudo-label read as a point, not a heatmap: ``sqrt(d^2 + eps^2) - eps`` (px, smoothed at 0) keeps a
    constant pull however far a joint is, where a heatmap MSE against the target's Gaussian is flat once the
    two no longer overlap (measured in ``docs/results/geometry_signal.md``).

    Args:
        keypoints: (B, K, 2) px.
        target: (B, K, 2) px, detached by the caller.
        keep: (B, K) joints that count.
        scale: px per unit (the crop's longer side: errors in crop units).
        eps: smoothing radius in px.
    """
    d = (keypoints - target).pow(2).sum(-1).add(eps**2).sqrt().sub(eps) / scale
    return _masked_mean(d, keep.to(d.dtype))


def consistency_loss(
    student_strong: torch.Tensor,
    teacher_weak: torch.Tensor,
    weak_to_strong: torch.Tensor,
    input_size_hw: Sequence[int],
    *,
    threshold: float | None = None,
    quantile: float | None = None,
    ignore_mask: torch.Tensor | None = None,
    flip_indices: Sequence[int] | None = COCO17.flip_indices,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``L_cons``: student heatmaps on the strong view vs teacher heatmaps of the weak view warped into it.

    The affine is given in input (crop) pixels; heatmaps are UDP-aligned with the input, heatmap px =
    input px * (h - 1) / (H - 1). In ``align_corners=True`` normalised coordinates both grids read
    ``2 x / (W - 1) - 1`` (resp. ``2 x_hm / (w - 1) - 1``), the same number for the same point, so the warp is
    built once in the input frame and applies to heatmaps of any stride.

    When one view is mirrored relative to the other (``det`` of the affine's linear part < 0), flip
    augmentation has relabelled its joints left <-> right (a mirrored infant's left wrist is labelled as a
    right wrist), so the teacher's channels are swapped with ``flip_indices`` before the warp.

    Strong-view pixels that fall outside the weak view carry no teacher information and are left out of the
    squared error. Teacher joints are kept when their confidence (heatmap maximum in the weak view) reaches
    ``threshold`` and/or the ``quantile`` of the confidences of the non-ignored joints in the batch
    (UniFrame's batch-quantile masking); the teacher is a target and is detached.

    Args:
        student_strong: (B, K, h, w) student heatmaps on the strong view.
        teacher_weak: (B, K, h, w) teacher heatmaps on the weak view.
        weak_to_strong: (B, 2, 3) affine from weak-crop to strong-crop input pixels.
        input_size_hw: (H, W) of the input crops.
        threshold: minimum teacher confidence, or None.
        quantile: in [0, 1]; keep joints whose confidence is at least this batch quantile, or None.
        ignore_mask: (B, K) bool in the strong view's channel order, True for joints to leave out whatever
            their confidence.
        flip_indices: left/right channel swap for mirrored pairs of views (None: views are never mirrored).

    Returns:
        ``(loss, kept)``: () mean over kept joints of the per-joint MSE over valid pixels (0 when none is
        kept), and () the fraction of the B*K joints kept.
    """
    B, K, h, w = student_strong.shape
    # bf16/fp16 heatmaps (autocast) are warped and compared in float32: det/inv have no half-precision
    # kernels, and a bf16 warp of a 1024 px crop would be off by pixels.
    student_strong = student_strong.to(torch.promote_types(student_strong.dtype, torch.float32))
    teacher = teacher_weak.detach().to(student_strong.dtype)
    if quantile is not None and not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")

    teacher, warped, inside = warp_heatmaps(teacher, weak_to_strong, input_size_hw, flip_indices)

    with torch.no_grad():
        confidence = teacher.amax(dim=(-2, -1))
        candidates = torch.ones_like(confidence, dtype=torch.bool)
        if ignore_mask is not None:
            candidates &= ~ignore_mask.bool()
        keep = candidates.clone()
        if threshold is not None:
            keep &= confidence >= threshold
        if quantile is not None and bool(candidates.any()):
            cut = torch.quantile(confidence[candidates].float(), quantile).to(confidence.dtype)
            keep &= confidence >= cut
        kept = keep.float().mean()

    return pseudo_label_loss(student_strong, warped, inside, keep), kept


def sample_maps(maps: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of per-pixel maps at keypoints, differentiable in ``uv``.

    Args:
        maps: (B, C, H, W).
        uv: (B, K, 2) normalised image units (``u = x / (W - 1)``).

    Returns:
        (B, K, C); points outside the map read the nearest border value (callers gate them).
    """
    grid = (uv.to(maps.dtype) * 2.0 - 1.0).unsqueeze(2)  # (B, K, 1, 2)
    out = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.squeeze(-1).transpose(1, 2)


def _inside(uv: torch.Tensor) -> torch.Tensor:
    """(B, K) bool: the keypoint lies inside the image."""
    return ((uv >= 0.0) & (uv <= 1.0)).all(dim=-1)


def silhouette_loss(
    keypoints_uv: torch.Tensor,
    body_distance: torch.Tensor,
    joint_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``L_geo-body``: how far each joint lies outside the critic's body silhouette.

    ``body_distance`` is the distance transform of the body mask (0 on the body), sampled bilinearly at the
    keypoint; a keypoint outside the map adds its distance to the map's border. Unlike the gates of the depth
    and normal terms, which silence a joint once it leaves the body, this grows with the distance and its
    gradient (unit length per image unit outside the body) points back towards the nearest body pixel. It is
    0 anywhere on the body, so it cannot place a joint on it, only keep it there.

    Args:
        keypoints_uv: (B, K, 2) normalised image units (``u = x / (W - 1)``).
        body_distance: (B, 1, H, W) distance to the body in isotropic image units (the longer side = 1).
        joint_weights: (B, K) per-joint weights, or None.

    Returns:
        () weighted mean distance over joints, in image units.
    """
    H, W = body_distance.shape[-2:]
    side = float(max(H, W) - 1) or 1.0
    aspect = keypoints_uv.new_tensor([(W - 1) / side, (H - 1) / side])
    inside = keypoints_uv.clamp(0.0, 1.0)
    beyond = (((keypoints_uv - inside) * aspect).pow(2).sum(-1) + 1e-12).sqrt() - 1e-6  # finite grad at 0
    distance = sample_maps(body_distance, inside)[..., 0].to(keypoints_uv.dtype) + beyond
    weights = torch.ones_like(distance) if joint_weights is None else joint_weights.to(distance.dtype)
    return _masked_mean(distance, weights)


def _depth_gradient_magnitude(depth: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) magnitude of the depth gradient, in depth units per image unit (longer side = 1).

    Central differences inside, one-sided at the border (``torch.gradient``); measured per image unit rather
    than per pixel so that smooth body surfaces give the same slope at every map resolution.
    """
    H, W = depth.shape[-2:]
    side = float(max(H, W) - 1) or 1.0
    gy, gx = (
        torch.gradient(depth, dim=(-2, -1), spacing=1.0 / side) if min(H, W) > 1 else (depth * 0, depth * 0)
    )
    return torch.sqrt(gx.pow(2) + gy.pow(2))


def bone_symmetry_loss(
    keypoints_uv: torch.Tensor,
    depth_map: torch.Tensor,
    *,
    bones: Sequence[tuple[tuple[int, int], tuple[int, int]]] = SYMMETRIC_BONES,
    lambda_z: float | torch.Tensor = DEFAULT_LAMBDA_Z,
    valid: torch.Tensor | None = None,
    joint_weights: torch.Tensor | None = None,
    edge_threshold: float = 50.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``L_geo-depth``: left/right 2.5D bone lengths should match (scale-free ratio form).

    For each bone ``(i, j)``: ``D_ij = sqrt(du^2 + dv^2 + lambda_z * dd^2 + eps)`` with the depth ``d``
    sampled bilinearly from the critic map at the keypoints; each symmetric pair scores
    ``|D_l - D_r| / (D_l + D_r + eps)``. ``du, dv`` are measured in isotropic image units (the longer side of
    the map is 1): for a square crop these are exactly the ``uv`` units, and for a 4:3 crop a bone's length
    no longer depends on its orientation.

    ``lambda_z`` sets how much depth counts against image distance: ``(depth unit / image unit)^2`` gives
    depth its metric weight. The critics' depth is the per-image robust standardisation (median 0, mean
    absolute deviation 1 over the body); on the real-like demo renders that unit is a median 40 mm and one
    image unit 584 mm, so ``lambda_z ~ 4.8e-3`` (:data:`DEFAULT_LAMBDA_Z`; an oracle cache records its own
    measurement). Depth is then still only a few % of a squared bone length.

    Measured signal (demo data, oracle critic, 200 real-like images, 96 px crops; the geometry-signal
    issue): Spearman -0.49 between this loss and keypoint error over 2,000 perturbed ground-truth poses (it
    FALLS as the error grows: the gate silences joints that leave the body), 63% of them score exactly 0, and
    descent on the keypoints from 5%-noise poses raises their error from 4.41% to 4.47-5.60% of the box. At
    ground truth the left/right penalty is 0.151 with the map's depth, 0.031 with the true joint depth: the
    map shows the visible surface, so read depth only at joints the teacher sees (``joint_weights``). Kept as
    the seed's term and for ablations; :func:`silhouette_loss` carries the off-body signal.

    A pair is gated off (weight 0, no gradient) when any of its four joints lies outside the image, off the
    body (``valid`` sampled below 0.5), or on a depth discontinuity: the magnitude of the finite-difference
    depth gradient at the joint exceeds ``edge_threshold`` (depth units per image unit). There the sampled
    depth mixes an occluder with what it hides; smooth body surfaces stay far below the default, a step of
    one depth unit spread over 1/64 of the image (a token of a Sapiens critic) is above it.

    Args:
        keypoints_uv: (B, K, 2) normalised image units (``u = x / (W - 1)``).
        depth_map: (B, 1, H, W) relative depth (larger = farther).
        bones: pairs ``((l_i, l_j), (r_i, r_j))`` of COCO-17 indices.
        lambda_z: weight of squared depth differences, a float or (B,) per sample (critic-measured).
        valid: (B, 1, H, W) body mask, or None for everywhere.
        joint_weights: (B, K) extra per-joint weights (e.g. teacher confidence masks), or None.
        edge_threshold: depth-gradient magnitude above which a joint is on a discontinuity.
        eps: keeps square roots and ratios finite for coincident joints.

    Returns:
        () mean over active pairs (weighted by the product of their joints' weights); 0 if none.
    """
    H, W = depth_map.shape[-2:]
    side = float(max(H, W) - 1) or 1.0
    aspect = keypoints_uv.new_tensor([(W - 1) / side, (H - 1) / side])
    depth = sample_maps(depth_map, keypoints_uv)[..., 0]  # (B, K)

    with torch.no_grad():
        gate = _inside(keypoints_uv) & (
            sample_maps(_depth_gradient_magnitude(depth_map), keypoints_uv)[..., 0] <= edge_threshold
        )
        if valid is not None:
            gate &= sample_maps(valid.to(depth_map.dtype), keypoints_uv)[..., 0] >= 0.5
        weight = gate.to(depth.dtype)
        if joint_weights is not None:
            weight = weight * joint_weights.to(depth.dtype)

    xy = keypoints_uv.to(depth.dtype) * aspect

    def length(i: int, j: int) -> torch.Tensor:
        d2 = (xy[:, i] - xy[:, j]).pow(2).sum(-1) + lambda_z * (depth[:, i] - depth[:, j]).pow(2)
        return torch.sqrt(d2 + eps)

    terms, weights = [], []
    for (li, lj), (ri, rj) in bones:
        d_l, d_r = length(li, lj), length(ri, rj)
        terms.append((d_l - d_r).abs() / (d_l + d_r + eps))
        weights.append(weight[:, li] * weight[:, lj] * weight[:, ri] * weight[:, rj])
    return _masked_mean(torch.stack(terms, 1), torch.stack(weights, 1))


def normal_prior_loss(
    keypoints_uv: torch.Tensor,
    normal_map: torch.Tensor,
    prior_mean: torch.Tensor,
    prior_kappa: torch.Tensor,
    *,
    valid: torch.Tensor | None = None,
    joint_weights: torch.Tensor | None = None,
    min_norm: float = 0.5,
) -> torch.Tensor:
    """``L_geo-norm``: the critic's surface normal at each keypoint should point where that joint's normal
    usually points, ``1 - cos(prior_mean_k, n(u_k, v_k))``.

    Joints are weighted by their von Mises-Fisher concentration, normalised to mean 1 over the K joints, so a
    joint whose normal is predictable (chest, hips) counts more than one that is not (wrists), and a joint
    with no prior (kappa 0) not at all. The sampled normal is re-normalised (bilinear mixing shortens it); a
    joint is gated off outside the image, off the body (``valid`` below 0.5) or where the sampled normal is
    shorter than ``min_norm`` (zero-normal background of rendered maps, or a fold where neighbours disagree).

    The prior and the map must share a camera frame: compare in the frame the prior was fitted in (the
    canonical crop), since a rotated or flipped view rotates the normals' x/y.

    Measured signal (demo data, oracle critic; the geometry-signal issue): flat, Spearman +0.06 with
    keypoint error. All 17 fitted prior means lie within ~7 degrees of "facing the camera" (kappa 3-8.6), so
    the term rewards any camera-facing surface for every joint; descent from 5%-noise poses raises their error
    from 4.41% to 5.67-6.93% of the box. Kept as the seed's term and for ablations.

    Args:
        keypoints_uv: (B, K, 2) normalised image units.
        normal_map: (B, 3, H, W) camera-frame normals.
        prior_mean: (K, 3) unit mean directions.
        prior_kappa: (K,) non-negative concentrations.
        valid: (B, 1, H, W) body mask, or None.
        joint_weights: (B, K) extra per-joint weights, or None.
        min_norm: sampled normals shorter than this are ignored.

    Returns:
        () sum of weighted cosine distances over gated joints divided by their number; 0 if none.
    """
    sampled = sample_maps(normal_map, keypoints_uv)  # (B, K, 3)
    norm = sampled.norm(dim=-1)
    n = sampled / norm.clamp_min(1e-6).unsqueeze(-1)
    mean = F.normalize(prior_mean.to(n), dim=-1, eps=1e-6)
    cos = (n * mean.unsqueeze(0)).sum(-1)

    with torch.no_grad():
        kappa = prior_kappa.to(n).clamp_min(0.0)
        kappa_weight = kappa / kappa.mean().clamp_min(torch.finfo(n.dtype).tiny)
        gate = _inside(keypoints_uv) & (norm >= min_norm)
        if valid is not None:
            gate &= sample_maps(valid.to(normal_map.dtype), keypoints_uv)[..., 0] >= 0.5
        count = gate.to(n.dtype)
        if joint_weights is not None:
            count = count * joint_weights.to(n.dtype)
    total = count.sum()
    return (
        ((1.0 - cos) * kappa_weight * count).sum() / total.clamp_min(torch.finfo(n.dtype).tiny) * (total > 0)
    )


def manifold_loss(
    keypoints: torch.Tensor, vae: nn.Module, labelled: torch.Tensor, margin: float = 0.0
) -> torch.Tensor:
    """``L_manifold``: reconstruction error of the frozen pose VAE on the normalised predicted pose, beyond
    ``margin``.

    The VAE's parameters enter the computation detached (``torch.func.functional_call``), so gradients reach
    the keypoints and never the prior, whether or not the caller froze it.

    Why a margin: the error is not minimal at the true pose. Real poses score about as well as the prior's
    own training poses (a median 0.05 with the demo prior), and descending the error further pulls every
    pose towards the few the decoder reproduces best, away from the truth (with the demo prior, plain
    descent on the warm-up model's real-like predictions takes PCK@0.1 from 0.20 to 0.13). With ``margin`` at
    a high quantile of the training poses' errors, a pose as plausible as those costs nothing and only the
    implausible ones (swapped or collapsed limbs) are pulled back.

    Args:
        keypoints: (B, K, 2) keypoints in any pixel frame (normalisation removes translation and scale).
        vae: a :class:`geosapiens.models.pose_vae.PoseVAE`.
        labelled: (K,) or (B, K) bool, joints that take part (others are zeroed and masked).
        margin: per-pose error that is free (>= 0); 0 = the plain reconstruction error.

    Returns:
        () mean over the batch of the per-pose reconstruction error in excess of ``margin``.
    """
    if margin < 0:
        raise ValueError(f"manifold_loss: margin must be >= 0, got {margin}")
    mask = labelled.bool().expand(keypoints.shape[:-1])
    poses = normalize_pose(keypoints, mask)
    frozen = {name: t.detach() for name, t in [*vae.named_parameters(), *vae.named_buffers()]}
    recon, _, _ = torch.func.functional_call(vae, frozen, (poses, mask), {"sample": False})
    return (masked_pose_error(recon, poses, mask) - margin).clamp_min(0.0).mean()


class DomainAdversarialLosses(NamedTuple):
    """FiDIP's two objectives for one batch.

    Attributes:
        classifier: () step I, BCE of the domain classifier on detached features (optimise the classifier).
        pose: () step II, ``pose_loss - lam * confusion`` (optimise the pose network only).
        confusion: () BCE of the classifier on the live features (logged; the term step II maximises).
    """

    classifier: torch.Tensor
    pose: torch.Tensor
    confusion: torch.Tensor


def domain_adversarial_losses(
    classifier: Callable[[torch.Tensor], torch.Tensor] | nn.Module,
    features: torch.Tensor,
    domain_labels: torch.Tensor,
    pose_loss: torch.Tensor,
    *,
    lam: float = 5e-4,
) -> DomainAdversarialLosses:
    """FiDIP baseline (reference/datasets.md §2.7): adversarial feature confusion by alternating updates.

    Step I trains the domain classifier with ``BCEWithLogits`` on *detached* features (the pose network is
    locked); step II trains the pose network with ``pose_loss - lam * BCE(D(features), domain)``. It is
    alternating optimisation, not a gradient-reversal layer: the stage steps the classifier's optimiser on
    ``classifier`` and the pose optimiser on ``pose``. The step-II classifier runs with detached parameters,
    so ``pose.backward()`` leaves the classifier's gradients untouched. FiDIP's code default is ``lam = 5e-4``
    with 10 classifier pre-training epochs; its released HRNet infant config uses ``lam = 0`` (plain
    fine-tuning with balanced real/synthetic sampling).

    Args:
        classifier: domain classifier, features -> (B,) or (B, 1) logits.
        features: backbone features fed to the classifier, e.g. (B, C, h, w).
        domain_labels: (B,) 1 for synthetic, 0 for real (SyRIP's ``is_synthetic``).
        pose_loss: () the supervised pose loss of the same step.
        lam: weight of the confusion term.
    """
    target = domain_labels.to(features.dtype).reshape(-1)
    logits_detached = classifier(features.detach()).reshape(-1)
    classifier_loss = F.binary_cross_entropy_with_logits(logits_detached, target)
    if isinstance(classifier, nn.Module):
        frozen = {
            name: t.detach() for name, t in [*classifier.named_parameters(), *classifier.named_buffers()]
        }
        logits = torch.func.functional_call(classifier, frozen, (features,)).reshape(-1)
    else:
        logits = classifier(features).reshape(-1)
    confusion = F.binary_cross_entropy_with_logits(logits, target)
    return DomainAdversarialLosses(classifier_loss, pose_loss - lam * confusion, confusion.detach())


def bone_length_consistency(
    keypoints_seq: torch.Tensor,
    bones: Sequence[tuple[int, int]] = BODY_BONES,
    *,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Temporal bone-length consistency for test-time adaptation on video.

    Bones keep their length over a clip; the loss is each bone's squared coefficient of variation over time,
    ``var_t(L) / (mean_t(L)^2 + eps)`` (scale-normalised, so a near and a far infant count alike, and the same
    quantity the G-Error metric reports), averaged over bones and clips. Projection foreshortens bones, so
    this is a soft regulariser, not a constraint.

    Args:
        keypoints_seq: (T, K, 2) or (B, T, K, 2) keypoints over time (any pixel frame).
        bones: (i, j) joint index pairs.
        eps: keeps lengths and the ratio finite for coincident joints.

    Returns:
        () loss; 0 for a single frame.
    """
    seq = keypoints_seq if keypoints_seq.dim() == 4 else keypoints_seq.unsqueeze(0)
    i = torch.tensor([b[0] for b in bones], device=seq.device)
    j = torch.tensor([b[1] for b in bones], device=seq.device)
    lengths = torch.sqrt((seq[..., i, :] - seq[..., j, :]).pow(2).sum(-1) + eps)  # (B, T, nb)
    mean = lengths.mean(dim=1)
    var = (lengths - mean.unsqueeze(1)).pow(2).mean(dim=1)
    return (var / (mean.pow(2) + eps)).mean()


def critic_losses(
    depth: torch.Tensor,
    mask_logit: torch.Tensor,
    normals: torch.Tensor,
    target: GeometryMaps,
    inside: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Losses of a depth/normal/mask prediction against rendered targets.

    Args:
        depth: (B, 1, H, W) raw predicted depth (any scale and offset).
        mask_logit: (B, 1, H, W) body logit.
        normals: (B, 3, H, W) unit normals.
        target: rendered maps in the same frame: normalised relative depth, unit normals, valid = body.
        inside: (B, 1, H, W) bool pixels inside the source image (the mask loss ignores the crop's padding).

    Returns:
        ``depth`` (scale-shift-invariant L1 on the body), ``normal`` (mean 1 - cos on the body), ``mask`` (BCE
        inside the image), ``normal_angle_deg`` (mean angular error, for logging); all finite for empty masks.
    """
    body = target.valid.bool()
    n_body = body.sum().clamp_min(1)
    pred_depth = normalize_relative_depth(depth, body)
    depth_loss = ((pred_depth - target.depth).abs() * body).sum() / n_body
    cos = (normals * target.normals).sum(dim=1, keepdim=True).clamp(-1.0, 1.0)
    normal_loss = ((1.0 - cos) * body).sum() / n_body
    angle = (torch.rad2deg(torch.acos(cos.detach().clamp(-1 + 1e-6, 1 - 1e-6))) * body).sum() / n_body
    bce = F.binary_cross_entropy_with_logits(mask_logit, body.float(), reduction="none")
    mask_loss = (bce * inside).sum() / inside.sum().clamp_min(1)
    return {"depth": depth_loss, "normal": normal_loss, "mask": mask_loss, "normal_angle_deg": angle}
