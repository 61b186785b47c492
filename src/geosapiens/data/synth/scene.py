"""A scene (infant + floor + props + camera + look) and its rendering to one labelled frame.

Labels come from the same geometry as the pixels: 3D joints in the camera frame, their exact projection,
and a per-joint visibility from a depth test along the joint's own ray (see :func:`joint_visibility`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from geosapiens.data.synth.body import (
    COCO17_FROM_NODES,
    LANDMARKS,
    NUM_NODES,
    Body,
    BodyShape,
    PosedBody,
    frame_along,
)
from geosapiens.data.synth.motion import Pose, sample_motion, sample_pose
from geosapiens.data.synth.render import Camera, Fragments, rasterise, ray_hits, soft_min
from geosapiens.data.synth.styles import (
    ARM_REGIONS,
    Appearance,
    Pattern,
    finish,
    paint_floor,
    sample_appearance,
    shade,
)

__all__ = [
    "Prop",
    "Scene",
    "RenderedFrame",
    "stream",
    "sample_still",
    "sample_sequence",
    "render_frame",
    "joint_visibility",
]

_LANDMARK_TOLERANCE = 0.004  # metres: a surface landmark is visible when nothing lies this far in front of it
_SKIN_WRAP = 0.35
_BLEND = 0.005  # metres: smooth-union width of the body's ellipsoids


@dataclass
class Prop:
    """A non-infant ellipsoid (toy, adult hand, blanket) in world coordinates, with its pattern."""

    centre: np.ndarray
    axes: np.ndarray
    pattern: Pattern
    skin: bool = False


@dataclass
class Scene:
    """Everything needed to render one frame."""

    body: Body
    pose: Pose
    camera: Camera
    appearance: Appearance
    props: list[Prop] = field(default_factory=list)


@dataclass
class RenderedFrame:
    """One rendered, labelled frame.

    Shapes: N = NUM_NODES (25 SMIL joints + 4 face points), image H x W.

    Attributes:
        rgb: (H, W, 3) uint8 RGB.
        depth: (H, W) float32 camera z in mm of whatever the pixel sees (infant, props, floor), 0 = nothing.
        body_depth: (H, W) float32 mm on the infant, 0 elsewhere.
        normals: (H, W, 3) float32 camera-frame unit normals on the infant, 0 elsewhere.
        mask: (H, W) uint8, 1 on the infant.
        nodes_cam: (N, 3) camera-frame node positions (metres).
        nodes_2d: (N, 2) their projections (pixels, centres at integers).
        visible: (N,) bool: in front of everything along its ray (and inside the image).
        in_image: (N,) bool: the projection falls inside the image.
        front_depth: (N,) metres: depth of the infant surface in front of each node along its ray.
    """

    rgb: np.ndarray
    depth: np.ndarray
    body_depth: np.ndarray
    normals: np.ndarray
    mask: np.ndarray
    nodes_cam: np.ndarray
    nodes_2d: np.ndarray
    visible: np.ndarray
    in_image: np.ndarray
    front_depth: np.ndarray


_STREAMS = ("shape", "pose", "camera", "look", "props", "noise")


def stream(seed_seq: np.random.SeedSequence, name: str) -> np.random.Generator:
    """The generator of one concern of a scene (shape, pose, camera, look, props, noise).

    Children are derived from the seed's entropy and spawn key without mutating it (unlike
    ``SeedSequence.spawn``), so the same seed always gives the same streams and a scene can be re-rendered
    in the other style with the same infant, pose and camera.
    """
    child = np.random.SeedSequence(seed_seq.entropy, spawn_key=(*seed_seq.spawn_key, _STREAMS.index(name)))
    return np.random.default_rng(child)


def _streams(seed_seq: np.random.SeedSequence) -> dict[str, np.random.Generator]:
    return {n: stream(seed_seq, n) for n in _STREAMS}


def _coco_in_view(camera: Camera, posed: PosedBody, needed: int) -> bool:
    pts = camera.to_camera(posed.nodes[list(COCO17_FROM_NODES)])
    if (pts[:, 2] < 0.1).any():
        return False
    uv = camera.project(pts)
    inside = (
        (uv[:, 0] >= 0) & (uv[:, 0] <= camera.width - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= camera.height - 1)
    )
    return int(inside.sum()) >= needed


def _frame_camera(
    rng: np.random.Generator,
    posed: PosedBody,
    size: tuple[int, int],
    elevation: tuple[float, float],
    fill: tuple[float, float],
    roll: float,
    azimuth: float | None = None,
    needed: int = 15,
) -> Camera:
    """A camera that sees the infant at a random elevation, azimuth and fill of the image, mostly in frame."""
    W, H = size
    centre = 0.5 * (posed.centres.min(0) + posed.centres.max(0))
    extent = float(np.linalg.norm(posed.centres.max(0) - posed.centres.min(0))) + 0.05
    camera = None
    for _ in range(20):
        el = np.deg2rad(rng.uniform(*elevation))
        az = rng.uniform(-np.pi, np.pi) if azimuth is None else azimuth + rng.normal(0, np.deg2rad(12))
        frac = rng.uniform(*fill)
        base = Camera.mini_rgbd(np.eye(3), np.zeros(3), W, H)
        dist = base.K[1, 1] * extent / (frac * min(W, H))
        target = centre + rng.normal(0, 0.08 * extent, 3) * np.array([1, 1, 0.3])
        R, pos = Camera.orbit(target, dist, az, el, rng.normal(0, np.deg2rad(roll)))
        camera = Camera.mini_rgbd(R, pos, W, H)
        if _coco_in_view(camera, posed, needed):
            break
    return camera


def _props(rng: np.random.Generator, posed: PosedBody, app: Appearance) -> list[Prop]:
    """Toys on the floor, sometimes an adult hand reaching in, sometimes a blanket over the legs."""
    props: list[Prop] = []
    pelvis = posed.nodes[0]
    for _ in range(int(rng.integers(0, 4))):
        r = rng.uniform(0.02, 0.07) * np.array([1.0, rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.0)])
        ang, dist = rng.uniform(-np.pi, np.pi), rng.uniform(0.18, 0.45)
        centre = pelvis + np.array([dist * np.cos(ang), dist * np.sin(ang), 0.0])
        centre[2] = r[2]
        props.append(
            Prop(
                centre,
                np.diag(r),
                Pattern.sample(rng, 3, "saturated", ("plain", "stripes", "dots"), period=(0.01, 0.03)),
            )
        )
    if rng.random() < 0.2:  # adult forearm + hand from outside, above the infant
        target = posed.nodes[int(rng.choice([0, 3, 9, 15]))] + np.array([0.0, 0.0, rng.uniform(0.06, 0.15)])
        ang = rng.uniform(-np.pi, np.pi)
        d = np.array([np.cos(ang), np.sin(ang), rng.uniform(0.1, 0.5)])
        d /= np.linalg.norm(d)
        skin = Pattern("plain", (np.array([0.9, 0.7, 0.6]) * rng.uniform(0.5, 1.1))[None].clip(0, 1))
        for offset, radii in ((0.05, (0.05, 0.035, 0.018)), (0.17, (0.12, 0.035, 0.032))):
            c = target + d * offset
            props.append(Prop(c, frame_along(d) * np.array(radii), skin, skin=True))
    if rng.random() < 0.15:  # blanket over the legs, resting on them
        knees = 0.5 * (posed.nodes[4] + posed.nodes[5])
        top = float((posed.centres[:, 2] + np.linalg.norm(posed.axes[:, 2, :], axis=1)).max())
        radii = np.array([rng.uniform(0.12, 0.2), rng.uniform(0.12, 0.2), rng.uniform(0.012, 0.025)])
        centre = np.array([knees[0], knees[1], min(top, knees[2] + 0.05) + radii[2] * 0.5])
        ang = rng.uniform(-np.pi, np.pi)
        rot = np.array([[np.cos(ang), -np.sin(ang), 0], [np.sin(ang), np.cos(ang), 0], [0, 0, 1.0]])
        pattern = app.floor if rng.random() < 0.5 or not app.patches else app.patches[0][1]
        props.append(Prop(centre, rot * radii, pattern))
    return props


def sample_still(
    seed_seq: np.random.SeedSequence,
    style: str,
    size: tuple[int, int] = (640, 480),
    camera_style: str | None = None,
) -> Scene:
    """A random still: infant shape, posture mix pose, oblique or top-down camera, look of ``style``.

    ``camera_style`` (default ``style``) picks the camera ranges, so the same scene can be re-rendered in
    the other style (the contact sheet does).
    """
    rng = _streams(seed_seq)
    body = Body(BodyShape.sample(rng["shape"]))
    pose = sample_pose(body, rng["pose"])
    posed = body.pose(pose.angles, pose.root, pose.position)
    real_cam = (camera_style or style) == "real-like"
    if pose.posture == "sitting":
        elevation = (5.0, 50.0) if real_cam else (10.0, 40.0)
    else:
        elevation = (25.0, 90.0) if real_cam else (45.0, 90.0)
    fill = (0.35, 0.9) if real_cam else (0.5, 0.8)
    camera = _frame_camera(rng["camera"], posed, size, elevation, fill, roll=15.0 if real_cam else 5.0)
    headlight = camera.position - posed.nodes[0]
    app = sample_appearance(style, rng["look"], headlight)
    props = _props(rng["props"], posed, app) if style == "real-like" else []
    return Scene(body, pose, camera, app, props)


def sample_sequence(
    seed_seq: np.random.SeedSequence, style: str, num_frames: int, fps: float = 25.0
) -> list[Scene]:
    """A MINI-RGBD-like sequence: one infant, supine, moving; a fixed top-down camera; fixed look."""
    rng = _streams(seed_seq)
    body = Body(BodyShape.sample(rng["shape"]))
    poses = sample_motion(body, rng["pose"], num_frames, fps)
    posed = [body.pose(p.angles, p.root, p.position) for p in poses[:: max(1, num_frames // 8)]]
    union = PosedBody(
        nodes=np.concatenate([p.nodes for p in posed]),
        rotations=posed[0].rotations,
        centres=np.concatenate([p.centres for p in posed]),
        axes=np.concatenate([p.axes for p in posed]),
    )
    head_dir = poses[0].root[:, 1]
    azimuth = float(np.arctan2(head_dir[1], head_dir[0]) + np.pi)  # head towards the top of the image
    camera = _frame_camera(
        rng["camera"], union, (640, 480), (80.0, 90.0), (0.55, 0.8), roll=3.0, azimuth=azimuth, needed=17
    )
    app = sample_appearance(style, rng["look"], camera.position - posed[0].nodes[0])
    props = _props(rng["props"], posed[0], app) if style == "real-like" else []
    props = [p for p in props if not p.skin]  # a hand hovering still for a whole video looks wrong
    return [Scene(body, pose, camera, app, props) for pose in poses]


def joint_visibility(
    body: Body,
    nodes_cam: np.ndarray,
    centres: np.ndarray,
    axes: np.ndarray,
    num_body: int,
    plane: tuple[np.ndarray, float],
    blend: float = _BLEND,
) -> tuple[np.ndarray, np.ndarray]:
    """Depth test of every node along its own camera ray.

    An internal joint is visible when the first surface its ray meets belongs to the joint's own bones
    (the surface just in front of it); a surface landmark (nose, eyes, ears) is visible when nothing lies
    more than a few millimetres in front of it. Props and the floor occlude like the body does.

    Returns:
        visible: (N,) bool.
        front_depth: (N,) metres, the (soft-blended, as rendered) infant surface met first along each node's
            ray: for a visible node, the surface the depth map shows at its pixel.
    """
    hits = ray_hits(nodes_cam, centres, axes)
    n, d = plane
    rays = nodes_cam / nodes_cam[:, 2:3]
    with np.errstate(divide="ignore"):
        t_plane = d / (rays @ n)
    t_plane = np.where(t_plane > 0, t_plane, np.inf)
    first = np.minimum(hits.min(axis=1), t_plane)
    visible = np.zeros(NUM_NODES, bool)
    for j in range(NUM_NODES):
        if j in LANDMARKS:
            visible[j] = first[j] >= nodes_cam[j, 2] - _LANDMARK_TOLERANCE
        else:
            visible[j] = first[j] >= hits[j, list(body.own_prims[j])].min() - 1e-6
    front = soft_min(
        np.where(
            hits[:, :num_body] - hits[:, :num_body].min(1, keepdims=True) < 6 * blend,
            hits[:, :num_body],
            np.inf,
        ),
        blend,
    )
    return visible, front


def _face_and_hair(scene: Scene, q: np.ndarray, regions: np.ndarray, albedo: np.ndarray) -> None:
    """Paint eyes, mouth and hair on head pixels (rest-pose coordinates ``q``)."""
    head = np.isin(regions, ("head", "jaw"))
    if not head.any():
        return
    feats = scene.body.head_features()
    qh = q[head]
    col = albedo[head]
    hs = scene.body.shape.scale * scene.body.shape.head
    for eye in ("left_eye", "right_eye"):
        d = qh - feats[eye]
        r = (d[:, 0] / (0.0075 * hs)) ** 2 + (
            d[:, 1] / ((0.004 if scene.appearance.eyes_open else 0.0015) * hs)
        ) ** 2
        col[r < 1.0] = np.array([0.12, 0.08, 0.07])
    d = qh - feats["mouth"]
    r = (d[:, 0] / (0.012 * hs)) ** 2 + (d[:, 1] / (0.003 * hs)) ** 2
    col[r < 1.0] = col[r < 1.0] * np.array([0.85, 0.45, 0.45])
    if scene.appearance.hair is not None:
        rel = (qh - feats["head_centre"]) / feats["head_radii"]
        hair = (
            (regions[head] == "head")
            & (rel[:, 1] + 0.6 * np.clip(-rel[:, 2], 0, None) > 0.25)
            & (rel[:, 2] < 0.55)
        )
        col[hair] = scene.appearance.hair
    albedo[head] = col


def render_frame(scene: Scene, noise_rng: np.random.Generator) -> RenderedFrame:
    """Ray-cast, label and shade one frame. ``noise_rng`` drives the per-frame sensor noise only."""
    body, cam, app = scene.body, scene.camera, scene.appearance
    posed = body.pose(scene.pose.angles, scene.pose.root, scene.pose.position)
    centres = np.concatenate([posed.centres] + [p.centre[None] for p in scene.props])
    axes = np.concatenate([posed.axes] + [p.axes[None] for p in scene.props])
    centres_cam = cam.to_camera(centres)
    axes_cam = cam.R @ axes
    n_cam = cam.R @ np.array([0.0, 0.0, 1.0])
    plane = (n_cam, float(n_cam @ cam.to_camera(np.zeros(3))))
    nb = body.num_prims
    frags: Fragments = rasterise(cam, centres_cam, axes_cam, plane, blend=_BLEND, num_blended=nb)

    on_object = frags.depth < frags.plane_depth
    mask = on_object & (frags.prim >= 0) & (frags.prim < nb)
    depth_m = np.where(on_object, frags.depth, frags.plane_depth)

    nodes_cam = cam.to_camera(posed.nodes)
    nodes_2d = cam.project(nodes_cam)
    in_image = (
        (nodes_2d[:, 0] >= -0.5)
        & (nodes_2d[:, 0] < cam.width - 0.5)
        & (nodes_2d[:, 1] >= -0.5)
        & (nodes_2d[:, 1] < cam.height - 0.5)
        & (nodes_cam[:, 2] > 0)
    )
    visible, front = joint_visibility(body, nodes_cam, centres_cam, axes_cam, nb, plane, _BLEND)

    rgb = _shade_scene(scene, frags, on_object, mask, depth_m, n_cam)
    rgb8 = finish(rgb, app, noise_rng, cam.width / 640.0)

    normals = np.where(mask[..., None], frags.normals, 0.0).astype(np.float32)
    return RenderedFrame(
        rgb=rgb8,
        depth=np.where(np.isfinite(depth_m), depth_m * 1000.0, 0.0).astype(np.float32),
        body_depth=np.where(mask, frags.depth * 1000.0, 0.0).astype(np.float32),
        normals=normals,
        mask=mask.astype(np.uint8),
        nodes_cam=nodes_cam,
        nodes_2d=nodes_2d,
        visible=visible & in_image,
        in_image=in_image,
        front_depth=front,
    )


def _shade_scene(
    scene: Scene,
    frags: Fragments,
    on_object: np.ndarray,
    mask: np.ndarray,
    depth_m: np.ndarray,
    n_cam: np.ndarray,
) -> np.ndarray:
    """Float RGB (H, W, 3) in [0, 1]-ish before camera effects."""
    body, cam, app = scene.body, scene.camera, scene.appearance
    H, W = depth_m.shape
    light_cam = (cam.R @ app.light.direction).astype(np.float32)
    xs, ys = (a.astype(np.float32) for a in cam.rays())

    # Floor coordinates of every pixel (world x, y where its ray meets z = 0).
    on_floor = np.isfinite(frags.plane_depth)
    t = np.where(on_floor, frags.plane_depth, 0.0).astype(np.float32)
    Rt = cam.R.T.astype(np.float32)
    xy = np.stack(
        [
            np.float32(cam.position[k]) + t * (Rt[k, 0] * xs[None, :] + Rt[k, 1] * ys[:, None] + Rt[k, 2])
            for k in range(2)
        ],
        -1,
    )

    def box_of(points_xy: np.ndarray) -> tuple[int, int, int, int]:
        pc = cam.to_camera(np.concatenate([points_xy, np.zeros((len(points_xy), 1))], 1))
        if (pc[:, 2] <= 0.05).any():
            return 0, H, 0, W
        uv = cam.project(pc)
        c0, r0 = np.clip(np.floor(uv.min(0)).astype(int), 0, [W, H])
        c1, r1 = np.clip(np.ceil(uv.max(0)).astype(int) + 1, 0, [W, H])
        return r0, r1, c0, c1

    albedo = paint_floor(app, xy, box_of)
    if not on_floor.all():
        wall = app.wall.colour(np.stack(np.broadcast_arrays(xs[None, :], ys[:, None]), -1))
        albedo = np.where(on_floor[..., None], albedo, wall)
    ndl = np.full((H, W), max(float(n_cam @ light_cam), 0.0), np.float32)
    ndl[~on_floor] = 0.5
    if app.light.shadow > 0:
        ndl *= 1.0 - np.float32(app.light.shadow) * _shadow_map(scene, on_object, depth_m)
    if app.light.contact > 0:
        sigma = (
            0.02 * cam.K[0, 0] / max(float(np.median(depth_m[on_object])) if on_object.any() else 1.0, 0.1)
        )
        near = np.clip(_blur(on_object.astype(np.float32), sigma) * 1.6, 0.0, 1.0)
        ndl *= 1.0 - np.float32(app.light.contact) * near
    img = shade(albedo, ndl, app)

    # Infant and props: albedo from patterns in coordinates that move with the surface.
    rr, cc = np.nonzero(on_object)
    prim = frags.prim[rr, cc].astype(np.int64)
    u = frags.unit[rr, cc]
    normals = frags.normals[rr, cc]
    col = np.zeros((len(rr), 3), np.float32)
    wrap = np.zeros(len(rr), np.float32)
    isbody = prim < body.num_prims
    if isbody.any():
        bp = prim[isbody]
        q = (
            body.prim_centre[bp] + np.einsum("nij,nj->ni", body.prim_rot[bp], body.prim_radii[bp] * u[isbody])
        ).astype(np.float32)
        regions = np.asarray(body.prim_region)[bp]
        clothed = np.isin(regions, list(app.clothed))
        c = np.broadcast_to(app.skin.astype(np.float32), (len(bp), 3)).copy()
        if app.style == "real-like":
            blot = np.sin(_dot3(q, (37.0, 53.0, 41.0))) * np.sin(_dot3(q, (-47.0, 29.0, 61.0)))
            c *= (1.0 + 0.05 * blot)[:, None]
        cheeks = regions == "jaw"
        c[cheeks] *= np.array([1.03, 0.93, 0.92], np.float32)
        if clothed.any():
            arm = np.isin(regions[clothed], list(ARM_REGIONS))
            across = np.where(arm, np.abs(q[clothed, 0]), q[clothed, 1])
            c[clothed] = app.cloth.colour(q[clothed], across=across)
        _face_and_hair(scene, q, regions, c)
        col[isbody] = c
        wrap[isbody] = np.where(clothed, 0.1, _SKIN_WRAP)
    for k, prop in enumerate(scene.props):
        sel = prim == body.num_prims + k
        if sel.any():
            radii = np.linalg.norm(prop.axes, axis=0).astype(np.float32)
            col[sel] = prop.pattern.colour((u[sel] * radii)[:, : prop.pattern.dim])
            wrap[sel] = _SKIN_WRAP if prop.skin else 0.0
    nl = normals @ light_cam
    ndl = np.clip((nl + wrap) / (1.0 + wrap), 0.0, None)
    if app.light.shadow > 0:  # soft self-shadowing: surfaces facing away from the light get darker still
        ndl *= np.clip(0.6 + 0.4 * nl, 0.0, 1.0)
    img[rr, cc] = shade(col, ndl, app)
    return img


def _dot3(q: np.ndarray, v: tuple[float, float, float]) -> np.ndarray:
    return q[:, 0] * np.float32(v[0]) + q[:, 1] * np.float32(v[1]) + q[:, 2] * np.float32(v[2])


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; large kernels run at half resolution (a soft shadow does not need more)."""
    sigma = max(float(sigma), 0.5)
    if sigma < 4.0:
        return cv2.GaussianBlur(img, (0, 0), sigma)
    H, W = img.shape[:2]
    small = cv2.resize(img, (W // 2, H // 2), interpolation=cv2.INTER_AREA)
    return cv2.resize(cv2.GaussianBlur(small, (0, 0), sigma / 2), (W, H), interpolation=cv2.INTER_LINEAR)


def _shadow_map(scene: Scene, on_object: np.ndarray, depth_m: np.ndarray) -> np.ndarray:
    """Soft shadow (H, W) in [0, 1] cast on the floor by the infant and props under the scene's light."""
    cam, light = scene.camera, scene.appearance.light
    H, W = depth_m.shape
    step = 2
    rr, cc = np.nonzero(on_object[::step, ::step])
    rr, cc = rr * step, cc * step
    if rr.size == 0 or light.direction[2] <= 0.05:
        return np.zeros((H, W), np.float32)
    xs, ys = cam.rays()
    t = depth_m[rr, cc].astype(np.float64)
    pts = cam.position + (np.stack([xs[cc], ys[rr], np.ones_like(t)], 1) * t[:, None]) @ cam.R
    pts = pts[pts[:, 2] > 0.002]
    onfloor = pts - (pts[:, 2] / light.direction[2])[:, None] * light.direction
    pc = cam.to_camera(onfloor)
    pc = pc[pc[:, 2] > 0.05]
    uv = cam.project(pc)
    ok = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    sm = np.zeros((H, W), np.float32)
    sm[uv[ok, 1].astype(int), uv[ok, 0].astype(int)] = 1.0
    sm = cv2.dilate(sm, np.ones((2 * step + 1, 2 * step + 1), np.uint8))
    sigma = 0.006 * cam.K[0, 0] / max(float(np.median(t)), 0.1)
    return np.clip(_blur(sm, sigma) * 1.2, 0.0, 1.0)
