"""The ray caster and the labels it produces: exact depth and normals, depth-tested visibility, mirroring."""

from __future__ import annotations

import numpy as np
import pytest

from geosapiens.data.synth.body import COCO17_FROM_NODES, LANDMARKS, NUM_NODES
from geosapiens.data.synth.render import MINI_RGBD_K, Camera, rasterise, ray_hits
from geosapiens.data.synth.scene import Prop, Scene, render_frame, sample_still, stream
from geosapiens.data.synth.styles import Pattern, sample_appearance
from geosapiens.skeleton import COCO17


@pytest.fixture(scope="module")
def frames():
    """Rendered stills of both styles at 640x480, with their scenes."""
    out = []
    for i in range(12):
        ss = np.random.SeedSequence([7, i])
        scene = sample_still(ss, ("synthetic", "real-like")[i % 2], (640, 480))
        out.append((scene, render_frame(scene, stream(ss, "noise"))))
    return out


def test_sphere_depth_normals_and_silhouette_are_exact():
    cam = Camera.mini_rgbd(np.eye(3), np.zeros(3))
    r, z = 0.1, 1.0
    centre = np.array([[0.05, -0.02, z]])
    frags = rasterise(cam, centre, np.eye(3)[None] * r, plane=None)
    # The pixel nearest the sphere centre's projection: depth = front of the sphere along that ray.
    u, v = np.rint(cam.project(centre[0])).astype(int)
    ray = np.array([(u - cam.K[0, 2]) / cam.K[0, 0], (v - cam.K[1, 2]) / cam.K[1, 1], 1.0])
    b, c = ray @ centre[0], centre[0] @ centre[0] - r * r
    t = (b - np.sqrt(b * b - (ray @ ray) * c)) / (ray @ ray)
    assert frags.depth[v, u] == pytest.approx(t, abs=1e-6)
    expected_n = (t * ray - centre[0]) / r
    np.testing.assert_allclose(frags.normals[v, u], expected_n, atol=1e-5)
    # Silhouette area ~ the projected disc (radius f r / sqrt(d^2 - r^2) for a sphere seen head-on).
    d = np.linalg.norm(centre[0])
    f = np.sqrt(cam.K[0, 0] * cam.K[1, 1])
    area = np.pi * (f * r / np.sqrt(d * d - r * r)) ** 2
    assert (frags.prim == 0).sum() == pytest.approx(area, rel=0.03)
    assert np.isinf(frags.depth[0, 0]) and frags.prim[0, 0] == -1


def test_nearest_surface_wins_and_plane_is_analytic():
    cam = Camera.mini_rgbd(np.eye(3), np.zeros(3))
    centres = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 0.7]])
    frags = rasterise(
        cam, centres, np.stack([np.eye(3) * 0.1, np.eye(3) * 0.05]), (np.array([0.0, 0.0, 1.0]), 2.0)
    )
    v, u = int(round(cam.K[1, 2])), int(round(cam.K[0, 2]))
    assert frags.prim[v, u] == 1 and frags.depth[v, u] == pytest.approx(0.65, abs=1e-3)
    assert np.allclose(frags.plane_depth, 2.0)
    hits = ray_hits(np.array([[0.0, 0.0, 1.0]]), centres, np.stack([np.eye(3) * 0.1, np.eye(3) * 0.05]))
    np.testing.assert_allclose(hits, [[0.9, 0.65]], atol=1e-9)


def test_projected_3d_joints_equal_2d_joints(frames):
    for scene, frame in frames:
        uv = (frame.nodes_cam / frame.nodes_cam[:, 2:3]) @ scene.camera.K.T
        np.testing.assert_allclose(uv[:, :2], frame.nodes_2d, atol=1e-9)
    # MINI-RGBD's own intrinsics at 640x480.
    np.testing.assert_allclose(frames[0][0].camera.K, MINI_RGBD_K)


def test_depth_at_unoccluded_joints_is_the_surface_in_front_of_them(frames):
    errors, checked = [], 0
    for _, frame in frames:
        for j in range(NUM_NODES):
            if j in LANDMARKS or not frame.visible[j]:
                continue
            u, v = np.rint(frame.nodes_2d[j]).astype(int)
            window = frame.depth[max(v - 1, 0) : v + 2, max(u - 1, 0) : u + 2]
            if window.max() - window.min() > 15.0:  # a depth edge: the pixel centre may see another part
                continue
            checked += 1
            errors.append(abs(frame.depth[v, u] - 1000.0 * frame.front_depth[j]))
            # the surface is in front of the joint, by less than the thickest body part
            assert 0.0 < frame.nodes_cam[j, 2] - frame.front_depth[j] < 0.15
    assert checked > 100
    assert max(errors) < 5.0 and np.median(errors) < 1.0, (max(errors), np.median(errors))


