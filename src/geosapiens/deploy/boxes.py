"""The person box of each frame: the model is top-down, so every frame needs one before it is cropped.

Sources (``--box``): ``whole`` (the full frame: one infant filling the view, the usual clinical
recording), a user-given box (``x,y,w,h`` for every frame, or a file with one per image or frame),
``tracked`` (the box of the previous frame's confident keypoints, enlarged; the first frame, and any frame
after the track is lost, falls back to the given box or the whole frame), and ``auto`` (no detector: a
coarse pass on the whole frame, the box of its confident keypoints, the refined pass in that box; tracked
over a video, searched again when the track is lost).
"""

from __future__ import annotations

import csv
import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from geosapiens.errors import DataError

__all__ = [
    "AutoBox",
    "BoxSource",
    "WholeFrame",
    "FixedBox",
    "BoxFile",
    "TrackedBox",
    "joint_box",
    "parse_box_source",
]


class BoxSource(ABC):
    """Box (x, y, w, h) in image pixels for a frame; ``observe`` sees each frame's prediction afterwards.

    ``coarse`` True says the box just given is a first guess: the predictor runs the network on it, boxes
    the confident keypoints with :meth:`refine`, and predicts again in that box.
    """

    coarse = False

    def refine(
        self, keypoints: np.ndarray, scores: np.ndarray, image_shape: tuple[int, ...]
    ) -> np.ndarray | None:
        """The box of a coarse pass's prediction, None to keep the coarse box."""
        return None

    def start(self, sequence: str | None) -> None:  # noqa: B027 - a no-op hook unless a source tracks
        """A new clip begins (tracking state is dropped)."""

    @abstractmethod
    def box(self, image_shape: tuple[int, ...], index: int, path: str) -> np.ndarray:
        """The box of frame ``index`` (its image's shape and path, for lookups)."""

    def observe(self, keypoints: np.ndarray, scores: np.ndarray) -> None:  # noqa: B027 - as start()
        """The prediction of the frame last boxed; (K, 2) image px and (K,) scores."""


class WholeFrame(BoxSource):
    def box(self, image_shape: tuple[int, ...], index: int, path: str) -> np.ndarray:
        h, w = image_shape[:2]
        return np.array([0.0, 0.0, float(w), float(h)])


class FixedBox(BoxSource):
    """The same user-given box on every frame."""

    def __init__(self, xywh: tuple[float, float, float, float]) -> None:
        self.xywh = _valid_box(xywh, "--box")

    def box(self, image_shape: tuple[int, ...], index: int, path: str) -> np.ndarray:
        return self.xywh.copy()


