"""An articulated infant: kinematic tree, joint limits, shape variation and a surface of ellipsoids.

The tree is SMPL's (the 24 SMIL joints plus MINI-RGBD's nose vertex) extended with the four COCO face
points, so every label the generator writes comes from one forward-kinematics pass. Node order:

    0..24   the 25 MINI-RGBD joints (``geosapiens.skeleton.SMIL25`` order; SMPL kinematic parents, i.e. the
            collars hang from spine3 like the neck does)
    25..28  left_eye, right_eye, left_ear, right_ear (COCO face points)

Nodes 24..28 are *surface landmarks*: they lie on the head surface (nose tip, eyes, outer ears), the others
are *internal joints* that sit inside the primitives of their own bones. The body frame follows SMPL:
x = the infant's left, y = towards the head, z = the front (belly); the rest pose is a T-pose.

The surface is a union of ellipsoids rigidly attached to bones (chubby limb segments, joint spheres, round
trunk, egg-shaped head with a jaw, nose and ears). Neighbouring segments share their joint spheres, so the
union is closed at every joint and bends leave infant-like creases. Sizes are those of a 0-6 month infant
(about 0.6 m crown to heel, head about a quarter of it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geosapiens.skeleton import SMIL25

__all__ = [
    "NODE_NAMES",
    "NUM_JOINTS",
    "NUM_NODES",
    "PARENTS",
    "LANDMARKS",
    "FLIP_NODES",
    "COCO17_FROM_NODES",
    "BodyShape",
    "Body",
    "PosedBody",
    "euler_to_matrix",
    "frame_along",
    "mirror_angles",
]

NUM_JOINTS = 25
NODE_NAMES: tuple[str, ...] = (*SMIL25.names, "left_eye", "right_eye", "left_ear", "right_ear")
NUM_NODES = len(NODE_NAMES)
# SMPL's kintree (collars 13/14 are children of spine3 = node 9), nose vertex and face points on the head.
PARENTS: tuple[int, ...] = (
    -1,
    0,
    0,
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    9,
    9,
    12,
    13,
    14,
    16,
    17,
    18,
    19,
    20,
    21,
    15,
    15,
    15,
    15,
    15,
)
LANDMARKS: tuple[int, ...] = (24, 25, 26, 27, 28)
# Node i becomes node FLIP_NODES[i] when the body is mirrored left <-> right.
FLIP_NODES: tuple[int, ...] = (*SMIL25.flip_indices, 26, 25, 28, 27)
# COCO-17 keypoints straight from the tree (face points included, unlike MINI-RGBD's SMIL25_TO_COCO17).
COCO17_FROM_NODES: tuple[int, ...] = (24, 25, 26, 27, 28, 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8)

# Mean rest pose (metres, body frame, pelvis at the origin), left side only; the right side is its mirror.
_REST_LEFT: dict[int, tuple[float, float, float]] = {
    0: (0.0, 0.0, 0.0),
    1: (0.040, -0.035, 0.0),  # hip
    3: (0.0, 0.045, -0.010),  # spine (SMPL spine1)
    4: (0.045, -0.140, 0.008),  # knee
    6: (0.0, 0.095, -0.010),  # spine1 (SMPL spine2)
    7: (0.048, -0.235, -0.002),  # ankle
    9: (0.0, 0.145, -0.005),  # spine2 (SMPL spine3)
    10: (0.050, -0.255, 0.045),  # toes
    12: (0.0, 0.195, -0.005),  # neck
    13: (0.025, 0.180, 0.0),  # collar ("leftShoulder")
    15: (0.0, 0.225, 0.0),  # head joint (skull base)
    16: (0.070, 0.175, -0.005),  # shoulder ("leftUpperArm")
    18: (0.145, 0.175, -0.005),  # elbow ("leftForeArm")
    20: (0.210, 0.175, -0.005),  # wrist ("leftHand")
    22: (0.245, 0.175, -0.005),  # fingers
}
_MIRROR = np.array([-1.0, 1.0, 1.0])
_LIMB_NODES = (4, 5, 7, 8, 10, 11, 18, 19, 20, 21, 22, 23)  # offsets scaled by the limb-length factor

# Head geometry relative to the head joint (node 15), before the head-size factor.
_HEAD_CENTRE = np.array([0.0, 0.048, 0.012])
_HEAD_RADII = np.array([0.055, 0.070, 0.064])
# Directions (head frame) along which the face points meet the head ellipsoid.
_EYE_DIR = np.array([0.33, 0.02, 1.0])
_NOSE_DIR = np.array([0.0, -0.20, 1.0])
_EAR_DIR = np.array([1.0, -0.05, -0.10])
_MOUTH_DIR = np.array([0.0, -0.45, 1.0])
_NOSE_RADIUS = 0.008
_EAR_RADII = np.array([0.006, 0.018, 0.012])

# Joint limits (degrees) for Euler angles R = Rx(a) Ry(b) Rz(c) in the parent's rest frame, left side and
# centre nodes; right-side limits are the mirror (a, -b, -c). Hip/shoulder/elbow/knee signs follow from the
# rest pose: hip flexion (thigh forward) is a < 0, knee flexion a > 0, shoulder elevation c > 0, elbow
# flexion b < 0, spine/neck/head flexion (chin to chest) a > 0.
_LIMITS_DEG: dict[int, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    1: ((-150, 20), (-40, 50), (-20, 75)),
    3: ((-15, 30), (-15, 15), (-15, 15)),
    4: ((0, 150), (-10, 10), (-5, 5)),
    6: ((-15, 25), (-15, 15), (-12, 12)),
    7: ((-45, 40), (-15, 15), (-25, 25)),
    9: ((-15, 25), (-15, 15), (-12, 12)),
    10: ((-20, 20), (0, 0), (0, 0)),
    12: ((-35, 35), (-35, 35), (-20, 20)),
    13: ((-10, 10), (-15, 15), (-15, 20)),
    15: ((-35, 35), (-65, 65), (-25, 25)),
    16: ((-70, 70), (-110, 45), (-85, 95)),
    18: ((-70, 70), (-145, 0), (-10, 10)),
    20: ((-20, 20), (-30, 30), (-60, 60)),
}


def euler_to_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation matrices ``Rx(a) @ Ry(b) @ Rz(c)`` for angles ``(..., 3)`` radians -> ``(..., 3, 3)``."""
    a, b, c = np.moveaxis(np.asarray(angles, dtype=np.float64), -1, 0)
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    R = np.empty((*a.shape, 3, 3))
    R[..., 0, 0] = cb * cc
    R[..., 0, 1] = -cb * sc
    R[..., 0, 2] = sb
    R[..., 1, 0] = ca * sc + sa * sb * cc
    R[..., 1, 1] = ca * cc - sa * sb * sc
    R[..., 1, 2] = -sa * cb
    R[..., 2, 0] = sa * sc - ca * sb * cc
    R[..., 2, 1] = sa * cc + ca * sb * sc
    R[..., 2, 2] = ca * cb
    return R


