"""The plain record every dataset reader returns, whatever the source format.

Readers turn MINI-RGBD folders and SyRIP COCO JSON into lists of :class:`PoseRecord`; datasets, augmentation
and the checker only ever see records. Keypoints are always COCO-17, in image pixels (pixel centres at
integer coordinates), with a ``labelled`` mask that is False where the source cannot label a joint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Side folder, at a dataset root, where the procedural generator writes rendered geometry (depth in mm and
# camera-frame unit normals) as ``<relative image path without suffix>.npz``. Real-format readers never
# require it; they only note the path when the file exists.
MAPS_DIRNAME = "geosapiens_maps"


@dataclass
class PoseRecord:
    """One annotated (or unlabelled) person in one image.

    Shapes: K = 17 (COCO-17).

    Attributes:
        image_path: absolute path of the image.
        keypoints: (K, 2) float32 x, y in image pixels.
        labelled: (K,) bool, the joint has a ground-truth position.
        visible: (K,) bool, the joint is visible (not occluded); a best effort, see the dataset notes.
        bbox: (4,) float32 x, y, w, h in image pixels.
        width, height: image size in pixels as the annotation states it.
        image_id: the dataset's image id (SyRIP) or ``"<seq>/<frame>"`` (MINI-RGBD).
        domain: ``"real"`` or ``"synthetic"``.
        sequence, frame: video sequence id and frame index where the data is a video.
        area: the annotation's ``area`` field as read (SyRIP's is unreliable; see ``area_suspect``).
        area_suspect: True when ``area`` differs from bbox w*h by more than 10%.
        depth_path, mask_path: MINI-RGBD depth PNG (uint16 mm) and foreground mask.
        maps_path: rendered geometry ``.npz`` (generator output) when present.
        joints_3d: (K, 3) float32 camera-frame metres where the source has 3D joints.
        annotation_id: id of the source annotation, for messages.
        source: the file the annotation came from, for messages.
    """

    image_path: Path
    keypoints: np.ndarray
    labelled: np.ndarray
    visible: np.ndarray
    bbox: np.ndarray
    width: int
    height: int
    image_id: int | str
    domain: str = "real"
    sequence: str | None = None
    frame: int | None = None
    area: float | None = None
    area_suspect: bool = False
    depth_path: Path | None = None
    mask_path: Path | None = None
    maps_path: Path | None = None
    joints_3d: np.ndarray | None = None
    annotation_id: int | None = None
    source: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def weights(self) -> np.ndarray:
        """(K,) float32 per-keypoint loss/metric weight: 1 where labelled, else 0."""
        return self.labelled.astype(np.float32)
