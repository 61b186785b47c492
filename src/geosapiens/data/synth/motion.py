"""Random plausible infant poses (supine, prone, side, sitting) and smooth fidgety motion for video.

A pose is an array of Euler angles ``(NUM_NODES, 3)`` plus a root orientation; each posture has a mean
pose and spreads per joint angle (left side; the right side samples the mirrored distribution on its
own, so poses are asymmetric), clipped to the body's joint limits. Sequences add smoothed noise (a sum of
sinusoids with random frequencies, bursts of activity and phases) to a supine pose: small, fast, variable
limb movements on top of slower writhing, as in general-movement recordings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geosapiens.data.synth.body import FLIP_NODES, NUM_NODES, Body, PosedBody, euler_to_matrix, mirror_angles

__all__ = [
    "POSTURES",
    "POSTURE_LABELS",
    "Pose",
    "sample_posture",
    "sample_pose",
    "sample_motion",
    "place_on_floor",
]

# Still-image posture mix, after SyRIP's real training split (prone and supine dominate, some sitting)
# with side lying added; sequences are supine, as in MINI-RGBD.
POSTURES: dict[str, float] = {"supine": 0.45, "prone": 0.25, "side": 0.12, "sitting": 0.18}
POSTURE_LABELS = {"supine": "Supine", "prone": "Prone", "side": "Side", "sitting": "Sitting"}

# (mean, std) in degrees per (node, axis) for the left side and centre; unspecified = (0, 0).
_COMMON: dict[int, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    3: ((0, 0, 0), (6, 5, 5)),
    6: ((0, 0, 0), (5, 5, 5)),
    9: ((0, 0, 0), (5, 5, 4)),
    7: ((0, 0, 0), (15, 8, 12)),
    10: ((0, 0, 0), (8, 0, 0)),
    12: ((0, 0, 0), (10, 10, 6)),
    13: ((0, 0, 0), (4, 5, 6)),
    15: ((0, 0, 0), (12, 35, 10)),
    20: ((0, 0, 0), (12, 12, 25)),
}
_POSTURE_POSES: dict[str, dict[int, tuple[tuple[float, float, float], tuple[float, float, float]]]] = {
    "supine": {
        1: ((-55, 15, 30), (35, 15, 15)),
        4: ((70, 0, 0), (35, 4, 2)),
        16: ((0, -25, -15), (25, 30, 35)),
        18: ((0, -70, 0), (30, 35, 4)),
    },
    "prone": {
        1: ((-25, 15, 30), (25, 15, 15)),
        4: ((60, 0, 0), (35, 4, 2)),
        3: ((-8, 0, 0), (6, 5, 5)),
        12: ((-20, 0, 0), (12, 10, 6)),
        15: ((-15, 0, 0), (15, 40, 10)),
        16: ((0, -60, 10), (25, 25, 30)),
        18: ((0, -90, 0), (30, 30, 4)),
    },
    "side": {
        1: ((-60, 10, 10), (30, 10, 15)),
        4: ((80, 0, 0), (30, 4, 2)),
        3: ((8, 0, 0), (6, 5, 5)),
        16: ((0, -60, -20), (25, 25, 30)),
        18: ((0, -80, 0), (30, 30, 4)),
    },
    "sitting": {
        1: ((-95, 20, 30), (12, 10, 10)),
        4: ((45, 0, 0), (30, 4, 2)),
        3: ((10, 0, 0), (8, 5, 5)),
        16: ((0, -30, -40), (25, 25, 30)),
        18: ((0, -50, 0), (30, 30, 4)),
    },
}


@dataclass
class Pose:
    """Joint angles and root orientation of one infant; ``position`` is set by :func:`place_on_floor`.

    Attributes:
        angles: (NUM_NODES, 3) Euler angles in radians.
        root: (3, 3) body frame -> world rotation.
        position: (3,) pelvis position in the world (floor is z = 0).
        posture: one of :data:`POSTURES`.
    """

    angles: np.ndarray
    root: np.ndarray
    position: np.ndarray
    posture: str

    def mirrored(self) -> Pose:
        """The left/right mirror image through the world plane x = 0."""
        M = np.diag([-1.0, 1.0, 1.0])
        return Pose(
            mirror_angles(self.angles),
            M @ self.root @ M,
            self.position * np.array([-1.0, 1.0, 1.0]),
            self.posture,
        )


def _table(posture: str) -> tuple[np.ndarray, np.ndarray]:
    mean, std = np.zeros((NUM_NODES, 3)), np.zeros((NUM_NODES, 3))
    for i, (m, s) in {**_COMMON, **_POSTURE_POSES[posture]}.items():
        for node, sign in ((i, np.array([1.0, 1.0, 1.0])), (FLIP_NODES[i], np.array([1.0, -1.0, -1.0]))):
            mean[node], std[node] = np.asarray(m) * sign, s
    return np.deg2rad(mean), np.deg2rad(std)


def _root(posture: str, yaw: float, rng: np.random.Generator) -> np.ndarray:
    """Body -> world rotation for a posture (world z up), with a small random tilt."""
    head = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    up = np.array([0.0, 0.0, 1.0])
    if posture == "supine":
        front = up
    elif posture == "prone":
        front = -up
    elif posture == "side":
        front = np.array([-np.sin(yaw), np.cos(yaw), 0.0]) * rng.choice([-1.0, 1.0])
    else:  # sitting: head up, leaning forward
        lean = np.deg2rad(rng.uniform(0.0, 20.0))
        fwd = np.array([np.cos(yaw), np.sin(yaw), 0.0])
        head, front = np.cos(lean) * up + np.sin(lean) * fwd, np.cos(lean) * fwd - np.sin(lean) * up
    R = np.stack([np.cross(head, front), head, front], axis=1)
    tilt = rng.normal(0.0, np.deg2rad(6.0), 3)
    return euler_to_matrix(tilt) @ R


def sample_posture(rng: np.random.Generator) -> str:
    names = list(POSTURES)
    return str(rng.choice(names, p=np.array([POSTURES[n] for n in names])))


def sample_pose(
    body: Body, rng: np.random.Generator, posture: str | None = None, yaw: float | None = None
) -> Pose:
    """A random pose of ``posture`` (drawn from :data:`POSTURES` when None), resting on the floor."""
    posture = posture or sample_posture(rng)
    mean, std = _table(posture)
    angles = body.clip(mean + std * rng.standard_normal(mean.shape))
    yaw = float(rng.uniform(-np.pi, np.pi)) if yaw is None else yaw
    pose = Pose(angles, _root(posture, yaw, rng), np.zeros(3), posture)
    return place_on_floor(body, pose)


def place_on_floor(body: Body, pose: Pose, xy: tuple[float, float] = (0.0, 0.0)) -> Pose:
    """Put the pelvis above ``xy`` and lower the body until its lowest surface point touches z = 0."""
    posed = body.pose(pose.angles, pose.root, np.array([xy[0], xy[1], 0.0]))
    pose.position = np.array([xy[0], xy[1], -lowest_point(posed)])
    return pose


def lowest_point(posed: PosedBody) -> float:
    """Minimum world z over the body surface (exact support function of the ellipsoids)."""
    return float((posed.centres[:, 2] - np.linalg.norm(posed.axes[:, 2, :], axis=1)).min())


def _soft_clip(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Smoothly squash ``x`` into (lo, hi): identity in the middle 60 %, tanh towards the limits."""
    mid, half = (lo + hi) / 2, np.maximum((hi - lo) / 2, 1e-9)
    z = (x - mid) / half
    knee = 0.6
    squashed = np.sign(z) * (knee + (1 - knee) * np.tanh((np.abs(z) - knee) / (1 - knee)))
    return mid + half * np.where(np.abs(z) < knee, z, squashed)


