"""Writes a small MINI-RGBD tree in the published layout and text formats, for tests.

The scene is a supine infant-like body under a top-down camera: 25 SMIL joints in the camera frame (metres),
their exact projections with the published intrinsics as the 2D joints (depth column in millimetres), a
uint16 depth PNG in millimetres where each joint is drawn as a disc whose surface lies in front of the joint
(the body in front of a background plane), the body's foreground mask and an RGB image. Optionally a "toy"
hovers over a joint (in the depth map, not in the mask) so that a depth test must call that joint occluded.

The intrinsics are written out again here from the dataset's documentation, not imported from the reader, so
the reader is checked against an independent copy.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

FX, FY, CX, CY = 588.67905803875317, 590.25690113005601, 322.22048191353628, 237.46785983766890
WIDTH, HEIGHT = 640, 480
BACKGROUND_MM = 850.0
OCCLUDER_IN_FRONT_MM = 150.0

# Template pose in metres: x right, y towards the feet (image down), z offset towards the camera (negative is
# closer), per SMIL joint id (geosapiens.skeleton.SMIL25 order), and the radius of the disc drawn around it.
_TEMPLATE = np.array(
    [
        # x, y, dz, radius
        [0.000, 0.050, 0.000, 0.045],  # 0 global (pelvis)
        [0.045, 0.070, 0.000, 0.035],  # 1 leftThigh (hip)
        [-0.045, 0.070, 0.000, 0.035],  # 2 rightThigh
        [0.000, 0.000, -0.005, 0.045],  # 3 spine
        [0.060, 0.170, -0.010, 0.025],  # 4 leftCalf (knee)
        [-0.060, 0.170, -0.010, 0.025],  # 5 rightCalf
        [0.000, -0.050, -0.010, 0.045],  # 6 spine1
        [0.065, 0.260, 0.000, 0.020],  # 7 leftFoot (ankle)
        [-0.065, 0.260, 0.000, 0.020],  # 8 rightFoot
        [0.000, -0.090, -0.010, 0.045],  # 9 spine2
        [0.070, 0.290, -0.010, 0.015],  # 10 leftToes
        [-0.070, 0.290, -0.010, 0.015],  # 11 rightToes
        [0.000, -0.140, 0.000, 0.030],  # 12 neck
        [0.030, -0.130, 0.000, 0.030],  # 13 leftShoulder (collar)
        [-0.030, -0.130, 0.000, 0.030],  # 14 rightShoulder
        [0.000, -0.190, -0.010, 0.050],  # 15 head
        [0.070, -0.120, 0.000, 0.030],  # 16 leftUpperArm (shoulder)
        [-0.070, -0.120, 0.000, 0.030],  # 17 rightUpperArm
        [0.130, -0.080, -0.010, 0.022],  # 18 leftForeArm (elbow)
        [-0.130, -0.080, -0.010, 0.022],  # 19 rightForeArm
        [0.170, -0.020, -0.020, 0.018],  # 20 leftHand (wrist)
        [-0.170, -0.020, -0.020, 0.018],  # 21 rightHand
        [0.190, 0.000, -0.020, 0.015],  # 22 leftFingers
        [-0.190, 0.000, -0.020, 0.015],  # 23 rightFingers
        [0.000, -0.210, -0.050, 0.012],  # 24 noseVertex
    ]
)
_BODY_Z = 0.75  # metres from the camera to the pelvis


@dataclass
class FixtureFrame:
    """What was written for one frame, for tests to compare against.

    Attributes:
        joints_2d: (25, 3) x, y pixels and depth in millimetres, as written.
        joints_3d: (25, 3) camera-frame metres, as written.
        mask_bbox: (x0, y0, x1, y1) inclusive pixel bounds of the foreground mask.
        occluded: SMIL joint ids with a toy in front of them.
    """

    sequence: str
    stem: str
    joints_2d: np.ndarray
    joints_3d: np.ndarray
    mask_bbox: tuple[int, int, int, int]
    occluded: tuple[int, ...]


def frame_paths(root: Path, sequence: str, stem: str) -> dict[str, Path]:
    seq = Path(root) / sequence
    return {
        "rgb": seq / "rgb" / f"syn_{stem}.png",
        "depth": seq / "depth" / f"syn_{stem}_depth.png",
        "mask": seq / "fg_mask" / f"mask_{stem}.png",
        "joints_2d": seq / "joints_2Ddep" / f"syn_joints_2Ddep_{stem}.txt",
        "joints_3d": seq / "joints_3D" / f"syn_joints_3D_{stem}.txt",
    }


def write_joint_file(path: Path, values: np.ndarray) -> None:
    """25 lines ``a b c id`` (the published text format)."""
    lines = [f"{a:.6f} {b:.6f} {c:.6f} {i}" for i, (a, b, c) in enumerate(values)]
    path.write_text("\n".join(lines) + "\n")


def write_mini_rgbd(
    root: str | Path,
    sequences: Iterable[str] = ("01", "02"),
    frames: Iterable[int] = (0, 1, 2),
    *,
    occlude: Iterable[tuple[str, int, int]] = (("01", 1, 20),),
    stem_format: str = "{:05d}",
    seed: int = 0,
) -> dict[tuple[str, int], FixtureFrame]:
    """Write the tree under ``root``; returns what was written per ``(sequence, frame)``.

    Args:
        occlude: ``(sequence, frame, smil_joint)`` triples that get a toy 150 mm in front of the joint.
        stem_format: how frame numbers are written in file names (the dataset uses 5 digits).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    occluders = set(occlude)
    written = {}
    frames = list(frames)
    for sequence in sequences:
        for name in ("rgb", "depth", "fg_mask", "joints_2Ddep", "joints_3D"):
            (root / sequence / name).mkdir(parents=True, exist_ok=True)
        offset = rng.normal(0.0, 0.01, size=3)
        for frame in frames:
            stem = stem_format.format(frame)
            joints_3d = _pose(rng, offset)
            occluded = tuple(j for (s, f, j) in occluders if s == sequence and f == frame)
            joints_2d, depth, mask, rgb = _render(joints_3d, occluded)
            paths = frame_paths(root, sequence, stem)
            write_joint_file(paths["joints_3d"], joints_3d)
            write_joint_file(paths["joints_2d"], joints_2d)
            cv2.imwrite(str(paths["depth"]), depth)
            cv2.imwrite(str(paths["mask"]), mask)
            cv2.imwrite(str(paths["rgb"]), rgb[..., ::-1])  # RGB -> BGR for OpenCV
            ys, xs = np.nonzero(mask)
            written[(sequence, frame)] = FixtureFrame(
                sequence,
                stem,
                np.loadtxt(paths["joints_2d"])[:, :3],
                np.loadtxt(paths["joints_3d"])[:, :3],
                (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())),
                occluded,
            )
    return written