def test_normals_are_unit_and_face_the_camera(frames):
    for scene, frame in frames:
        on = frame.mask.astype(bool)
        n = frame.normals[on]
        np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)
        assert not frame.normals[~on].any() and not frame.body_depth[~on].any()
        xs, ys = scene.camera.rays()
        vv, uu = np.nonzero(on)
        rays = np.stack([xs[uu], ys[vv], np.ones(len(uu))], 1)
        assert (np.einsum("ni,ni->n", n, rays) < 1e-6).all()  # n . view direction < 0: facing the camera
        np.testing.assert_array_equal(frame.body_depth[on], frame.depth[on])


def test_visibility_comes_from_the_depth_test():
    """A prop put in front of the face hides the face points; without it the same face points are visible."""
    ss = np.random.SeedSequence([11])
    scene = sample_still(ss, "synthetic", (640, 480))
    # Look straight down at a supine infant so the face is seen.
    from geosapiens.data.synth.motion import place_on_floor, sample_pose

    pose = sample_pose(scene.body, np.random.default_rng(0), "supine", yaw=0.0)
    pose.angles[12] = pose.angles[15] = 0.0
    pose = place_on_floor(scene.body, pose)
    posed = scene.body.pose(pose.angles, pose.root, pose.position)
    R, pos = Camera.orbit(posed.nodes[9], 0.8, 0.0, np.pi / 2)
    cam = Camera.mini_rgbd(R, pos)
    app = sample_appearance("synthetic", np.random.default_rng(0), pos - posed.nodes[0])
    base = render_frame(Scene(scene.body, pose, cam, app), np.random.default_rng(0))
    face = [24, 25, 26]
    assert base.visible[face].all()
    screen = Prop(
        posed.nodes[24] + np.array([0.0, 0.0, 0.1]),
        np.diag([0.08, 0.08, 0.01]),
        Pattern("plain", np.ones((1, 3))),
    )
    hidden = render_frame(Scene(scene.body, pose, cam, app, [screen]), np.random.default_rng(0))
    assert not hidden.visible[face].any()
    assert hidden.mask.sum() < base.mask.sum()
    # the 2D/3D labels do not change: occluded joints keep their positions
    np.testing.assert_allclose(hidden.nodes_2d, base.nodes_2d)


def test_mirrored_body_gives_mirrored_image_and_labels():
    """Flip left and right limbs (and the camera about the same plane): mask mirrors, labels swap sides."""
    ss = np.random.SeedSequence([5])
    scene = sample_still(ss, "synthetic", (320, 240))
    W, H = 320, 240
    K = np.array([[300.0, 0.0, (W - 1) / 2], [0.0, 300.0, (H - 1) / 2], [0.0, 0.0, 1.0]])
    # Camera in the world plane x = 0, looking at the pelvis from the side and above.
    pose = scene.pose
    pose.position = pose.position * np.array([0.0, 1.0, 1.0])
    R, pos = Camera.orbit(np.array([0.0, pose.position[1], 0.05]), 0.9, np.pi / 2, np.deg2rad(60))
    cam = Camera(K, W, H, R, pos)
    assert abs(pos[0]) < 1e-12
    a = render_frame(Scene(scene.body, pose, cam, scene.appearance), np.random.default_rng(0))
    b = render_frame(Scene(scene.body, pose.mirrored(), cam, scene.appearance), np.random.default_rng(0))
    flipped = b.mask[:, ::-1].astype(bool)
    iou = (flipped & a.mask.astype(bool)).sum() / (flipped | a.mask.astype(bool)).sum()
    assert iou > 0.97
    coco = list(COCO17_FROM_NODES)
    ka, kb = a.nodes_2d[coco], b.nodes_2d[coco][list(COCO17.flip_indices)]
    np.testing.assert_allclose(kb[:, 0], (W - 1) - ka[:, 0], atol=1e-6)
    np.testing.assert_allclose(kb[:, 1], ka[:, 1], atol=1e-6)
    np.testing.assert_array_equal(b.visible[coco][list(COCO17.flip_indices)], a.visible[coco])