def mirror_angles(angles: np.ndarray) -> np.ndarray:
    """Angles ``(..., NUM_NODES, 3)`` of the left/right mirrored pose: swap sides, negate the y and z angles.

    Mirroring x -> -x conjugates a rotation: ``M Rx(a) Ry(b) Rz(c) M = Rx(a) Ry(-b) Rz(-c)``.
    """
    out = np.asarray(angles)[..., list(FLIP_NODES), :].copy()
    out[..., 1:] *= -1.0
    return out


def frame_along(direction: np.ndarray) -> np.ndarray:
    """A rotation whose first column is ``direction`` (unit), the others completing a right-handed frame."""
    x = direction / np.linalg.norm(direction)
    helper = np.array([0.0, 0.0, 1.0]) if abs(x[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
    y = np.cross(helper, x)
    y /= np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)], axis=1)


def _surface_point(radii: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Where the ray from an axis-aligned ellipsoid's centre along ``direction`` leaves its surface."""
    d = direction / np.linalg.norm(direction)
    return d / np.linalg.norm(d / radii)


@dataclass(frozen=True)
class BodyShape:
    """Shape knobs of one infant (all 1.0 = the mean 3-month infant).

    Attributes:
        scale: overall size (0.85 is a newborn, 1.15 about six months).
        girth: limb and trunk thickness (chubbiness).
        head: head size relative to the body.
        limbs: limb length relative to the trunk.
    """

    scale: float = 1.0
    girth: float = 1.0
    head: float = 1.0
    limbs: float = 1.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> BodyShape:
        return cls(
            scale=float(rng.uniform(0.86, 1.14)),
            girth=float(rng.uniform(0.85, 1.2)),
            head=float(rng.uniform(0.92, 1.1)),
            limbs=float(rng.uniform(0.92, 1.08)),
        )

    def mirrored(self) -> BodyShape:
        return self  # the shape is left/right symmetric


@dataclass
class PosedBody:
    """A body in one pose, in world coordinates (metres).

    Shapes: N = NUM_NODES nodes, P primitives.

    Attributes:
        nodes: (N, 3) joint and landmark positions.
        rotations: (N, 3, 3) global rotation of each node's frame (rest frame -> world).
        centres: (P, 3) ellipsoid centres.
        axes: (P, 3, 3) ellipsoid matrices A (unit sphere u -> centre + A u), columns = semi-axis vectors.
    """

    nodes: np.ndarray
    rotations: np.ndarray
    centres: np.ndarray
    axes: np.ndarray


class Body:
    """One infant of a given :class:`BodyShape`: rest skeleton, limits and ellipsoid surface.

    Attributes (P primitives):
        rest: (NUM_NODES, 3) rest-pose node positions.
        limits: (NUM_NODES, 3, 2) joint-angle limits in radians (zeros where a node cannot rotate).
        prim_joint: (P,) node each ellipsoid is attached to.
        prim_centre, prim_rot, prim_radii: (P, 3), (P, 3, 3), (P, 3) ellipsoids in the rest pose.
        prim_region: (P,) region names (``head``, ``thigh``, ...) used to dress and texture the body.
        prim_side: (P,) +1 left, -1 right, 0 centre.
        own_prims: per internal joint, the ellipsoids of its own bones that contain it (empty for landmarks).
    """

    def __init__(self, shape: BodyShape | None = None) -> None:
        self.shape = shape or BodyShape()
        self.rest = self._rest_nodes()
        self.limits = self._limits()
        self._build_primitives()
        self.own_prims = self._own_prims()

    # -- skeleton ----------------------------------------------------------------------------------------
    def _rest_nodes(self) -> np.ndarray:
        s = self.shape
        mean = np.zeros((NUM_NODES, 3))
        for i, p in _REST_LEFT.items():
            mean[i] = p
            j = FLIP_NODES[i]
            if j != i:
                mean[j] = np.asarray(p) * _MIRROR
        offsets = mean - mean[np.maximum(np.asarray(PARENTS), 0)]
        offsets[0] = mean[0]
        offsets[list(_LIMB_NODES)] *= s.limbs
        rest = np.zeros_like(mean)
        for i in range(NUM_JOINTS):
            rest[i] = offsets[i] + (rest[PARENTS[i]] if PARENTS[i] >= 0 else 0.0)
        rest *= s.scale
        # Face points on the head surface (the head ellipsoid scales with both factors).
        hs = s.scale * s.head
        centre = rest[15] + _HEAD_CENTRE * hs
        radii = _HEAD_RADII * hs
        nose_base = (
            centre + _surface_point(radii, _NOSE_DIR) - 0.003 * hs * _NOSE_DIR / np.linalg.norm(_NOSE_DIR)
        )
        rest[24] = nose_base + _NOSE_RADIUS * hs * _NOSE_DIR / np.linalg.norm(_NOSE_DIR)
        rest[25] = centre + _surface_point(radii, _EYE_DIR)
        rest[26] = centre + _surface_point(radii, _EYE_DIR * _MIRROR)
        ear = _surface_point(radii, _EAR_DIR) + np.array([_EAR_RADII[0], 0.0, 0.0]) * hs
        rest[27] = centre + ear
        rest[28] = centre + ear * _MIRROR
        self._head = (centre, radii, nose_base)
        return rest

    def _limits(self) -> np.ndarray:
        lim = np.zeros((NUM_NODES, 3, 2))
        for i, ranges in _LIMITS_DEG.items():
            lim[i] = np.deg2rad(np.asarray(ranges, dtype=np.float64))
            j = FLIP_NODES[i]
            if j != i:
                lim[j, 0] = lim[i, 0]
                lim[j, 1:] = -lim[i, 1:, ::-1]
        return lim

    # -- surface -----------------------------------------------------------------------------------------
    def _build_primitives(self) -> None:
        s, r = self.shape, self.rest
        prims: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray, int]] = []
        eye = np.eye(3)

        def add(region: str, joint: int, centre, rot, radii, side: int = 0) -> None:
            prims.append(
                (
                    region,
                    joint,
                    np.asarray(centre, float),
                    np.asarray(rot, float),
                    np.asarray(radii, float),
                    side,
                )
            )

        def trunk(region: str, joint: int, offset, radii) -> None:
            radii = np.asarray(radii) * np.array([s.girth, 1.0, s.girth]) * s.scale
            add(region, joint, r[joint] + np.asarray(offset) * s.scale, eye, radii)

        trunk("pelvis", 0, (0.0, -0.010, 0.0), (0.072, 0.062, 0.052))
        trunk("belly", 3, (0.0, 0.018, 0.012), (0.076, 0.078, 0.060))
        trunk("chest", 9, (0.0, -0.008, 0.005), (0.078, 0.066, 0.053))
        trunk("neck", 12, (0.0, 0.012, 0.0), (0.036, 0.028, 0.034))
        centre, radii, nose_base = self._head
        hs = s.scale * s.head
        add("head", 15, centre, eye, radii)
        add(
            "jaw", 15, centre + np.array([0.0, -0.032, 0.008]) * hs, eye, np.array([0.047, 0.042, 0.051]) * hs
        )
        add("nose", 15, nose_base, eye, np.full(3, _NOSE_RADIUS * hs))
        for side in (1, -1):
            ear_c = centre + _surface_point(radii, _EAR_DIR * np.array([side, 1.0, 1.0]))
            add("ear", 15, ear_c, eye, _EAR_RADII * hs, side)
            self._add_limbs(add, side)

        self.prim_region = tuple(p[0] for p in prims)
        self.prim_joint = np.array([p[1] for p in prims])
        self.prim_centre = np.stack([p[2] for p in prims])
        self.prim_rot = np.stack([p[3] for p in prims])
        self.prim_radii = np.stack([p[4] for p in prims])
        self.prim_side = np.array([p[5] for p in prims])

    def _add_limbs(self, add, side: int) -> None:
        """Arm and leg ellipsoids of one side (+1 left, -1 right): chubby segments, joint spheres, hand, foot."""
        s, r = self.shape, self.rest
        g = s.scale * s.girth
        eye = np.eye(3)
        L = {k: (k if side > 0 else FLIP_NODES[k]) for k in (1, 4, 7, 10, 16, 18, 20, 22)}

        def segment(region: str, a: int, b: int, radius: float, extra: float) -> None:
            d = r[L[b]] - r[L[a]]
            half = np.linalg.norm(d) / 2 + extra * s.scale
            add(region, L[a], (r[L[a]] + r[L[b]]) / 2, frame_along(d), (half, radius * g, radius * g), side)

        def sphere(region: str, joint: int, radius: float) -> None:
            add(region, L[joint], r[L[joint]], eye, np.full(3, radius * g), side)

        sphere("shoulder", 16, 0.025)
        segment("upper_arm", 16, 18, 0.023, 0.012)
        sphere("elbow", 18, 0.0185)
        segment("forearm", 18, 20, 0.0195, 0.008)
        hand_rot = frame_along(r[L[22]] - r[L[20]])
        hand_radii = np.array([0.030 * s.scale, 0.020 * g, 0.012 * g])
        add("hand", L[20], r[L[20]] + hand_rot[:, 0] * 0.026 * s.scale, hand_rot, hand_radii, side)
        segment("thigh", 1, 4, 0.033, 0.016)
        sphere("knee", 4, 0.025)
        segment("shin", 4, 7, 0.025, 0.008)
        sphere("ankle", 7, 0.0195)
        foot_radii = np.array([0.021 * s.girth, 0.016, 0.038]) * s.scale
        add("foot", L[7], r[L[7]] + np.array([0.0, -0.018, 0.022]) * s.scale, eye, foot_radii, side)

    @property
    def num_prims(self) -> int:
        return len(self.prim_region)

    def _own_prims(self) -> tuple[tuple[int, ...], ...]:
        """Ellipsoids on the joint's own bone or its parent's (rigid relative to the joint) that contain it."""
        own = []
        for j in range(NUM_NODES):
            if j in LANDMARKS:
                own.append(())
                continue
            bones = {j, PARENTS[j]} - {-1}
            own.append(
                tuple(
                    p
                    for p in range(self.num_prims)
                    if self.prim_joint[p] in bones and self._contains(p, self.rest[j])
                )
            )
        return tuple(own)

    def _contains(self, p: int, point: np.ndarray, margin: float = 0.98) -> bool:
        u = self.prim_rot[p].T @ (point - self.prim_centre[p]) / self.prim_radii[p]
        return bool(u @ u < margin**2)

    # -- posing ------------------------------------------------------------------------------------------
    def clip(self, angles: np.ndarray) -> np.ndarray:
        """Angles ``(..., NUM_NODES, 3)`` clipped to the joint limits."""
        return np.clip(angles, self.limits[..., 0], self.limits[..., 1])

    def pose(self, angles: np.ndarray, root_rotation: np.ndarray, root_position: np.ndarray) -> PosedBody:
        """Forward kinematics.

        Args:
            angles: (NUM_NODES, 3) Euler angles in radians (node 0's are ignored: ``root_rotation`` orients it).
            root_rotation: (3, 3) body frame -> world.
            root_position: (3,) world position of the pelvis.
        """
        local = euler_to_matrix(angles)
        local[0] = root_rotation
        rot = np.empty_like(local)
        nodes = np.empty((NUM_NODES, 3))
        rot[0], nodes[0] = root_rotation, root_position
        for i in range(1, NUM_NODES):
            p = PARENTS[i]
            rot[i] = rot[p] @ local[i]
            nodes[i] = nodes[p] + rot[p] @ (self.rest[i] - self.rest[p])
        R = rot[self.prim_joint]
        centres = nodes[self.prim_joint] + np.einsum(
            "pij,pj->pi", R, self.prim_centre - self.rest[self.prim_joint]
        )
        axes = R @ self.prim_rot * self.prim_radii[:, None, :]
        return PosedBody(nodes=nodes, rotations=rot, centres=centres, axes=axes)

    def head_features(self) -> dict[str, np.ndarray]:
        """Rest-pose face feature points (eyes, mouth) on the head, for painting faces."""
        centre, radii, _ = self._head
        return {
            "left_eye": self.rest[25],
            "right_eye": self.rest[26],
            "mouth": centre + _surface_point(radii, _MOUTH_DIR),
            "head_centre": centre,
            "head_radii": radii,
        }