def project(points: np.ndarray) -> np.ndarray:
    """(N, 3) camera metres -> (N, 2) pixels."""
    return np.stack([FX * points[:, 0] / points[:, 2] + CX, FY * points[:, 1] / points[:, 2] + CY], axis=1)


def _pose(rng: np.random.Generator, offset: np.ndarray) -> np.ndarray:
    """(25, 3) camera-frame joints: the template, jittered per frame, under the camera."""
    xyz = np.column_stack([_TEMPLATE[:, 0], _TEMPLATE[:, 1] - 0.02, _BODY_Z + _TEMPLATE[:, 2]]) + offset
    return xyz + rng.normal(0.0, [0.004, 0.004, 0.0015], size=xyz.shape)


def _render(joints_3d: np.ndarray, occluded: tuple[int, ...]):
    """2D joints (x, y, depth mm), uint16 depth (mm), uint8 mask (0/255) and uint8 RGB for one frame."""
    uv = project(joints_3d)
    joints_2d = np.column_stack([uv, 1000.0 * joints_3d[:, 2]])
    rows = np.arange(HEIGHT, dtype=np.float64)[:, None]
    depth = np.broadcast_to(BACKGROUND_MM + 0.05 * (rows - HEIGHT / 2), (HEIGHT, WIDTH)).copy()
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    surface = 1000.0 * (joints_3d[:, 2] - _TEMPLATE[:, 3])  # each disc's front, in mm
    centres = [(int(round(u)), int(round(v))) for u, v in uv]
    for j in np.argsort(-surface):  # painter's order, far to near: the nearest surface wins, as in a z-buffer
        radius_px = int(round(_TEMPLATE[j, 3] * FX / joints_3d[j, 2]))
        cv2.circle(depth, centres[j], radius_px, float(surface[j]), thickness=-1)
        cv2.circle(mask, centres[j], radius_px, 255, thickness=-1)
    for j in occluded:  # a toy in front of the joint: in the depth map, not part of the infant
        cv2.circle(depth, centres[j], 12, float(joints_2d[j, 2] - OCCLUDER_IN_FRONT_MM), thickness=-1)
    rgb = np.full((HEIGHT, WIDTH, 3), (200, 190, 180), np.uint8)
    rgb[mask > 0] = (230, 180, 150)
    return joints_2d, np.rint(depth).astype(np.uint16), mask, rgb
