"""SyRIP reader: COCO-keypoints JSON in the official layout (``reference/datasets.md`` §2.3-§2.4).

Layout::

    <root>/annotations/<split>/person_keypoints_<set>_infant.json
    <root>/images/<set>_infant/<file_name>

Quirks of the real files, handled here rather than downstream:

- images and annotations are joined by ``image_id``, never by list order;
- ``is_synthetic`` (per image) gives the record's domain;
- a keypoint with ``v = 0`` or at the ``(-45, -45)`` placeholder is unlabelled (its position is set to 0,
  never used); ``v = 1`` is labelled but occluded, ``v = 2`` labelled and visible;
- negative bbox origins are valid (the infant is cut by the border) and kept as read;
- ``area`` is kept as read and flagged ``area_suspect`` when it is more than 10% away from bbox w*h
  (train200's is ~0.05x, validate500's ~15x; the evaluator decides which to use);
- width and height come from the JSON. The loader never opens an image, so it is fast (it only checks that
  each file exists); ``geosapiens data check`` decodes every image and compares its size.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from geosapiens.data.formats import Reporter, maps_path_for
from geosapiens.data.records import PoseRecord
from geosapiens.skeleton import COCO17

__all__ = ["read_syrip", "parse_syrip", "default_image_dir", "SyripImage", "SyripFile", "DOMAINS"]

DOMAINS = ("all", "real", "synthetic")
PLACEHOLDER_XY = (-45.0, -45.0)
# ``area`` further than this fraction from bbox w*h marks the record ``area_suspect``.
AREA_TOLERANCE = 0.10
_NUM_VALUES = 3 * COCO17.num_keypoints
# No decoder opens a wider or taller image (OpenCV's CV_IO_MAX_IMAGE_WIDTH); a larger size is a corrupt field.
MAX_IMAGE_SIDE = 1 << 20
# Records hold float32: a number beyond this would become inf in the record.
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Messages quote the bad value cut short, never a whole corrupted field.
_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 80
_BRIEF.maxlong = 40
_BRIEF.maxlist = 8
_ANNOTATION_NAME = re.compile(r"person_keypoints_(.+)\.json$")


@dataclass
class SyripImage:
    """One valid ``images[]`` entry.

    Attributes:
        image_id: COCO image id.
        path: absolute path of the image file.
        width, height: size the JSON states.
        is_synthetic: the image's ``is_synthetic`` flag (False when absent).
        exists: the file is there (a missing file has already been reported).
    """

    image_id: int
    path: Path
    width: int
    height: int
    is_synthetic: bool
    exists: bool


@dataclass
class SyripFile:
    """What one annotation file holds once validated: its images and one record per valid annotation."""

    path: Path
    image_dir: Path
    images: dict[int, SyripImage] = field(default_factory=dict)
    records: list[PoseRecord] = field(default_factory=list)
    num_images: int = 0
    num_annotations: int = 0


def default_image_dir(annotation_file: str | Path) -> str | None:
    """``images/<set>`` for ``person_keypoints_<set>.json`` (the official layout), else None."""
    match = _ANNOTATION_NAME.search(Path(annotation_file).name)
    return f"images/{match.group(1)}" if match else None


def read_syrip(
    root: str | Path,
    annotation_file: str | Path,
    image_dir: str | Path | None = None,
    *,
    domain: str = "all",
) -> list[PoseRecord]:
    """Read one SyRIP annotation file into records, one per annotation, sorted by (image id, annotation id).

    Args:
        root: dataset root (the folder holding ``annotations/`` and ``images/``).
        annotation_file: the JSON, relative to ``root`` or absolute, e.g.
            ``"annotations/200R/person_keypoints_train_infant.json"``.
        image_dir: image folder, relative to ``root`` or absolute; defaults to ``images/<set>_infant`` from
            the file name ``person_keypoints_<set>_infant.json``.
        domain: ``"all"``, ``"real"`` or ``"synthetic"``: keep records whose image has that ``is_synthetic``.

    Raises:
        DataError: at the first problem, naming the file and the image or annotation id: not COCO, keypoints
            not 51 finite numbers, bad visibility flag or bbox, duplicate ids, an annotation for an unknown
            image, a file name escaping the dataset root, a missing image file.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    parsed = parse_syrip(root, annotation_file, image_dir, Reporter())
    assert parsed is not None  # a raising reporter never lets parse_syrip give up quietly
    if domain == "all":
        return parsed.records
    return [r for r in parsed.records if r.domain == domain]


