"""MINI-RGBD reader: the published folder layout and text formats (``reference/datasets.md`` §1.2-§1.5).

Layout, per sequence ``01`` .. ``12`` (frames ``XXXXX``, zero-padded)::

    rgb/syn_XXXXX.png                          640x480 RGB
    depth/syn_XXXXX_depth.png                  uint16, millimetres
    fg_mask/mask_XXXXX.png                     infant foreground
    joints_2Ddep/syn_joints_2Ddep_XXXXX.txt    25 lines "x y depth id" (pixels, joint depth)
    joints_3D/syn_joints_3D_XXXXX.txt          25 lines "x y z id" (metres, camera frame: x right, y down)

The 25 SMIL joints become COCO-17 through :data:`geosapiens.skeleton.SMIL25_TO_COCO17`; eyes and ears have
no label (``labelled`` False, weight 0). The box is the bounding box of the foreground mask. Visibility comes
from a depth test (:data:`VISIBILITY_TOLERANCE_MM`). At load time the 3D joints are projected with
:data:`MINI_RGBD_INTRINSICS` and must land on the 2D joints, and the 2D file's depth column must equal the
3D depth: a frame whose files disagree is refused, never silently trained on.
"""

from __future__ import annotations

import os
import re
import reprlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
from PIL import Image

from geosapiens.data.formats import Reporter, maps_path_for
from geosapiens.data.records import PoseRecord
from geosapiens.skeleton import SMIL25, SMIL25_TO_COCO17, map_keypoints

__all__ = [
    "MINI_RGBD_INTRINSICS",
    "VISIBILITY_TOLERANCE_MM",
    "DEPTH_COLUMN_TOLERANCE_MM",
    "read_mini_rgbd",
    "find_sequences",
    "list_frames",
    "parse_joint_file",
    "read_frame",
    "FramePaths",
]

# Intrinsics "used for generation of depth" (Fraunhofer helper scripts shipped with the data), no distortion.
MINI_RGBD_INTRINSICS = np.array(
    [
        [588.67905803875317, 0.0, 322.22048191353628],
        [0.0, 590.25690113005601, 237.46785983766890],
        [0.0, 0.0, 1.0],
    ],
    dtype=np.float64,
)

# A joint is visible when the rendered surface at its pixel is less than this far in front of it. Joint
# centres of the infant model lie up to ~5 cm under their own skin as seen from the top-down camera (hips
# deepest, the nose vertex on the skin), and anything lying over a joint (a limb, a toy) adds its own
# thickness, so occlusion moves the surface well over 60 mm in front in most cases. Thin occluders over
# shallow joints (a hand resting on a wrist) can be missed: a best effort, as ``PoseRecord.visible`` says.
VISIBILITY_TOLERANCE_MM = 60.0

# The 2D file's depth column must match 1000 * z of the 3D file within this. The column's unit is not stated
# by the dataset authors (datasets.md §1.3); a file whose column is in metres (equal to z) is accepted too.
DEPTH_COLUMN_TOLERANCE_MM = 1.0

SEQUENCE_NAME = re.compile(r"^\d{2}$")
_JOINT_2D_NAME = re.compile(r"^syn_joints_2Ddep_(\d+)\.txt$")
_NUM_JOINTS = SMIL25.num_keypoints
_FOLDERS = ("rgb", "depth", "fg_mask", "joints_2Ddep", "joints_3D")
# Records hold float32: a value beyond this would become inf in the record.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Messages quote a bad token or line cut short, never a whole corrupted line.
_BRIEF = reprlib.Repr()
_BRIEF.maxstring = 100

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class FramePaths:
    """The five files of one frame; ``stem`` is the frame number as written in the file names."""

    sequence: str
    stem: str
    rgb: Path
    depth: Path
    mask: Path
    joints_2d: Path
    joints_3d: Path

    @classmethod
    def of(cls, seq_dir: Path, stem: str) -> FramePaths:
        return cls(
            sequence=seq_dir.name,
            stem=stem,
            rgb=seq_dir / "rgb" / f"syn_{stem}.png",
            depth=seq_dir / "depth" / f"syn_{stem}_depth.png",
            mask=seq_dir / "fg_mask" / f"mask_{stem}.png",
            joints_2d=seq_dir / "joints_2Ddep" / f"syn_joints_2Ddep_{stem}.txt",
            joints_3d=seq_dir / "joints_3D" / f"syn_joints_3D_{stem}.txt",
        )

    @property
    def frame(self) -> int:
        return int(self.stem)


