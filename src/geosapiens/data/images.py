"""Reading a record's image and body mask from disk: the one place pixels enter the data path.

Images are ``(H, W, 3)`` uint8 RGB; an unreadable file is a :class:`~geosapiens.errors.DataError` naming it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from geosapiens.data.records import PoseRecord
from geosapiens.errors import DataError


def read_image(path: str | Path, record: str | int | None = None) -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 RGB; a :class:`DataError` naming the file when it cannot."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        problem = "image file does not exist" if not Path(path).exists() else "cannot be decoded as an image"
        raise DataError(path, problem, record)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_record_image(record: PoseRecord) -> np.ndarray:
    """A record's image, checked against the size its annotation states: a photo replaced on disk (or one
    OpenCV rotates by its EXIF tag) would otherwise train on labels of another image, silently."""
    image = read_image(record.image_path, record.image_id)
    h, w = image.shape[:2]
    if (w, h) != (record.width, record.height):
        raise DataError(
            record.image_path,
            f"the decoded image is {w}x{h}, its annotation says "
            f"{record.width}x{record.height} (replaced file, or EXIF rotation?)",
            record.image_id,
        )
    return image


def read_mask(record: PoseRecord) -> np.ndarray:
    """The record's infant mask (H, W) uint8 {0, 1}: from ``mask_path``, else the rendered maps' ``mask``."""
    if record.mask_path is not None:
        mask = cv2.imread(str(record.mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise DataError(record.mask_path, "mask image cannot be read", record.image_id)
        return (mask > 0).astype(np.uint8)
    if record.maps_path is not None:
        try:
            with np.load(record.maps_path) as maps:
                return (maps["mask"] > 0).astype(np.uint8)
        except (OSError, KeyError, ValueError) as err:
            problem = f"cannot read 'mask' from the maps file ({err})"
            raise DataError(record.maps_path, problem, record.image_id) from err
    raise DataError(
        record.image_path,
        "a mask was requested but the record has no mask_path or maps_path",
        record.image_id,
    )