def parse_syrip(
    root: str | Path,
    annotation_file: str | Path,
    image_dir: str | Path | None,
    report: Reporter,
) -> SyripFile | None:
    """Validate one annotation file, sending every problem to ``report``; None when the file is unusable.

    Entries with a problem are reported and left out; annotations of an image already reported are skipped
    without a second message.
    """
    root = Path(root).absolute()
    ann_path = Path(annotation_file)
    ann_path = (ann_path if ann_path.is_absolute() else root / ann_path).absolute()
    if not ann_path.is_file():  # a FIFO would block json.load forever, a link to /dev/zero never end
        report(
            ann_path,
            "annotation file is not a regular file" if ann_path.exists() else "annotation file missing",
        )
        return None
    if image_dir is None:
        image_dir = default_image_dir(ann_path)
        if image_dir is None:
            report(
                ann_path,
                "cannot derive the image folder: the file is not named "
                "person_keypoints_<set>.json; pass image_dir",
            )
            return None
    image_root = Path(image_dir)
    image_root = (image_root if image_root.is_absolute() else root / image_root).absolute()

    data = _load_json(ann_path, report)
    if data is None:
        return None
    out = SyripFile(path=ann_path, image_dir=image_root)
    out.num_images, out.num_annotations = len(data["images"]), len(data["annotations"])
    categories = _category_ids(ann_path, data["categories"], report)

    dir_exists = image_root.is_dir()
    if not dir_exists:
        report(image_root, f"image folder missing (images of {ann_path.name})")
    # Where image files may resolve to: the dataset root, or the image folder when it is a link to elsewhere.
    allowed = (root.resolve(), image_root.resolve())

    rejected: set[int] = set()  # image ids already reported: their annotations are skipped silently
    first_index: dict[int, int] = {}
    first_file: dict[str, int] = {}
    for i, entry in enumerate(data["images"]):
        image = _parse_image(
            entry, i, ann_path, image_root, allowed, dir_exists, first_index, first_file, report
        )
        if isinstance(image, SyripImage):
            out.images[image.image_id] = image
        elif isinstance(image, int):
            rejected.add(image)

    seen_ann: dict[int, int] = {}
    for i, entry in enumerate(data["annotations"]):
        record = _parse_annotation(entry, i, ann_path, out.images, rejected, categories, seen_ann, report)
        if record is not None:
            record.maps_path = maps_path_for(root, record.image_path)
            out.records.append(record)
    out.records.sort(key=lambda r: (r.image_id, r.annotation_id))
    return out


def _load_json(path: Path, report: Reporter) -> dict[str, Any] | None:
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError, an int of over 4300 digits
        report(path, f"cannot read the annotation file as JSON: {e}")
        return None
    except RecursionError:
        report(path, "cannot read the annotation file as JSON: values nested too deeply")
        return None
    if not isinstance(data, dict):
        report(path, f"not COCO: the top level is a {type(data).__name__}, expected an object")
        return None
    missing = [key for key in ("images", "annotations", "categories") if key not in data]
    if missing:
        report(path, f"not COCO: missing top-level key(s) {', '.join(map(repr, missing))}")
        return None
    wrong = [key for key in ("images", "annotations", "categories") if not isinstance(data[key], list)]
    if wrong:
        report(path, f"not COCO: {', '.join(map(repr, wrong))} must be list(s)")
        return None
    return data


def _category_ids(path: Path, categories: list, report: Reporter) -> set[int]:
    ids: set[int] = set()
    for i, cat in enumerate(categories):
        if isinstance(cat, dict) and _is_int(cat.get("id")):
            ids.add(cat["id"])
        else:
            report(path, "category is not an object with an integer 'id'", f"categories[{i}]")
    return ids