def read_mini_rgbd(
    root: str | Path,
    sequences: Sequence[str | int] | None = None,
    *,
    check_projection: bool = True,
    max_reprojection_px: float = 1.0,
) -> list[PoseRecord]:
    """Read MINI-RGBD sequences into one record per frame, sorted by sequence then frame number.

    Args:
        root: the dataset root (``MINI-RGBD_web``) holding the sequence folders ``01`` .. ``12``.
        sequences: which sequences (``["01", "02"]`` or ``[1, 2]``); None reads every sequence folder found.
        check_projection: verify that the 3D joints projected with :data:`MINI_RGBD_INTRINSICS` land within
            ``max_reprojection_px`` of the 2D joints, and that the depth column matches the 3D depth.
        max_reprojection_px: the largest reprojection error accepted, in pixels.

    Raises:
        DataError: at the first problem, naming the file: a missing sequence or file, a malformed joint file
            (line or column count, non-numbers, NaN/inf, joint ids out of order), 2D and 3D joints that do not
            agree, a depth PNG that is not uint16, an empty foreground mask, images of different sizes.
    """
    report = Reporter()
    root = Path(root).absolute()
    seq_dirs = find_sequences(root, sequences, report)
    frames = [paths for seq_dir in seq_dirs for paths in list_frames(seq_dir, report)]

    def load(paths: FramePaths) -> PoseRecord | None:
        return read_frame(
            root, paths, report, check_projection=check_projection, max_reprojection_px=max_reprojection_px
        )

    return [r for r in thread_map(load, frames) if r is not None]


def find_sequences(root: Path, sequences: Sequence[str | int] | None, report: Reporter) -> list[Path]:
    """Sequence folders to read, sorted by number; each one requested must exist."""
    if not root.is_dir():
        report(root, "MINI-RGBD root folder missing")
        return []
    if sequences is None:
        found = sorted(p for p in root.iterdir() if p.is_dir() and SEQUENCE_NAME.match(p.name))
        if not found:
            report(root, "no MINI-RGBD sequence folders (01 .. 12) found")
        return found
    names = sorted({_sequence_name(s) for s in sequences}, key=int)
    present = []
    for name in names:
        seq_dir = root / name
        if seq_dir.is_dir():
            present.append(seq_dir)
        else:
            found = sorted(p.name for p in root.iterdir() if p.is_dir() and SEQUENCE_NAME.match(p.name))
            report(seq_dir, f"sequence folder missing (found: {', '.join(found) or 'none'})")
    return present


def list_frames(seq_dir: Path, report: Reporter) -> list[FramePaths]:
    """Frames of a sequence, one per 2D joint file, in numerical order. Missing folders are reported once."""
    missing = [name for name in _FOLDERS if not (seq_dir / name).is_dir()]
    for name in missing:
        report(seq_dir / name, f"folder missing from sequence {seq_dir.name}")
    if missing:
        return []
    stems = []
    with os.scandir(seq_dir / "joints_2Ddep") as it:
        for entry in it:
            match = _JOINT_2D_NAME.match(entry.name)
            if match:
                stems.append(match.group(1))
    if not stems:
        report(seq_dir / "joints_2Ddep", "no joint files syn_joints_2Ddep_XXXXX.txt")
    return [FramePaths.of(seq_dir, stem) for stem in sorted(stems, key=int)]


def read_frame(
    root: Path,
    paths: FramePaths,
    report: Reporter,
    *,
    check_projection: bool = True,
    max_reprojection_px: float = 1.0,
) -> PoseRecord | None:
    """Validate one frame's files and build its record; None (after reporting) when it cannot be built."""
    joints_2d = parse_joint_file(paths.joints_2d, report)
    joints_3d = parse_joint_file(paths.joints_3d, report)
    if joints_2d is not None and joints_3d is not None and check_projection:
        check_joints_agree(paths, joints_2d, joints_3d, report, max_reprojection_px=max_reprojection_px)

    size = _rgb_size(paths.rgb, report)
    depth = read_depth(paths.depth, report)
    mask = read_mask(paths.mask, report)
    if size is not None:
        width, height = size
        for path, image in ((paths.depth, depth), (paths.mask, mask)):
            if image is not None and image.shape[:2] != (height, width):
                report(path, f"is {image.shape[1]}x{image.shape[0]} but {paths.rgb.name} is {width}x{height}")
                size = None
    bbox = mask_bbox(mask, paths.mask, report) if mask is not None else None
    if joints_2d is None or joints_3d is None or size is None or depth is None or bbox is None:
        return None

    visible25 = depth_visibility(joints_2d[:, :2], 1000.0 * joints_3d[:, 2], depth)
    keypoints, labelled = map_keypoints(joints_2d[:, :2], SMIL25_TO_COCO17)
    points_3d, _ = map_keypoints(joints_3d[:, :3], SMIL25_TO_COCO17)
    visible, _ = map_keypoints(visible25[:, None], SMIL25_TO_COCO17)
    return PoseRecord(
        image_path=paths.rgb,
        keypoints=keypoints.astype(np.float32),
        labelled=labelled,
        visible=visible[:, 0] & labelled,
        bbox=bbox,
        width=width,
        height=height,
        image_id=f"{paths.sequence}/{paths.stem}",
        domain="synthetic",
        sequence=paths.sequence,
        frame=paths.frame,
        depth_path=paths.depth,
        mask_path=paths.mask,
        maps_path=maps_path_for(root, paths.rgb),
        joints_3d=points_3d.astype(np.float32),
        source=paths.joints_2d,
    )


