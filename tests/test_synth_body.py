"""The procedural infant: proportions, kinematic tree, joint placement, limits, mirroring and motion."""

from __future__ import annotations

import numpy as np
import pytest

from geosapiens.data.synth.body import (
    COCO17_FROM_NODES,
    FLIP_NODES,
    LANDMARKS,
    NODE_NAMES,
    NUM_NODES,
    PARENTS,
    Body,
    BodyShape,
    euler_to_matrix,
    mirror_angles,
)
from geosapiens.data.synth.motion import POSTURES, sample_motion, sample_pose
from geosapiens.skeleton import COCO17, SMIL25, SMIL25_TO_COCO17

SHAPES = [BodyShape(), BodyShape(0.86, 0.85, 0.92, 0.92), BodyShape(1.1, 1.2, 1.1, 1.08)]


def _inside(posed, p: int, point: np.ndarray) -> float:
    """|u| of ``point`` in ellipsoid ``p``'s unit-sphere frame (< 1 inside)."""
    u = np.linalg.solve(posed.axes[p], point - posed.centres[p])
    return float(np.linalg.norm(u))


def test_tree_holds_the_smil_joints_and_coco_face_points():
    assert NODE_NAMES[:25] == SMIL25.names
    assert NODE_NAMES[25:] == ("left_eye", "right_eye", "left_ear", "right_ear")
    # SMPL kintree: every parent comes before its child; collars and neck hang from spine3 (node 9).
    assert all(PARENTS[i] < i for i in range(1, NUM_NODES))
    assert PARENTS[12] == PARENTS[13] == PARENTS[14] == 9 and PARENTS[16] == 13 and PARENTS[15] == 12
    # COCO-17 from the tree agrees with the MINI-RGBD mapping wherever MINI-RGBD has the joint.
    for coco, smil in enumerate(SMIL25_TO_COCO17):
        if smil >= 0:
            assert COCO17_FROM_NODES[coco] == smil
    assert [NODE_NAMES[n] for n in COCO17_FROM_NODES[1:5]] == list(COCO17.names[1:5])


@pytest.mark.parametrize("shape", SHAPES, ids=["mean", "small", "large"])
def test_infant_proportions(shape):
    """Head about a quarter of crown-heel length; hands and feet below the shoulders/hips; round trunk."""
    body = Body(shape)
    posed = body.pose(np.zeros((NUM_NODES, 3)), np.eye(3), np.zeros(3))
    extent_y = np.linalg.norm(posed.axes[:, 1, :], axis=1)
    crown = (posed.centres[:, 1] + extent_y).max()
    heel = (posed.centres[:, 1] - extent_y).min()
    head = [i for i, r in enumerate(body.prim_region) if r in ("head", "jaw")]
    chin = (posed.centres[head, 1] - extent_y[head]).min()
    length = crown - heel
    assert 0.45 < length < 0.72
    assert 0.21 < (crown - chin) / length < 0.29
    # Limbs are short and chubby: thigh thickness over thigh length well above an adult's ~0.35.
    thigh = body.prim_region.index("thigh")
    assert body.prim_radii[thigh, 1] * 2 / np.linalg.norm(body.rest[4] - body.rest[1]) > 0.5


def test_joints_stay_inside_their_own_bones_in_random_poses():
    rng = np.random.default_rng(0)
    for _ in range(30):
        body = Body(BodyShape.sample(rng))
        pose = sample_pose(body, rng)
        posed = body.pose(pose.angles, pose.root, pose.position)
        for j in range(NUM_NODES):
            if j in LANDMARKS:
                continue
            assert body.own_prims[j], NODE_NAMES[j]
            assert min(_inside(posed, p, posed.nodes[j]) for p in body.own_prims[j]) < 1.0, NODE_NAMES[j]


def test_face_points_lie_on_the_head_surface():
    body = Body()
    posed = body.pose(np.zeros((NUM_NODES, 3)), np.eye(3), np.zeros(3))
    head = body.prim_region.index("head")
    nose = body.prim_region.index("nose")
    ears = [i for i, r in enumerate(body.prim_region) if r == "ear"]
    for eye in (25, 26):
        assert _inside(posed, head, posed.nodes[eye]) == pytest.approx(1.0, abs=1e-9)
    assert _inside(posed, nose, posed.nodes[24]) == pytest.approx(1.0, abs=1e-9)
    for ear in (27, 28):
        assert min(_inside(posed, p, posed.nodes[ear]) for p in ears) == pytest.approx(1.0, abs=1e-9)
    # Face looks forward (+z), eyes above the nose, left eye and ear on the infant's left (+x).
    assert posed.nodes[24, 2] > posed.nodes[25, 2] > 0 and posed.nodes[25, 1] > posed.nodes[24, 1]
    assert posed.nodes[25, 0] > 0 > posed.nodes[26, 0] and posed.nodes[27, 0] > posed.nodes[25, 0]