def _parse_image(
    entry: Any,
    index: int,
    ann_path: Path,
    image_root: Path,
    allowed: tuple[Path, Path],
    dir_exists: bool,
    first_index: dict[int, int],
    first_file: dict[str, int],
    report: Reporter,
) -> SyripImage | int | None:
    """A valid image, or its id when it was rejected (None when it has no usable id)."""
    where = f"images[{index}]"
    if not isinstance(entry, dict):
        report(ann_path, f"not COCO: image entry is a {type(entry).__name__}, expected an object", where)
        return None
    image_id = entry.get("id")
    if not _is_int(image_id):
        report(ann_path, f"not COCO: image 'id' is {_brief(image_id)}, expected an integer", where)
        return None
    where = f"image {image_id}"
    if image_id in first_index:
        report(
            ann_path, f"duplicate image id {image_id} (images[{first_index[image_id]}] and [{index}])", where
        )
        return None  # the first entry stands; this one is not used
    first_index[image_id] = index

    ok = True
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        report(ann_path, f"not COCO: 'file_name' is {_brief(file_name)}, expected a non-empty string", where)
        ok = False
    width, height = entry.get("width"), entry.get("height")
    for key, value in (("width", width), ("height", height)):
        if not _is_int(value) or not 0 < value <= MAX_IMAGE_SIDE:
            expected = f"expected a positive integer (at most {MAX_IMAGE_SIDE})"
            report(ann_path, f"not COCO: '{key}' is {_brief(value)}, {expected}", where)
            ok = False
    is_synthetic = entry.get("is_synthetic", False)
    if not isinstance(is_synthetic, bool) and is_synthetic not in (0, 1):
        report(ann_path, f"'is_synthetic' is {_brief(is_synthetic)}, expected true or false", where)
        ok = False
    if not ok:
        return image_id

    path = _safe_image_path(file_name, image_root, allowed, ann_path, where, report)
    if path is None:
        return image_id
    if file_name in first_file:
        report(
            ann_path, f"file name {_brief(file_name)} is also used by image {first_file[file_name]}", where
        )
        return image_id
    first_file[file_name] = image_id
    try:
        exists = path.is_file()
    except OSError as e:  # a name the filesystem cannot hold (ENAMETOOLONG) is not just "missing"
        report(ann_path, f"file name {_brief(file_name)} cannot be looked up: {e.strerror}", where)
        return image_id
    if dir_exists and not exists:
        missing = "is not a regular file" if path.exists() else "missing"
        report(path, f"image file {missing} (listed in {ann_path.name})", where)
    return SyripImage(image_id, path, width, height, bool(is_synthetic), exists)


def _safe_image_path(
    file_name: str, image_root: Path, allowed: tuple[Path, Path], ann_path: Path, where: str, report: Reporter
) -> Path | None:
    """``image_root / file_name``, or None when the name is absolute, climbs out of the image folder with
    ``..``, or resolves (through a symlink) outside the dataset root."""
    try:
        os.fsencode(file_name)
        unusable = "\x00" in file_name
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in the JSON) cannot name a file
        unusable = True
    if unusable:
        report(ann_path, f"file name {_brief(file_name)} is not a valid file name", where)
        return None
    if PurePosixPath(file_name).is_absolute() or PureWindowsPath(file_name).is_absolute():
        report(
            ann_path,
            f"file name {_brief(file_name)} is absolute: COCO file names are relative to the image folder",
            where,
        )
        return None
    if posixpath.normpath(file_name.replace("\\", "/")).split("/")[0] == "..":
        report(ann_path, f"file name {_brief(file_name)} escapes the image folder with '..'", where)
        return None
    path = image_root / file_name
    real = path.resolve()
    if not any(real.is_relative_to(base) for base in allowed):
        report(
            ann_path,
            f"file name {_brief(file_name)} escapes the dataset root through a symlink (resolves to {real})",
            where,
        )
        return None
    return path


