"""``geosapiens data check PATH``: validate a MINI-RGBD or SyRIP dataset and list every problem.

The checker runs the readers' own validators (:mod:`geosapiens.data.formats`) with a collecting
:class:`~geosapiens.data.formats.Reporter`, so it finds everything a loader would refuse, all at once. On top
of that it does what a loader skips to stay fast or leaves as a judgement call:

- decode every image (a truncated JPEG still decodes in OpenCV with a grey bottom, so truncation is detected
  from the file structure as well as by a full Pillow decode) and compare its size with the annotation;
- flag EXIF orientation tags (readers that apply them, like ``cv2.imread`` by default, see a rotated image);
- flag labelled keypoints lying more than half the image size outside the image.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from geosapiens.data.formats import Problem, Reporter
from geosapiens.data.formats.mini_rgbd import (
    SEQUENCE_NAME,
    FramePaths,
    find_sequences,
    list_frames,
    read_frame,
    thread_map,
)
from geosapiens.data.formats.syrip import SyripImage, parse_syrip
from geosapiens.data.records import PoseRecord
from geosapiens.skeleton import COCO17

__all__ = ["Problem", "CheckResult", "FORMATS", "check_dataset", "run_checks", "detect_format"]

FORMATS = ("mini-rgbd", "syrip")
# A labelled keypoint further outside the image than this fraction of the image size is reported.
FAR_OUTSIDE = 0.5
_EXIF_ORIENTATION = 0x0112
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


@dataclass
class CheckResult:
    """Problems found, plus what was checked (for the summary)."""

    path: Path
    fmt: str | None
    problems: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        what = ", ".join(f"{name} {n}" for name, n in self.counts.items()) or "nothing"
        line = f"{self.fmt or 'unknown format'} at {self.path}: checked {what}; problems {len(self.problems)}"
        return "\n".join([line, *self.notes])


def check_dataset(path: str | Path, fmt: str | None = None) -> list[Problem]:
    """Every problem in the dataset at ``path`` (empty when clean).

    Args:
        path: a SyRIP root (``annotations/`` + ``images/``), one SyRIP annotation JSON, a MINI-RGBD root
            (sequence folders ``01`` ..) or one MINI-RGBD sequence folder.
        fmt: ``"mini-rgbd"`` or ``"syrip"``; detected from the layout when None.
    """
    return run_checks(path, fmt).problems


def run_checks(path: str | Path, fmt: str | None = None) -> CheckResult:
    """:func:`check_dataset` with the counts of what was checked."""
    path = Path(path).absolute()
    if fmt is None:
        fmt = detect_format(path)
    if fmt is None:
        return CheckResult(
            path, None, [Problem(str(path), None, _UNKNOWN_LAYOUT if path.exists() else "missing")]
        )
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return _check_syrip(path) if fmt == "syrip" else _check_mini_rgbd(path)


_UNKNOWN_LAYOUT = (
    "cannot tell the dataset format: expected a SyRIP root (annotations/, images/), a SyRIP "
    "annotation JSON, a MINI-RGBD root (sequence folders 01 .. 12) or one sequence folder; "
    "pass --format"
)


def detect_format(path: Path) -> str | None:
    """``"syrip"`` or ``"mini-rgbd"`` from the layout at ``path``; None when it looks like neither."""
    if path.is_file():
        return "syrip" if path.suffix == ".json" else None
    if not path.is_dir():
        return None
    if (path / "annotations").is_dir():
        return "syrip"
    if (path / "joints_2Ddep").is_dir():
        return "mini-rgbd"
    if any(p.is_dir() and SEQUENCE_NAME.match(p.name) for p in path.iterdir()):
        return "mini-rgbd"
    return None


# --------------------------------------------------------------------------------------------------- SyRIP


def _check_syrip(path: Path) -> CheckResult:
    result = CheckResult(path, "syrip")
    report = Reporter(collect=True)
    root, files = _syrip_files(path, report)
    decoded: dict[Path, tuple[int, int] | None] = {}  # each image file is decoded once, whatever refers to it
    n_annotations = n_images = n_suspect = 0
    for ann_file in files:
        parsed = parse_syrip(root, ann_file, None, report)
        if parsed is None:
            continue
        n_images += parsed.num_images
        n_annotations += parsed.num_annotations
        labels = {img.path: f"image {img.image_id}" for img in parsed.images.values() if img.exists}
        new = sorted(labels.keys() - decoded.keys())
        outcomes = thread_map(_decode_collecting, [(p, labels[p]) for p in new])
        for image_path, (size, problems) in zip(new, outcomes, strict=True):
            decoded[image_path] = size
            report.problems.extend(problems)
        for image in sorted(parsed.images.values(), key=lambda im: im.image_id):
            size = decoded.get(image.path)
            if size is not None:
                _check_size(image, size, parsed.path, report)
        for record in parsed.records:
            check_keypoints_inside(record, report)
            n_suspect += record.area_suspect
    result.problems = report.problems
    result.counts = {
        "annotation files": len(files),
        "image entries": n_images,
        "images decoded": sum(size is not None for size in decoded.values()),
        "annotations": n_annotations,
    }
    if n_suspect:
        result.notes.append(
            f"note: {n_suspect} annotation(s) have 'area' more than 10% away from bbox w*h "
            "(records flag them area_suspect; COCO AP should use bbox w*h)"
        )
    return result


def _syrip_files(path: Path, report: Reporter) -> tuple[Path, list[Path]]:
    """(dataset root, annotation files) for a root folder or one JSON under ``<root>/annotations/``."""
    if path.is_file():
        for parent in path.parents:
            if parent.name == "annotations":
                return parent.parent, [path]
        report(path, "cannot find the dataset root: a SyRIP annotation file lives under <root>/annotations/")
        return path.parent, []
    files = sorted((path / "annotations").rglob("*.json")) if (path / "annotations").is_dir() else []
    if not files:
        report(path / "annotations", "no annotation JSON files under annotations/")
    return path, files


def _check_size(image: SyripImage, size: tuple[int, int], ann_path: Path, report: Reporter) -> None:
    width, height = size
    if (width, height) != (image.width, image.height):
        report(
            image.path,
            f"image is {width}x{height} but {ann_path.name} says {image.width}x{image.height}",
            f"image {image.image_id}",
        )


def check_keypoints_inside(record: PoseRecord, report: Reporter) -> None:
    """Report labelled keypoints more than :data:`FAR_OUTSIDE` of the image size beyond its border."""
    w, h = record.width, record.height
    x, y = record.keypoints[:, 0], record.keypoints[:, 1]
    far = record.labelled & (
        (x < -FAR_OUTSIDE * w)
        | (x > (1 + FAR_OUTSIDE) * w)
        | (y < -FAR_OUTSIDE * h)
        | (y > (1 + FAR_OUTSIDE) * h)
    )
    where = f"annotation {record.annotation_id}" if record.annotation_id is not None else None
    for k in np.flatnonzero(far):
        report(
            record.source or record.image_path,
            f"keypoint {k} ({COCO17.names[k]}) at ({x[k]:.1f}, {y[k]:.1f}) is more than "
            f"{FAR_OUTSIDE:.0%} of the image size outside the {w}x{h} image",
            where,
        )


# ----------------------------------------------------------------------------------------------- MINI-RGBD


def _check_mini_rgbd(path: Path) -> CheckResult:
    result = CheckResult(path, "mini-rgbd")
    report = Reporter(collect=True)
    if (path / "joints_2Ddep").is_dir():  # one sequence folder
        root, sequences = path.parent, [path.name]
        if not SEQUENCE_NAME.match(path.name):
            report(path, "a MINI-RGBD sequence folder is named 01 .. 12")
            sequences = []
    else:
        root, sequences = path, None
    seq_dirs = find_sequences(root, sequences, report) if sequences != [] else []
    frames: list[FramePaths] = []
    for seq_dir in seq_dirs:
        seq_frames = list_frames(seq_dir, report)
        frames += seq_frames
        if seq_frames:  # else list_frames said why (a folder missing...): every file would look orphaned
            _report_orphans(seq_dir, {p.stem for p in seq_frames}, report)

    def check(paths: FramePaths) -> list[Problem]:
        frame_report = Reporter(collect=True)
        record = read_frame(root, paths, frame_report)
        if paths.rgb.is_file():
            decode_image(paths.rgb, frame_report)
        if record is not None:
            check_keypoints_inside(record, frame_report)
        return frame_report.problems

    for problems in thread_map(check, frames):
        report.problems.extend(problems)
    result.problems = report.problems
    result.counts = {"sequences": len(seq_dirs), "frames": len(frames)}
    return result


def _report_orphans(seq_dir: Path, stems: set[str], report: Reporter) -> None:
    """Files of frames that have no 2D joint file (so no record): an incomplete copy of the dataset."""
    patterns: tuple[tuple[str, str, str], ...] = (
        ("rgb", "syn_", ".png"),
        ("joints_3D", "syn_joints_3D_", ".txt"),
    )
    for folder, prefix, suffix in patterns:
        if not (seq_dir / folder).is_dir():
            continue
        for file in sorted((seq_dir / folder).glob(f"{prefix}*{suffix}")):
            stem = file.name[len(prefix) : -len(suffix)]
            if stem.isdigit() and stem not in stems:
                report(file, f"no 2D joint file joints_2Ddep/syn_joints_2Ddep_{stem}.txt for this frame")


# ------------------------------------------------------------------------------------------------- images


def decode_image(path: Path, report: Reporter, record: str | None = None) -> tuple[int, int] | None:
    """Fully decode an image file; its stored (width, height), or None after reporting why it is unusable.

    Truncation is caught three ways: Pillow refuses to finish decoding, a JPEG has no end-of-image marker
    after its last scan, a PNG does not end with its IEND chunk (which OpenCV then refuses to read).
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        report(path, "image file missing", record)
        return None
    except OSError as e:
        report(path, f"cannot read the image file: {e}", record)
        return None
    if data[:2] == b"\xff\xd8" and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        report(path, "truncated JPEG: no end-of-image marker after the last scan", record)
        return None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and not data.endswith(_PNG_END):
        report(path, "truncated PNG: the file does not end with its IEND chunk", record)
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size = image.size
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except UnidentifiedImageError:  # its message would name the in-memory buffer, not the file
        report(path, "cannot decode the image: not in any image format Pillow reads", record)
        return None
    except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError... depending on the decoder
        report(path, f"cannot decode the image: {e}", record)
        return None
    if orientation != 1:
        report(
            path,
            f"EXIF orientation {orientation}: readers that apply it (cv2.imread by default) see a "
            "rotated or mirrored image that no longer matches the annotation",
            record,
        )
    return size


def _decode_collecting(item: tuple[Path, str]) -> tuple[tuple[int, int] | None, list[Problem]]:
    path, record = item
    report = Reporter(collect=True)
    return decode_image(path, report, record), report.problems