def test_joint_limits_move_limbs_the_anatomical_way():
    body = Body()
    rest = body.pose(np.zeros((NUM_NODES, 3)), np.eye(3), np.zeros(3)).nodes

    def posed(node: int, angles_deg) -> np.ndarray:
        a = np.zeros((NUM_NODES, 3))
        a[node] = np.deg2rad(angles_deg)
        return body.pose(a, np.eye(3), np.zeros(3)).nodes

    lim = np.rad2deg(body.limits)
    assert lim[4, 0, 0] == 0 and lim[18, 1, 1] == 0  # knees and elbows do not hyperextend
    assert posed(1, (-90, 0, 0))[4, 2] > rest[4, 2] + 0.08  # hip flexion brings the knee forward
    assert posed(4, (90, 0, 0))[7, 2] < rest[7, 2] - 0.08  # knee flexion folds the shin back
    assert posed(18, (0, -90, 0))[20, 2] > rest[20, 2] + 0.06  # elbow flexion: forearm forward
    assert posed(16, (0, 0, 80))[18, 1] > rest[18, 1] + 0.05  # shoulder elevation raises the arm
    # The right side's limits are the mirror of the left's.
    flipped = mirror_angles(body.limits[..., 0])
    assert np.allclose(np.sort(np.stack([flipped, mirror_angles(body.limits[..., 1])], -1), -1), body.limits)


def test_mirrored_pose_gives_mirrored_labelled_joints():
    """Swapping left/right limb angles (y/z negated) mirrors every node, left and right labels swapped."""
    rng = np.random.default_rng(1)
    body = Body(BodyShape.sample(rng))
    pose = sample_pose(body, rng)
    mirrored = pose.mirrored()
    a = body.pose(pose.angles, pose.root, pose.position).nodes
    b = body.pose(mirrored.angles, mirrored.root, mirrored.position).nodes
    M = np.array([-1.0, 1.0, 1.0])
    np.testing.assert_allclose(b[list(FLIP_NODES)] * M, a, atol=1e-12)
    # and the mirrored angles are within the limits whenever the original are.
    assert np.all(body.clip(mirrored.angles) == mirrored.angles)
    assert np.allclose(euler_to_matrix(np.zeros(3)), np.eye(3))


def test_pose_sampler_respects_limits_and_the_posture_mix():
    rng = np.random.default_rng(2)
    body = Body()
    postures = []
    for _ in range(300):
        pose = sample_pose(body, rng)
        postures.append(pose.posture)
        assert np.all(pose.angles >= body.limits[..., 0] - 1e-12) and np.all(
            pose.angles <= body.limits[..., 1] + 1e-12
        )
        posed = body.pose(pose.angles, pose.root, pose.position)
        lowest = (posed.centres[:, 2] - np.linalg.norm(posed.axes[:, 2, :], axis=1)).min()
        assert abs(lowest) < 1e-9  # resting on the floor, nothing below it
    freq = {p: postures.count(p) / len(postures) for p in POSTURES}
    for p, expected in POSTURES.items():
        assert abs(freq[p] - expected) < 0.08, freq
    # Supine bodies face up, prone ones down.
    up = [sample_pose(body, rng, "supine").root[2, 2] for _ in range(10)]
    down = [sample_pose(body, rng, "prone").root[2, 2] for _ in range(10)]
    assert min(up) > 0.8 and max(down) < -0.8


def test_motion_is_smooth_variable_and_within_limits():
    rng = np.random.default_rng(3)
    body = Body()
    poses = sample_motion(body, rng, 100, fps=25.0)
    angles = np.stack([p.angles for p in poses])
    assert np.all(angles >= body.limits[..., 0] - 1e-9) and np.all(angles <= body.limits[..., 1] + 1e-9)
    limbs = [1, 2, 4, 5, 16, 17, 18, 19]
    speed = np.abs(np.diff(angles[:, limbs], axis=0))  # rad per frame
    assert np.rad2deg(speed.max()) < 25.0 and np.rad2deg(np.percentile(speed, 99)) < 10.0  # no jumps
    assert np.rad2deg(angles[:, limbs].std(axis=0)).max() > 5.0  # but the limbs really move
    accel = np.abs(np.diff(angles[:, limbs], 2, axis=0)).mean()
    assert accel < speed.mean()  # smooth: second differences smaller than first
    nodes = np.stack([body.pose(p.angles, p.root, p.position).nodes for p in poses])
    assert np.linalg.norm(np.diff(nodes[:, 0], axis=0), axis=1).max() < 0.01  # the pelvis barely drifts