def parse_joint_file(path: Path, report: Reporter) -> np.ndarray | None:
    """``(25, 4)`` float64 from a joint file (25 lines of 4 numbers, the last the joint id = line index).

    Every malformed line is reported (line numbers are 1-based); None when any is.
    """
    columns = "'x y depth id'" if path.name.startswith("syn_joints_2Ddep") else "'x y z id'"
    if not path.is_file():  # reading a FIFO would block forever, a link to /dev/zero would never end
        report(path, "joint file is not a regular file" if path.exists() else "joint file missing")
        return None
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        report(path, f"cannot read the joint file: {e}")
        return None
    lines = text.rstrip().splitlines()
    if len(lines) != _NUM_JOINTS:
        report(path, f"has {len(lines)} lines, expected {_NUM_JOINTS} (one per SMIL joint, {columns})")
        return None
    out = np.empty((_NUM_JOINTS, 4), dtype=np.float64)
    ok = True
    for i, line in enumerate(lines):
        where = f"line {i + 1}"
        tokens = line.split()
        if len(tokens) != 4:
            report(path, f"has {len(tokens)} columns, expected 4 ({columns})", where)
            ok = False
            continue
        try:
            out[i] = [float(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _is_float(t))
            report(path, f"{_BRIEF.repr(bad)} is not a number", where)
            ok = False
            continue
        joint = f"(joint {i}, {SMIL25.names[i]})"
        if not np.isfinite(out[i]).all():
            report(path, f"non-finite value in {_BRIEF.repr(line.strip())} {joint}", where)
            ok = False
        elif (np.abs(out[i]) > _FLOAT32_MAX).any():
            report(path, f"value beyond the float32 range in {_BRIEF.repr(line.strip())} {joint}", where)
            ok = False
        elif out[i, 3] != i:
            report(path, f"joint id {out[i, 3]:g}, expected {i} (lines must be in joint-id order)", where)
            ok = False
    return out if ok else None


def check_joints_agree(
    paths: FramePaths,
    joints_2d: np.ndarray,
    joints_3d: np.ndarray,
    report: Reporter,
    *,
    max_reprojection_px: float = 1.0,
) -> bool:
    """The 3D joints projected with the intrinsics land on the 2D joints; the depth column equals their z."""
    xyz = joints_3d[:, :3]
    behind = np.nonzero(xyz[:, 2] <= 0)[0]
    if behind.size:
        j = behind[0]
        report(
            paths.joints_3d,
            f"joint {j} ({SMIL25.names[j]}) has z = {xyz[j, 2]:g} m: not in front of the camera",
            f"joint {j}",
        )
        return False
    ok = True
    error = np.linalg.norm(project(xyz) - joints_2d[:, :2], axis=1)
    worst = int(np.argmax(error))
    if error[worst] > max_reprojection_px:
        dx, dy = (project(xyz) - joints_2d[:, :2]).mean(axis=0)
        report(
            paths.joints_2d,
            f"2D joints disagree with {paths.joints_3d.name} projected with the MINI-RGBD "
            f"intrinsics: joint {worst} ({SMIL25.names[worst]}) is {error[worst]:.2f} px off "
            f"(max {max_reprojection_px:g} px; mean offset {dx:+.2f}, {dy:+.2f} px)",
            f"joint {worst}",
        )
        ok = False
    depth_mm = 1000.0 * xyz[:, 2]
    column = joints_2d[:, 2]
    off_as_mm = np.abs(column - depth_mm)
    off_as_m = np.abs(1000.0 * column - depth_mm)
    if min(off_as_mm.max(), off_as_m.max()) > DEPTH_COLUMN_TOLERANCE_MM:
        unit, off = ("mm", off_as_mm) if np.median(off_as_mm) <= np.median(off_as_m) else ("m", off_as_m)
        j = int(np.argmax(off))
        report(
            paths.joints_2d,
            f"depth column of joint {j} ({SMIL25.names[j]}) is {column[j]:g} {unit}, but "
            f"{paths.joints_3d.name} has z = {depth_mm[j]:.2f} mm (tolerance "
            f"{DEPTH_COLUMN_TOLERANCE_MM:g} mm)",
            f"joint {j}",
        )
        ok = False
    return ok


def project(points: np.ndarray, intrinsics: np.ndarray = MINI_RGBD_INTRINSICS) -> np.ndarray:
    """Pinhole projection ``(..., 3)`` camera-frame points -> ``(..., 2)`` pixels (centres at integers)."""
    uvw = points @ intrinsics.T
    return uvw[..., :2] / uvw[..., 2:3]


def read_depth(path: Path, report: Reporter) -> np.ndarray | None:
    """The depth PNG as ``(H, W)`` uint16 millimetres; anything else is reported."""
    depth = _imread(path, cv2.IMREAD_UNCHANGED, report, "depth PNG")
    if depth is None:
        return None
    if depth.dtype != np.uint16 or depth.ndim != 2:
        channels = 1 if depth.ndim == 2 else depth.shape[2]
        report(
            path,
            f"depth PNG is {depth.dtype} with {channels} channel(s), expected single-channel uint16 "
            "millimetres",
        )
        return None
    return depth


def read_mask(path: Path, report: Reporter) -> np.ndarray | None:
    """The foreground mask as ``(H, W)`` uint8 (nonzero = infant)."""
    return _imread(path, cv2.IMREAD_GRAYSCALE, report, "foreground mask")


def mask_bbox(mask: np.ndarray, path: Path, report: Reporter) -> np.ndarray | None:
    """``(4,)`` float32 x, y, w, h around the nonzero pixels, in the pixel-centre convention.

    A mask covering columns ``x0..x1`` gives ``x = x0 - 0.5`` and ``w = x1 - x0 + 1``: the box covers the
    pixels' full extent, and its centre is the centre of the covered pixels.
    """
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        report(path, "foreground mask is empty: no infant to put a box around")
        return None
    x0, x1, y0, y1 = cols[0], cols[-1], rows[0], rows[-1]
    return np.array([x0 - 0.5, y0 - 0.5, x1 - x0 + 1, y1 - y0 + 1], dtype=np.float32)


def depth_visibility(points: np.ndarray, joint_depth_mm: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """``(J,)`` bool: the joint is in the image and the surface at its pixel is not far in front of it.

    Args:
        points: ``(J, 2)`` pixel coordinates.
        joint_depth_mm: ``(J,)`` joint depth (camera z) in millimetres.
        depth: ``(H, W)`` rendered depth in millimetres; 0 means no data there (counted as visible).
    """
    h, w = depth.shape
    u = np.rint(points[:, 0]).astype(np.int64)
    v = np.rint(points[:, 1]).astype(np.int64)
    inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
    surface = np.zeros(len(points), dtype=np.float64)
    surface[inside] = depth[v[inside], u[inside]]
    unoccluded = (surface == 0) | (joint_depth_mm - surface <= VISIBILITY_TOLERANCE_MM)
    return inside & unoccluded


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool (PNG decoding releases the GIL); the first error propagates
    and the remaining work is cancelled."""
    items = list(items)
    if len(items) < 2:
        return [fn(x) for x in items]
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        return list(pool.map(fn, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _imread(path: Path, flags: int, report: Reporter, what: str) -> np.ndarray | None:
    if not path.is_file():
        report(path, f"{what} is not a regular file" if path.exists() else f"{what} missing")
        return None
    try:
        image = cv2.imread(str(path), flags | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error as e:  # OpenCV 5 raises (not returns None) when the header claims too many pixels
        report(path, f"cannot decode the {what}: OpenCV refused it ({getattr(e, 'err', e)})")
        return None
    if image is None:
        report(path, f"cannot decode the {what} (truncated or not an image)")
    return image


def _rgb_size(path: Path, report: Reporter) -> tuple[int, int] | None:
    """(width, height) from the RGB image's header; the image itself is decoded by the dataset, later."""
    if not path.is_file():
        missing = "is not a regular file" if path.exists() else "missing"
        report(path, f"RGB image {missing} for this frame's joint files")
        return None
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, Image.DecompressionBombError) as e:  # a header claiming billions of pixels is the latter
        report(path, f"cannot read the RGB image header: {e}")
        return None


def _sequence_name(sequence: str | int) -> str:
    if isinstance(sequence, int) and not isinstance(sequence, bool):
        return f"{sequence:02d}"
    if isinstance(sequence, str) and sequence.isdigit():
        return f"{int(sequence):02d}"
    raise ValueError(f"a MINI-RGBD sequence is a number like 1 or '01', got {sequence!r}")


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