# Per-node amplitude (degrees) of the motion signal on each axis: limbs move most, the trunk least.
_MOTION_AMPLITUDE: dict[int, tuple[float, float, float]] = {
    1: (22, 10, 12),
    4: (25, 3, 2),
    7: (12, 5, 8),
    16: (18, 22, 25),
    18: (10, 28, 3),
    20: (8, 8, 18),
    3: (3, 3, 3),
    6: (2, 2, 2),
    9: (2, 2, 2),
    12: (5, 6, 3),
    15: (6, 18, 5),
    13: (2, 3, 3),
}


def sample_motion(body: Body, rng: np.random.Generator, num_frames: int, fps: float = 25.0) -> list[Pose]:
    """A supine sequence of ``num_frames`` poses with smooth, variable limb movements.

    Every angle follows ``base + envelope(t) * sum_k a_k sin(2 pi f_k t + phi_k)`` with five frequencies
    drawn log-uniformly in 0.25-4 Hz (amplitude ~ f^-0.5: fidgety small fast moves on top of slower
    writhing), a slow random activity envelope (bursts and pauses), then a soft clip to the joint limits.
    """
    base = sample_pose(body, rng, "supine", yaw=float(rng.uniform(-np.pi, np.pi)))
    t = np.arange(num_frames) / fps
    amp = np.zeros((NUM_NODES, 3))
    for i, a in _MOTION_AMPLITUDE.items():
        amp[i] = amp[FLIP_NODES[i]] = a
    amp = np.deg2rad(amp) * rng.uniform(0.6, 1.4)
    K = 5
    freqs = np.exp(rng.uniform(np.log(0.25), np.log(4.0), (K, NUM_NODES, 3)))
    weights = freqs**-0.5 * rng.uniform(0.3, 1.0, freqs.shape)
    weights /= np.sqrt((weights**2).sum(0, keepdims=True) / 2)
    phases = rng.uniform(0, 2 * np.pi, freqs.shape)
    wave = (
        weights[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None, :, None, None] + phases[:, None])
    ).sum(0)
    env_f = rng.uniform(0.05, 0.25, (2, NUM_NODES, 1))
    env_p = rng.uniform(0, 2 * np.pi, (2, NUM_NODES, 1))
    envelope = 0.55 + 0.45 * np.sin(
        2 * np.pi * env_f[:, None] * t[None, :, None, None] + env_p[:, None]
    ).mean(0)
    angles = _soft_clip(
        base.angles[None] + amp[None] * envelope * wave, body.limits[..., 0], body.limits[..., 1]
    )
    sway = np.deg2rad(2.0) * np.sin(
        2 * np.pi * rng.uniform(0.03, 0.1, 3)[None] * t[:, None] + rng.uniform(0, 6.3, 3)
    )
    poses = []
    for f in range(num_frames):
        pose = Pose(angles[f], euler_to_matrix(sway[f]) @ base.root, np.zeros(3), "supine")
        poses.append(place_on_floor(body, pose))
    return poses