class BoxFile(BoxSource):
    """Boxes from a file, looked up by image file name (stills, frame folders) or frame index (videos).

    Formats: a COCO annotation file (the first person box of each image, by ``file_name``); a JSON object
    ``{"<file name or frame index>": [x, y, w, h]}``; a CSV with a header ``key,x,y,w,h`` (key = file name or
    frame index).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(self.path, "box file not found")
        self.image_ids: dict[str, int] = {}  # file name -> COCO image id, for results that evaluate as-is
        self.boxes = self._read()

    def _read(self) -> dict[str, np.ndarray]:
        text = self.path.read_text()
        if self.path.suffix.lower() == ".csv":
            rows = list(csv.DictReader(text.splitlines()))
            if not rows or not {"key", "x", "y", "w", "h"} <= set(rows[0]):
                raise DataError(self.path, "a box CSV needs the header key,x,y,w,h")
            raw = {r["key"]: [r["x"], r["y"], r["w"], r["h"]] for r in rows}
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise DataError(self.path, f"not valid JSON ({err})") from err
            if isinstance(data, dict) and "images" in data and "annotations" in data:
                names = {img["id"]: Path(img["file_name"]).name for img in data["images"]}
                self.image_ids = {name: image_id for image_id, name in names.items()}
                raw = {}
                for ann in data["annotations"]:
                    if ann.get("image_id") in names and "bbox" in ann:
                        raw.setdefault(names[ann["image_id"]], ann["bbox"])
            elif isinstance(data, dict):
                raw = data
            else:
                raise DataError(self.path, "expected a COCO file or {name or frame: [x, y, w, h]}")
        return {str(k): _valid_box(v, self.path, record=k) for k, v in raw.items()}

    def box(self, image_shape: tuple[int, ...], index: int, path: str) -> np.ndarray:
        name = None if "#" in path else Path(path).name  # video frames are "<video>#<index>"
        for key in (name, str(index)):
            if key is not None and key in self.boxes:
                return self.boxes[key].copy()
        raise DataError(self.path, f"no box for {path} (looked up its file name and frame index {index})")


class TrackedBox(BoxSource):
    """The previous frame's confident keypoints' box, enlarged by ``margin``; else ``initial``'s box.

    Args:
        initial: the box of a clip's first frame and of frames after the track is lost.
        min_score: keypoint score that counts as confident.
        min_joints: confident keypoints needed to keep tracking.
        margin: scale of the keypoints' box (the crop adds its own 1.25 padding on top).
    """

    def __init__(
        self,
        initial: BoxSource | None = None,
        min_score: float = 0.3,
        min_joints: int = 4,
        margin: float = 1.2,
    ) -> None:
        self.initial = initial or WholeFrame()
        self.min_score, self.min_joints, self.margin = min_score, min_joints, margin
        self._last: np.ndarray | None = None
        self._shape: tuple[int, ...] | None = None

    def start(self, sequence: str | None) -> None:
        self._last = None
        self.initial.start(sequence)

    def box(self, image_shape: tuple[int, ...], index: int, path: str) -> np.ndarray:
        self._shape = image_shape
        return self._last.copy() if self._last is not None else self.initial.box(image_shape, index, path)

    def observe(self, keypoints: np.ndarray, scores: np.ndarray) -> None:
        # None when lost: the next frame starts again from the initial box
        self._last = joint_box(keypoints, scores, self._shape, self.min_score, self.min_joints, self.margin)


class AutoBox(TrackedBox):
    """An infant box without a person detector: when there is no track (a clip's first frame, every still,
    a frame after the track is lost), a coarse pass on the whole frame, then the box of its confident
    keypoints (:meth:`refine`) for the refined pass; over a video the refined prediction's box carries to
    the next frame, as :class:`TrackedBox`. Measured in ``benchmarks/box_auto.py``."""

    def __init__(self, min_score: float = 0.3, min_joints: int = 4, margin: float = 1.2) -> None:
        super().__init__(WholeFrame(), min_score, min_joints, margin)
        self._video = False

    @property
    def coarse(self) -> bool:
        return self._last is None

    def start(self, sequence: str | None) -> None:
        super().start(sequence)
        self._video = sequence is not None

    def refine(
        self, keypoints: np.ndarray, scores: np.ndarray, image_shape: tuple[int, ...]
    ) -> np.ndarray | None:
        return joint_box(keypoints, scores, image_shape, self.min_score, self.min_joints, self.margin)

    def observe(self, keypoints: np.ndarray, scores: np.ndarray) -> None:
        if self._video:  # stills are unrelated images: each one is searched
            super().observe(keypoints, scores)


def joint_box(
    keypoints: np.ndarray,
    scores: np.ndarray,
    image_shape: tuple[int, ...] | None,
    min_score: float = 0.3,
    min_joints: int = 4,
    margin: float = 1.2,
) -> np.ndarray | None:
    """The box (x, y, w, h) of the keypoints scored ``min_score`` or more, scaled by ``margin`` about its
    centre and kept overlapping the image; None with fewer than ``min_joints`` of them."""
    confident = keypoints[np.isfinite(keypoints).all(-1) & (scores >= min_score)]
    if len(confident) < min_joints:
        return None
    (x0, y0), (x1, y1) = confident.min(0), confident.max(0)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    w, h = max(x1 - x0, 1.0) * margin, max(y1 - y0, 1.0) * margin
    box = np.array([cx - 0.5 * w, cy - 0.5 * h, w, h])
    if image_shape is not None:
        H, W = image_shape[:2]
        box[0], box[1] = np.clip(box[0], -w + 1, W - 1), np.clip(box[1], -h + 1, H - 1)
    return box


def _valid_box(value, where: str | Path, record: str | None = None) -> np.ndarray:
    try:
        box = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise DataError(where, f"a box is four numbers x, y, w, h, got {value!r}", record) from err
    if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= 0 or box[3] <= 0:
        raise DataError(where, f"a box is x, y, w, h with w, h > 0, got {value!r}", record)
    return box


def parse_box_source(spec: str, initial: str | None = None) -> BoxSource:
    """``whole`` | ``tracked`` | ``auto`` | ``x,y,w,h`` | a box file; ``initial`` is the tracker's starting
    box spec."""
    if spec == "whole":
        return WholeFrame()
    if spec == "auto":
        if initial:
            raise ValueError("--initial_box goes with --box tracked; --box auto finds its own first box")
        return AutoBox()
    if spec == "tracked":
        return TrackedBox(parse_box_source(initial) if initial else None)
    if "," in spec and not Path(spec).exists():
        return FixedBox(tuple(spec.split(",")))
    return BoxFile(spec)