def _parse_annotation(
    entry: Any,
    index: int,
    ann_path: Path,
    images: dict[int, SyripImage],
    rejected: set[int],
    categories: set[int],
    seen: dict[int, int],
    report: Reporter,
) -> PoseRecord | None:
    where = f"annotations[{index}]"
    if not isinstance(entry, dict):
        report(ann_path, f"not COCO: annotation entry is a {type(entry).__name__}, expected an object", where)
        return None
    ann_id = entry.get("id")
    if not _is_int(ann_id):
        report(ann_path, f"not COCO: annotation 'id' is {_brief(ann_id)}, expected an integer", where)
        return None
    where = f"annotation {ann_id}"
    ok = True
    if ann_id in seen:
        report(
            ann_path, f"duplicate annotation id {ann_id} (annotations[{seen[ann_id]}] and [{index}])", where
        )
        ok = False  # its content is still checked below, but only the first one becomes a record
    else:
        seen[ann_id] = index

    image_id = entry.get("image_id")
    image = None
    if not _is_int(image_id):
        report(ann_path, f"not COCO: 'image_id' is {_brief(image_id)}, expected an integer", where)
        ok = False
    elif image_id in images:
        image = images[image_id]
    elif image_id in rejected:
        ok = False  # the image entry was reported already
    else:
        report(ann_path, f"annotation for image id {image_id}, which is not in 'images'", where)
        ok = False
    category = entry.get("category_id")
    if categories and (not _is_int(category) or category not in categories):
        report(ann_path, f"'category_id' {_brief(category)} is not in 'categories'", where)
        ok = False
    iscrowd = entry.get("iscrowd", 0)
    if iscrowd not in (0, 1):  # anything else would silently drop the annotation as a crowd
        report(ann_path, f"'iscrowd' is {_brief(iscrowd)}, expected 0 or 1", where)
        ok = False
    elif iscrowd:
        return None  # crowd regions carry no keypoints: not a single-person pose target

    keypoints = _parse_keypoints(entry.get("keypoints"), ann_path, where, report)
    bbox = _parse_bbox(entry.get("bbox"), ann_path, where, report)
    area = entry.get("area")
    if area is not None and (not _is_number(area) or not math.isfinite(_as_float(area)) or area < 0):
        report(ann_path, f"'area' is {_brief(area)}, expected a finite non-negative number", where)
        ok = False
    if not ok or image is None or keypoints is None or bbox is None:
        return None

    xy, v = keypoints[:, :2], keypoints[:, 2]
    placeholder = np.all(xy == np.asarray(PLACEHOLDER_XY), axis=1)
    labelled = (v > 0) & ~placeholder
    xy = np.where(labelled[:, None], xy, 0.0)
    box_area = float(bbox[2] * bbox[3])
    return PoseRecord(
        image_path=image.path,
        keypoints=xy.astype(np.float32),
        labelled=labelled,
        visible=labelled & (v == 2),
        bbox=bbox.astype(np.float32),
        width=image.width,
        height=image.height,
        image_id=image.image_id,
        domain="synthetic" if image.is_synthetic else "real",
        area=None if area is None else float(area),
        area_suspect=area is not None and abs(float(area) - box_area) > AREA_TOLERANCE * box_area,
        annotation_id=ann_id,
        source=ann_path,
    )


def _parse_keypoints(values: Any, ann_path: Path, where: str, report: Reporter) -> np.ndarray | None:
    """``(17, 3)`` float64 ``x, y, v`` from the flat COCO list, or None after reporting why not."""
    if not isinstance(values, list) or len(values) != _NUM_VALUES:
        got = f"{len(values)} values" if isinstance(values, list) else repr(type(values).__name__)
        report(ann_path, f"'keypoints' has {got}, expected {_NUM_VALUES} numbers (17 x [x, y, v])", where)
        return None
    bad = [i for i, value in enumerate(values) if not _is_number(value)]
    if bad:
        report(ann_path, f"'keypoints' value {bad[0]} is {_brief(values[bad[0]])}, not a number", where)
        return None
    kpts = np.array([_as_float(v) for v in values]).reshape(COCO17.num_keypoints, 3)
    ok = True
    for k, axis in zip(*np.nonzero(~(np.abs(kpts) <= _FLOAT32_MAX)), strict=True):
        value = values[3 * k + axis]
        beyond = ", beyond the float32 range" if isinstance(value, int) or math.isfinite(value) else ""
        report(ann_path, f"keypoint {k} ({COCO17.names[k]}): {'xyv'[axis]} is {_brief(value)}{beyond}", where)
        ok = False
    for k in np.nonzero(np.isfinite(kpts[:, 2]) & ~np.isin(kpts[:, 2], (0, 1, 2)))[0]:
        report(
            ann_path, f"keypoint {k} ({COCO17.names[k]}): visibility {kpts[k, 2]:g} is not 0, 1 or 2", where
        )
        ok = False
    return kpts if ok else None


def _parse_bbox(values: Any, ann_path: Path, where: str, report: Reporter) -> np.ndarray | None:
    if not isinstance(values, list) or len(values) != 4 or not all(_is_number(v) for v in values):
        report(ann_path, f"'bbox' is {_brief(values)}, expected 4 numbers [x, y, w, h]", where)
        return None
    box = np.array([_as_float(v) for v in values])
    if not np.isfinite(box).all():
        report(ann_path, f"'bbox' {_brief(values)} is not finite", where)
        return None
    if (np.abs(box) > _FLOAT32_MAX).any():
        report(ann_path, f"'bbox' {_brief(values)} is beyond the float32 range", where)
        return None
    w, h = box[2:].astype(np.float32)  # as the record will hold them: 1e-50 is 0 in float32
    if w <= 0 or h <= 0:
        report(ann_path, f"'bbox' {_brief(values)} has a zero or negative size (w={w:g}, h={h:g})", where)
        return None
    return box


def _as_float(value: int | float) -> float:
    """A JSON number as a float; an integer too large for a float becomes +-inf (and is reported)."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _brief(value: Any) -> str:
    return _BRIEF.repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
