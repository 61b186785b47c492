"""Every keypoint set Geo-Sapiens knows, and the maps between them.

One table per skeleton (names, left/right swaps, limbs, OKS sigmas), in the spirit of mmpose's
dataset-info files. Flip indices are derived from the names, so they cannot drift from them.

The model always predicts COCO-17 (SyRIP's skeleton). MINI-RGBD's 25 SMIL joints and Sapiens'
Goliath-308 outputs are mapped onto it with the index tables below (``-1`` = no source joint:
that COCO joint is unlabelled, never invented).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from geosapiens._goliath import GOLIATH308_FLIP_INDICES, GOLIATH308_NAMES

__all__ = [
    "KeypointSet",
    "COCO17",
    "SMIL25",
    "GOLIATH308",
    "SMIL25_TO_COCO17",
    "GOLIATH308_TO_COCO17",
    "SYMMETRIC_BONES",
    "COCO17_CHAIN",
    "UNLABELLED_JOINTS",
    "map_keypoints",
]


def _swap_name(name: str) -> str:
    """The mirror name: left_* <-> right_*, l_* <-> r_*, leftX <-> rightX; central names map to themselves."""
    for a, b in (("left", "right"), ("right", "left")):
        if name.startswith(a):
            return b + name[len(a) :]
        if f"_{a}_" in name:
            return name.replace(f"_{a}_", f"_{b}_")
    for a, b in (("l_", "r_"), ("r_", "l_")):
        if name.startswith(a):
            return b + name[len(a) :]
    return name


@dataclass(frozen=True)
class KeypointSet:
    """A named keypoint layout.

    Args:
        name: short identifier used in configs (``coco17``, ``smil25``, ``goliath308``).
        names: keypoint names in output-channel order.
        limbs: pairs of indices drawn as the skeleton.
        sigmas: COCO OKS per-keypoint sigmas (only where the set is scored with OKS).
        flip_indices: channel ``i`` becomes channel ``flip_indices[i]`` on a horizontal flip; derived from
            ``names`` when omitted.
    """

    name: str
    names: tuple[str, ...]
    limbs: tuple[tuple[int, int], ...] = ()
    sigmas: tuple[float, ...] | None = None
    flip_indices: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.flip_indices:
            index = {n: i for i, n in enumerate(self.names)}
            flips = tuple(index.get(_swap_name(n), i) for i, n in enumerate(self.names))
            object.__setattr__(self, "flip_indices", flips)
        if len(self.flip_indices) != len(self.names):
            raise ValueError(
                f"{self.name}: {len(self.flip_indices)} flip indices for {len(self.names)} names"
            )
        if self.sigmas is not None and len(self.sigmas) != len(self.names):
            raise ValueError(f"{self.name}: {len(self.sigmas)} sigmas for {len(self.names)} names")

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def index(self, name: str) -> int:
        return self.names.index(name)


COCO17 = KeypointSet(
    name="coco17",
    names=(
        "nose",
        "left_eye",
        "right_eye",
        "left_ear",
        "right_ear",
        "left_shoulder",
        "right_shoulder",
        "left_elbow",
        "right_elbow",
        "left_wrist",
        "right_wrist",
        "left_hip",
        "right_hip",
        "left_knee",
        "right_knee",
        "left_ankle",
        "right_ankle",
    ),
    # The standard COCO skeleton (19 edges), 0-based.
    limbs=(
        (15, 13),
        (13, 11),
        (16, 14),
        (14, 12),
        (11, 12),
        (5, 11),
        (6, 12),
        (5, 6),
        (5, 7),
        (6, 8),
        (7, 9),
        (8, 10),
        (1, 2),
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 4),
        (3, 5),
        (4, 6),
    ),
    sigmas=(
        0.026,
        0.025,
        0.025,
        0.035,
        0.035,
        0.079,
        0.079,
        0.072,
        0.072,
        0.062,
        0.062,
        0.107,
        0.107,
        0.087,
        0.087,
        0.089,
        0.089,
    ),
)

SMIL25 = KeypointSet(
    # MINI-RGBD's joint file order (reference/datasets.md §1.5). The names are SMIL/SMPL kinematic names, not
    # anatomy: "leftUpperArm" is the shoulder joint, "leftShoulder" the collar bone.
    name="smil25",
    names=(
        "global",
        "leftThigh",
        "rightThigh",
        "spine",
        "leftCalf",
        "rightCalf",
        "spine1",
        "leftFoot",
        "rightFoot",
        "spine2",
        "leftToes",
        "rightToes",
        "neck",
        "leftShoulder",
        "rightShoulder",
        "head",
        "leftUpperArm",
        "rightUpperArm",
        "leftForeArm",
        "rightForeArm",
        "leftHand",
        "rightHand",
        "leftFingers",
        "rightFingers",
        "noseVertex",
    ),
    limbs=(
        (0, 1),
        (1, 4),
        (4, 7),
        (7, 10),
        (0, 2),
        (2, 5),
        (5, 8),
        (8, 11),
        (0, 3),
        (3, 6),
        (6, 9),
        (9, 12),
        (12, 15),
        (15, 24),
        (12, 13),
        (13, 16),
        (16, 18),
        (18, 20),
        (20, 22),
        (12, 14),
        (14, 17),
        (17, 19),
        (19, 21),
        (21, 23),
    ),
)

# Goliath's flip table is the official one: its face names do not all follow a left/right naming rule.
GOLIATH308 = KeypointSet(name="goliath308", names=GOLIATH308_NAMES, flip_indices=GOLIATH308_FLIP_INDICES)

# For each COCO-17 joint, the source joint index (-1: the source has no such joint).
SMIL25_TO_COCO17: tuple[int, ...] = (24, -1, -1, -1, -1, 16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8)
GOLIATH308_TO_COCO17: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6, 7, 8, 62, 41, 9, 10, 11, 12, 13, 14)

# COCO-17 joints a dataset cannot label: weight 0 in losses and metrics, never a made-up position.
UNLABELLED_JOINTS: dict[str, tuple[int, ...]] = {
    "mini-rgbd": (1, 2, 3, 4),
    "syrip": (),
}

# Left/right bone pairs (COCO-17 indices) whose 2.5D lengths the depth loss compares:
# upper arm, forearm, thigh, shank, shoulder-hip side.
SYMMETRIC_BONES: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((5, 7), (6, 8)),
    ((7, 9), (8, 10)),
    ((11, 13), (12, 14)),
    ((13, 15), (14, 16)),
    ((5, 11), (6, 12)),
)

# COCO-17 kinematic chain as (parent, child) from the mid-hip outwards; used by elastic scale augmentation
# and the pose prior's normalisation. "neck" is the shoulder midpoint, the head hangs off it.
COCO17_CHAIN: tuple[tuple[int, int], ...] = (
    (5, 7),
    (7, 9),
    (6, 8),
    (8, 10),
    (11, 13),
    (13, 15),
    (12, 14),
    (14, 16),
)
COCO17_HEAD: tuple[int, ...] = (0, 1, 2, 3, 4)


def map_keypoints(keypoints: np.ndarray, mapping: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Re-order ``(..., K_src, D)`` keypoints to a target set through ``mapping``.

    Returns the mapped keypoints ``(..., K_dst, D)`` (zeros where unmapped) and a boolean ``labelled`` mask
    ``(K_dst,)`` that is False where the source has no such joint.
    """
    idx = np.asarray(mapping)
    labelled = idx >= 0
    out = np.zeros((*keypoints.shape[:-2], len(idx), keypoints.shape[-1]), dtype=keypoints.dtype)
    out[..., labelled, :] = keypoints[..., idx[labelled], :]
    return out, labelled
