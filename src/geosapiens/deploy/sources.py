"""What ``geosapiens infer`` reads: still images, folders of images, video files (decoded by OpenCV).

Each input becomes a :class:`Clip`: a video is one sequence (tracks, smoothing, TTA per video); a folder is a
group of stills unless it is read as one sequence of frames (``as_sequence``); a single image is a still.
Frames come out as RGB uint8, one at a time, so an hour of video never sits in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from geosapiens.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "VIDEO_SUFFIXES", "Frame", "Clip", "ArrayClip", "open_clips"]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm", ".wmv"})


@dataclass
class Frame:
    """One decoded frame: ``image`` (H, W, 3) uint8 RGB, its ``index`` in the clip and where it came from
    (the image file, or ``<video>#<index>``)."""

    image: np.ndarray
    index: int
    path: str


@dataclass
class Clip:
    """One unit of prediction.

    Attributes:
        path: the video file, image file or folder.
        sequence: the track name for videos and frame folders (the file or folder stem); None for stills.
        images: the image files of a still or a folder, sorted by name; empty for a video.
        fps: frame rate (the video's, or ``fps`` given for a frame folder); None for stills.
    """

    path: Path
    sequence: str | None
    images: list[Path]
    fps: float | None

    @property
    def is_video(self) -> bool:
        return not self.images

    def __len__(self) -> int:
        """Frames in the clip (for videos the container's count, which some codecs only estimate)."""
        if self.images:
            return len(self.images)
        capture = _open_video(self.path)
        try:
            return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
        finally:
            capture.release()

    def frames(self) -> Iterator[Frame]:
        if self.is_video:
            yield from _video_frames(self.path)
            return
        for index, path in enumerate(self.images):
            yield Frame(read_rgb(path), index, str(path))


class ArrayClip(Clip):
    """Frames already in memory (``(H, W, 3)`` uint8 RGB arrays: a camera, a decoded stream): one sequence
    (tracking, smoothing) when ``fps`` is given, else stills."""

    def __init__(self, arrays: Sequence[np.ndarray], name: str = "frames", fps: float | None = None) -> None:
        for i, a in enumerate(arrays):
            if not (isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3):
                raise ValueError(f"ArrayClip {name}: frame {i} is not an (H, W, 3) uint8 RGB array")
        super().__init__(Path(name), name if fps is not None else None, [], fps)
        self.arrays = list(arrays)

    @property
    def is_video(self) -> bool:
        return False

    def __len__(self) -> int:
        return len(self.arrays)

    def frames(self) -> Iterator[Frame]:
        for index, image in enumerate(self.arrays):
            yield Frame(image, index, f"{self.path}#{index}")


def read_rgb(path: Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (grey and alpha images converted)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(path, "cannot be decoded as an image (missing, truncated or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _open_video(path: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(path, "OpenCV cannot open this video (missing file or unsupported codec)")
    return capture


def _video_frames(path: Path) -> Iterator[Frame]:
    capture = _open_video(path)
    try:
        index = 0
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            yield Frame(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), index, f"{path}#{index}")
            index += 1
        if index == 0:
            raise DataError(path, "the video has no decodable frame")
    finally:
        capture.release()


def _video_fps(path: Path) -> float:
    capture = _open_video(path)
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS))
    finally:
        capture.release()
    if not np.isfinite(fps) or fps <= 0:
        raise DataError(path, "the video does not state a frame rate; re-encode it or pass --fps")
    return fps


def open_clips(
    paths: Sequence[str | Path], *, as_sequence: bool = False, fps: float | None = None
) -> list[Clip]:
    """Clips for the command line's inputs, in the order given.

    Args:
        paths: image files, folders of images, video files.
        as_sequence: read each folder as the frames of one video (sorted by name) rather than as stills.
        fps: frame rate of frame folders (and of videos that state none); used by smoothing and overlays.

    Raises:
        DataError: a path that does not exist, is of an unknown type, or is a folder without images.
    """
    clips: list[Clip] = []
    for raw in paths:
        path = Path(raw)
        suffix = path.suffix.lower()
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise DataError(path, f"folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            if as_sequence:
                clips.append(Clip(path, path.name, images, fps or 25.0))
            else:
                clips.append(Clip(path, None, images, None))
        elif not path.exists():
            raise DataError(path, "no such file or folder")
        elif suffix in IMAGE_SUFFIXES:
            clips.append(Clip(path, None, [path], None))
        elif suffix in VIDEO_SUFFIXES:
            clips.append(Clip(path, path.stem, [], fps or _video_fps(path)))
        else:
            raise DataError(
                path,
                f"unknown input type {suffix!r}; give images ({', '.join(sorted(IMAGE_SUFFIXES))}), "
                f"folders of images or videos ({', '.join(sorted(VIDEO_SUFFIXES))})",
            )
    names = [c.sequence for c in clips if c.sequence is not None]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataError(
            ", ".join(str(c.path) for c in clips if c.sequence in duplicated),
            f"inputs share track names {duplicated}: rename the videos or folders",
        )
    return clips
