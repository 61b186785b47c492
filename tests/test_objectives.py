"""The label-free objective: keypoints that see the prediction, mirrored views mapped to the right joints,
off-body joints pulled back by a gradient, and one registry both callers share."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geosapiens.affine import apply_affine, is_mirror
from geosapiens.data.augment import ViewAugment, flip_channels
from geosapiens.data.crop import view_to_canonical
from geosapiens.data.datasets import PairDataset
from geosapiens.data.formats.syrip import read_syrip
from geosapiens.losses import objectives
from geosapiens.models.codec import UDPHeatmapCodec
from geosapiens.models.critics import GeometryMaps
from geosapiens.models.geometry import body_distance
from geosapiens.skeleton import COCO17

INPUT_HW, HEATMAP_HW = (96, 96), (24, 24)  # the demo's crop and heatmaps


def weak_heatmaps(points_px: torch.Tensor, codec: UDPHeatmapCodec, seed: int = 0) -> torch.Tensor:
    """What a warm-up network gives on real-like crops: Gaussians peaking at 0.2 over a 0.03 background
    with a little noise (the demo's median peak is 0.19)."""
    hm, _ = codec.encode(points_px, torch.ones(points_px.shape[:2]))
    g = torch.Generator().manual_seed(seed)
    return 0.2 * hm + 0.03 + 0.01 * torch.rand(hm.shape, generator=g)


def test_label_free_keypoints_of_a_weak_heatmap_lie_at_its_argmax():
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    g = torch.Generator().manual_seed(3)
    points = torch.rand(4, 17, 2, generator=g) * 79.0 + 8.0  # anywhere 2 heatmap px inside the crop
    hm = weak_heatmaps(points, codec)
    found = objectives.label_free_keypoints(hm, codec)
    assert (found - points).norm(dim=-1).max() < 1.0  # input px, from the peak's true position
    # the old reading (raw softmax at T = 0.05) is dragged towards the crop centre by the background
    raw = codec.soft_argmax(hm, temperature=0.05)
    assert (raw - points).norm(dim=-1).median() > 5.0

    # the gradient still moves the keypoints: a pull to the right shifts every estimate right, a little
    logits = hm.clone().requires_grad_(True)
    objectives.label_free_keypoints(logits, codec)[..., 0].sum().neg().backward()
    assert torch.isfinite(logits.grad).all()
    with torch.no_grad():
        moved = objectives.label_free_keypoints(logits - 1e-3 * logits.grad / logits.grad.abs().max(), codec)
    shift = moved[..., 0] - found[..., 0]
    assert (shift > 0).all() and (shift < 2.0).all()


def test_flipped_view_channel_k_lands_on_joint_k_in_the_canonical_frame(syrip_sample):
    """Through the real pair dataset: a mirrored strong view relabels its joints left <-> right; reading its
    heatmaps back into the canonical frame must put channel k on joint k, not on its mirror."""
    records = [r for r in read_syrip(syrip_sample, "annotations/200R/person_keypoints_train_infant.json")]
    records = records[:4]
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    mirrored = ViewAugment(flip_prob=1.0, rotation_prob=1.0)
    data = PairDataset(records, INPUT_HW, weak=ViewAugment(flip_prob=1.0), strong=mirrored)
    samples = [data[i] for i in range(len(records))]
    assert all(is_mirror(s["strong_affine"]) for s in samples)
    strong_affine = torch.stack([s["strong_affine"] for s in samples])
    canonical_affine = torch.stack([s["canonical_affine"] for s in samples])
    views, truth, labelled = [], [], []
    for r, s in zip(records, samples, strict=True):
        kp = np.asarray(r.keypoints, dtype=np.float64)
        in_view, lab = flip_channels(True, apply_affine(kp, s["strong_affine"].double().numpy()), r.labelled)
        views.append(torch.from_numpy(in_view).float())
        truth.append(torch.from_numpy(apply_affine(kp, s["canonical_affine"].double().numpy())).float())
        labelled.append(torch.from_numpy(np.asarray(r.labelled, bool)))
    heatmaps, _ = codec.encode(torch.stack(views), torch.ones(len(records), 17))
    maps = GeometryMaps(
        torch.zeros(4, 1, 24, 24), torch.zeros(4, 3, 24, 24), torch.ones(4, 1, 24, 24, dtype=torch.bool)
    )
    inputs = objectives.prepare_inputs(
        heatmaps, codec, maps=maps, view_to_maps=view_to_canonical(canonical_affine, strong_affine)
    )
    canonical = inputs.uv * torch.tensor([INPUT_HW[1] - 1.0, INPUT_HW[0] - 1.0])
    truth, labelled = torch.stack(truth), torch.stack(labelled)
    inside = ((truth >= 4) & (truth <= 91)).all(-1) & labelled  # clear of the crop border
    assert inside.sum() > 30
    error = (canonical - truth).norm(dim=-1)[inside]
    assert error.max() < 1.5  # input px: the joint itself
    mirror = (canonical[:, list(COCO17.flip_indices)] - truth).norm(dim=-1)[inside]
    assert mirror.median() > 5.0  # what channel k would hit without the swap: the mirror joint


def body_scene(size: int = 24) -> GeometryMaps:
    """A lying body: an upright ellipse in the middle of the canonical crop, flat depth, camera-facing."""
    t = torch.arange(size, dtype=torch.float32) / (
        size - 1
    )  # uv of the pixel centres: the same body at any size
    v, u = torch.meshgrid(t, t, indexing="ij")
    body = (((u - 0.5) / 0.22) ** 2 + ((v - 0.5) / 0.42) ** 2) < 1.0
    valid = body[None, None]
    normals = torch.zeros(1, 3, size, size)
    normals[:, 2] = -1.0
    return GeometryMaps(torch.zeros(1, 1, size, size), normals * valid, valid, body_distance(valid))


def pose_on_body() -> torch.Tensor:
    """(1, 17, 2) a symmetric pose inside the body ellipse, input px of the 96 px crop."""
    cx = 47.5
    rows = {
        0: 14,
        1: 12,
        2: 12,
        3: 13,
        4: 13,
        5: 26,
        6: 26,
        7: 38,
        8: 38,
        9: 48,
        10: 48,
        11: 52,
        12: 52,
        13: 66,
        14: 66,
        15: 80,
        16: 80,
    }
    dx = {
        0: 0,
        1: 3,
        2: -3,
        3: 6,
        4: -6,
        5: 10,
        6: -10,
        7: 12,
        8: -12,
        9: 11,
        10: -11,
        11: 7,
        12: -7,
        13: 8,
        14: -8,
        15: 7,
        16: -7,
    }
    return torch.tensor([[[cx + dx[k], float(rows[k])] for k in range(17)]])


def configured_objective(heatmaps: torch.Tensor, codec: UDPHeatmapCodec, maps: GeometryMaps):
    weights = {"geo_body": 1.0, "geo_depth": 0.1, "geo_norm": 0.1}
    prior = (torch.tensor([[0.0, 0.0, -1.0]]).expand(17, 3), torch.ones(17))
    inputs = objectives.prepare_inputs(heatmaps, codec, maps=maps, normal_prior=prior)
    terms = objectives.label_free_objective(inputs, weights)
    return objectives.weighted_sum(terms, weights), inputs, terms


def test_a_joint_moved_off_the_body_raises_the_objective_and_its_gradient_points_back():
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    maps = body_scene()
    on = pose_on_body()
    lw = COCO17.index("left_wrist")
    off = on.clone()
    off[0, lw] = torch.tensor([80.0, 48.0])  # 11.6 px (0.12 image units) right of the body's edge
    on_total, _, _ = configured_objective(codec.encode(on, torch.ones(1, 17))[0], codec, maps)

    heatmaps = codec.encode(off, torch.ones(1, 17))[0].requires_grad_(True)
    total, inputs, terms = configured_objective(heatmaps, codec, maps)
    # the wrist is ~0.12 image units off the body: geo_body is that over the 17 joints; the depth and normal
    # terms gate the wrist off (they can only go silent), so the rise is geo_body's
    assert total.item() > 0.1 / 17 > 10 * on_total.item()  # on the body: ~0 (bilinear edges of 24 px maps)
    assert terms["geo_body"].item() == pytest.approx(total.item(), rel=1e-3)
    # the gradient on the wrist's keypoint points back to the body (-x): descent moves it left, onto it
    (grad,) = torch.autograd.grad(total, inputs.keypoints, retain_graph=True)
    assert grad[0, lw, 0] > 0 and abs(float(grad[0, lw, 1])) < 0.2 * float(grad[0, lw, 0])
    # and a step on the heatmaps themselves moves the predicted wrist towards the body
    (hm_grad,) = torch.autograd.grad(total, heatmaps)
    stepped = objectives.label_free_keypoints(heatmaps.detach() - 0.05 * hm_grad / hm_grad.abs().max(), codec)
    assert stepped[0, lw, 0] < inputs.keypoints[0, lw, 0].detach() - 0.1


def test_body_distance_is_metric_and_resolution_free():
    from geosapiens.losses.functional import sample_maps

    uv = torch.tensor([[[0.5 + 0.22 + 0.2, 0.5]]])  # 0.2 image units right of the body's edge
    full = float(sample_maps(body_scene(96).body_distance, uv)[0, 0, 0])
    coarse = float(sample_maps(body_scene(24).body_distance, uv)[0, 0, 0])
    assert full == pytest.approx(0.2, abs=1.5 / 95) and coarse == pytest.approx(0.2, abs=1.5 / 23)
    assert body_distance(torch.zeros(1, 1, 8, 8, dtype=torch.bool)).abs().sum() == 0  # no body, no pull


def test_terms_are_a_registry_that_names_what_is_missing():
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    inputs = objectives.prepare_inputs(codec.encode(pose_on_body(), torch.ones(1, 17))[0], codec)
    assert {"geo_body", "geo_depth", "geo_norm", "manifold", "temporal"} <= set(objectives.TERMS)
    with pytest.raises(ValueError, match="geo_depth.*maps"):
        objectives.label_free_objective(inputs, {"geo_depth": 0.1})
    with pytest.raises(ValueError, match="no label-free term 'geo_nope'"):
        objectives.label_free_objective(inputs, {"geo_nope": 1.0})
    assert objectives.label_free_objective(inputs, {"geo_depth": 0.0}) == {}  # unweighted: not computed

    @objectives.register_term("test_spread", needs=("spread_target",))
    def spread(inp):  # a new term reads its own input from ``extras``
        return (inp.keypoints.std(dim=1).mean() - inp.extras["spread_target"]).abs()

    try:
        with_extra = objectives.prepare_inputs(
            inputs.heatmaps, codec, extras={"spread_target": torch.tensor(10.0)}
        )
        out = objectives.label_free_objective(with_extra, {"test_spread": 1.0})
        assert math.isfinite(out["test_spread"].item())
    finally:
        del objectives.TERMS["test_spread"]


def test_lambda_z_comes_from_the_critic_unless_set():
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    hm = codec.encode(pose_on_body().expand(2, -1, -1), torch.ones(2, 17))[0]
    measured = torch.tensor([4e-3, 9e-3])
    assert torch.equal(objectives.prepare_inputs(hm, codec, lambda_z=measured).lambda_z, measured)
    default = objectives.prepare_inputs(hm, codec).lambda_z
    assert torch.allclose(default, torch.full((2,), objectives.DEFAULT_LAMBDA_Z))
    options = objectives.ObjectiveOptions().override(lambda_z=1e-2)
    assert torch.allclose(
        objectives.prepare_inputs(hm, codec, lambda_z=measured, options=options).lambda_z,
        torch.full((2,), 1e-2),
    )
    with pytest.raises(ValueError, match="no option"):
        objectives.ObjectiveOptions().override(temprature=0.1)


class _FixedPose(torch.nn.Module):
    """A geometry teacher whose heatmaps are known: Gaussians at fixed canonical keypoints."""

    def __init__(self, heatmaps: torch.Tensor, input_size: tuple[int, int] = INPUT_HW, confidence=None):
        super().__init__()
        self.heatmaps = heatmaps
        self.input_size = input_size
        self.confidence = confidence

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heatmaps.expand(x.shape[0], -1, -1, -1) if len(self.heatmaps) == 1 else self.heatmaps


def test_geometry_pseudo_labels_land_on_the_right_joint_of_a_mirrored_view_and_pull_toward_it():
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    g = torch.Generator().manual_seed(5)
    canonical = torch.rand(1, 17, 2, generator=g) * 70.0 + 13.0
    teacher = _FixedPose(codec.encode(canonical, torch.ones(1, 17))[0])
    H, W = INPUT_HW
    maps = GeometryMaps(
        torch.zeros(2, 1, H, W), torch.zeros(2, 3, H, W), torch.ones(2, 1, H, W, dtype=torch.bool)
    )
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    mirror = torch.tensor([[-1.0, 0.0, W - 1.0], [0.0, 1.0, 0.0]])
    options = objectives.ObjectiveOptions().override(geo_pose_threshold=0.5)
    keypoints, keep = objectives.geometry_teacher_keypoints(teacher, maps, codec, options)
    labels = objectives.geometry_pseudo_labels(
        keypoints, keep, torch.stack([identity, mirror]), codec, options
    )
    flip = list(COCO17.flip_indices)
    expected_mirrored = canonical[0, flip] * torch.tensor([-1.0, 1.0]) + torch.tensor([W - 1.0, 0.0])
    assert (labels["geo_keypoints"][0] - canonical[0]).norm(dim=-1).max() < 0.5
    assert (labels["geo_keypoints"][1] - expected_mirrored).norm(dim=-1).max() < 0.5
    assert labels["geo_keep"].all()

    # the term is 0 at the pseudo-labels and pulls a displaced pose back, however far it is
    def geo_pose(kp: torch.Tensor) -> torch.Tensor:
        inputs = objectives.prepare_inputs(
            codec.encode(kp.detach(), torch.ones(kp.shape[:2]))[0], codec, extras=labels, keypoints=kp
        )
        return objectives.label_free_objective(inputs, {"geo_pose": 1.0})["geo_pose"]

    assert float(geo_pose(labels["geo_keypoints"].clone())) < 1e-3
    for shift in (5.0, 40.0):  # input px: overlapping and no longer overlapping Gaussians
        kp = (labels["geo_keypoints"] + shift).requires_grad_(True)
        geo_pose(kp).backward()
        toward = (kp.grad * (kp.detach() - labels["geo_keypoints"])).sum(-1)  # -grad points back
        assert (toward > 0).all()


def test_a_geometry_teacher_at_a_smaller_crop_gives_keypoints_in_the_models_crop():
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    small = UDPHeatmapCodec((64, 64), (16, 16))
    canonical = torch.rand(1, 17, 2, generator=torch.Generator().manual_seed(2)) * 55.0 + 20.0
    at_small = canonical * (63 / 95)  # the same points on the teacher's grid (UDP: pixel centres align)
    teacher = _FixedPose(small.encode(at_small, torch.ones(1, 17))[0], input_size=(64, 64))
    H, W = INPUT_HW
    maps = GeometryMaps(torch.zeros(1, 1, H, W), torch.zeros(1, 3, H, W), torch.ones(1, 1, H, W, dtype=bool))
    options = objectives.ObjectiveOptions().override(geo_pose_threshold=0.5)
    keypoints, keep = objectives.geometry_teacher_keypoints(teacher, maps, codec, options)
    assert keep.all() and (keypoints - canonical).norm(dim=-1).max() < 1.0  # 2/3 px on the teacher's grid


def test_an_image_the_geometry_teacher_is_unsure_of_gives_no_pseudo_label():
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    points = torch.rand(1, 17, 2, generator=torch.Generator().manual_seed(3)) * 70.0 + 13.0
    sure = codec.encode(points, torch.ones(1, 17))[0]  # every peak 1
    # the second image: every peak 0.3; on its validation images the teacher's peaks averaged 0.8
    teacher = _FixedPose(torch.cat([sure, 0.3 * sure]), confidence=0.8)
    H, W = INPUT_HW
    maps = GeometryMaps(torch.zeros(2, 1, H, W), torch.zeros(2, 3, H, W), torch.ones(2, 1, H, W, dtype=bool))
    options = objectives.ObjectiveOptions()
    _, keep = objectives.geometry_teacher_keypoints(teacher, maps, codec, options)
    assert keep.all()  # each joint's peak clears geo_pose_threshold (0.2)
    gated = options.override(geo_image_confidence=0.5)  # 0.3 < 0.5 x 0.8 <= 1
    _, keep = objectives.geometry_teacher_keypoints(teacher, maps, codec, gated)
    assert keep[0].all() and not keep[1].any()
    teacher.confidence = None  # a checkpoint that does not record it
    with pytest.raises(ValueError, match="validation confidence"):
        objectives.geometry_teacher_keypoints(teacher, maps, codec, gated)


class _Counting(_FixedPose):
    def __init__(self, heatmaps: torch.Tensor):
        super().__init__(heatmaps)
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return super().forward(x)


def test_the_geometry_teacher_runs_once_per_cached_target_image():
    from geosapiens.stages import MeanTeacherAdaptation

    stage = MeanTeacherAdaptation(
        backbone="timm:regnetx_002",
        backbone_kwargs={"output_stride": 16},
        input_size=INPUT_HW,
        loss_terms={"manifold": {"weight": 0.0}, "geo_norm": {"weight": 0.0}},
    )
    codec = stage.codec
    points = torch.rand(1, 17, 2, generator=torch.Generator().manual_seed(1)) * 70.0 + 13.0
    stage.geometry_teacher = _Counting(codec.encode(points, torch.ones(1, 17))[0])
    H, W = INPUT_HW
    maps = GeometryMaps(
        torch.zeros(3, 1, H, W), torch.zeros(3, 3, H, W), torch.ones(3, 1, H, W, dtype=torch.bool)
    )
    target = {"critic_maps": torch.zeros(3), "image_path": ["a.jpg", "b.jpg", "a.jpg"]}
    first = stage.geometry_keypoints(target, maps)
    target["image_path"] = ["b.jpg", "c.jpg", "a.jpg"]
    second = stage.geometry_keypoints(target, maps)
    assert stage.geometry_teacher.images == 3 + 1  # a, b, (a again) in the first batch; only c in the second
    assert torch.equal(first[0][1], second[0][0]) and (second[0] - points).norm(dim=-1).max() < 0.5
    del target["critic_maps"]  # an online critic's maps follow the view: computed every time
    stage.geometry_keypoints(target, maps)
    assert stage.geometry_teacher.images == 7


def test_heatmap_pseudo_labels_move_a_misplaced_peak_where_the_point_form_cannot():
    """``geo_heatmap`` trains the heatmap itself: a joint whose peak sits far from its pseudo-label is rebuilt
    there. ``geo_pose`` reads the heatmap through the windowed soft-argmax, so its gradient only reaches the
    pixels around the current peak, and the argmax stays where it was."""
    codec = UDPHeatmapCodec(INPUT_HW, HEATMAP_HW)
    labels_at = torch.tensor([[[20.0, 20.0]]]).expand(1, 17, 2).clone()  # input px
    labels = objectives.geometry_pseudo_labels(
        labels_at, torch.ones(1, 17, dtype=torch.bool), None, codec, objectives.ObjectiveOptions()
    )
    wrong = torch.tensor([[[70.0, 70.0]]]).expand(1, 17, 2)  # 50 * sqrt(2) px away: no overlap
    moved = {}
    for term in objectives.TEACHER_TERMS:
        heatmaps = codec.encode(wrong, torch.ones(1, 17))[0].clone().requires_grad_(True)
        optimiser = torch.optim.Adam([heatmaps], lr=0.02)
        for _ in range(100):
            optimiser.zero_grad()
            inputs = objectives.prepare_inputs(heatmaps, codec, extras=labels)
            objectives.label_free_objective(inputs, {term: 1.0})[term].backward()
            optimiser.step()
        moved[term] = float((codec.decode(heatmaps.detach())[0] - labels_at).norm(dim=-1).max())
    assert moved["geo_heatmap"] < 2.0, moved  # within half a heatmap px (stride 4)
    assert moved["geo_pose"] > 40.0, moved
