"""The oracle critic: rendered ground-truth geometry in place of a model's estimate (an ablation upper bound).

It answers the critic's question for rendered data only: the procedural generator's
``geosapiens_maps/*.npz`` side files (depth in mm, camera-frame unit normals, body mask), or MINI-RGBD's depth
PNGs, whose normals are derived from depth with the camera intrinsics
(:func:`~geosapiens.models.geometry.normals_from_depth`). Maps are warped into the crop with the crop affine
and the depth is put through the same :func:`~geosapiens.models.geometry.normalize_relative_depth` as every
other critic, so swapping the oracle for
Sapiens changes the estimate, never the units.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from geosapiens.data.records import PoseRecord
from geosapiens.errors import DataError
from geosapiens.models.critics import GeometryMaps
from geosapiens.models.geometry import normalize_relative_depth, normals_from_depth, warp_maps

__all__ = ["OracleCritic", "load_rendered_geometry"]


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(path, f"cannot read rendered maps: {err}") from err
    missing = {"depth", "normals", "mask"} - set(arrays)
    if missing:
        raise DataError(path, f"rendered maps lack {sorted(missing)} (has {sorted(arrays)})")
    depth, normals, mask = arrays["depth"], arrays["normals"], arrays["mask"]
    if depth.ndim != 2 or normals.shape != (*depth.shape, 3) or mask.shape != depth.shape:
        raise DataError(
            path,
            f"rendered maps disagree in shape: depth {depth.shape}, normals {normals.shape}, "
            f"mask {mask.shape} (want HxW, HxWx3, HxW)",
        )
    normals = normals.astype(np.float32)
    valid = (mask > 0) & (depth > 0) & (np.linalg.norm(normals, axis=-1) > 0.5)
    return depth.astype(np.float32), normals, valid


def _read_depth_png(
    record: PoseRecord, intrinsics: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import cv2

    path = Path(record.depth_path)
    depth = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if depth is None or depth.ndim != 2:
        raise DataError(path, "cannot read a single-channel depth PNG (uint16 millimetres)")
    valid = depth > 0
    if record.mask_path is not None:
        mask = cv2.imread(str(record.mask_path), cv2.IMREAD_GRAYSCALE)
        if mask is None or mask.shape != depth.shape:
            raise DataError(record.mask_path, f"foreground mask unreadable or not {depth.shape}")
        valid &= mask > 0
    K = record.extra.get("intrinsics", intrinsics)
    if K is None:
        raise DataError(
            path,
            "depth without normals needs camera intrinsics to derive normals; none given",
            record=record.image_id,
        )
    normals, valid = normals_from_depth(depth.astype(np.float32), valid, np.asarray(K, dtype=np.float64))
    return depth.astype(np.float32), normals, valid


def load_rendered_geometry(
    record: PoseRecord, intrinsics: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground-truth geometry of a record's image in the image frame.

    Args:
        record: with ``maps_path`` (generator output) or ``depth_path`` (MINI-RGBD; ``mask_path`` optional).
        intrinsics: (3, 3) camera matrix for depth-only records (``record.extra["intrinsics"]`` wins).

    Returns:
        depth (H, W) float32 mm, normals (H, W, 3) float32 camera frame, valid (H, W) bool.
    """
    if record.maps_path is not None:
        return _read_npz(Path(record.maps_path))
    if record.depth_path is not None:
        return _read_depth_png(record, intrinsics)
    raise DataError(
        record.image_path,
        "no rendered geometry for the oracle critic (neither a geosapiens_maps .npz nor a depth PNG)",
        record=record.image_id,
    )


class OracleCritic:
    """Rendered ground truth as a critic, for ablations on synthetic data.

    It cannot run on pixels, so it is not a :class:`~geosapiens.models.critics.GeometricCritic`: it takes the
    records and their crop affines instead of images, and is normally consumed through the critic cache
    (``geosapiens critics cache --critic oracle``), after which training cannot tell it from a model.

    Args:
        intrinsics: (3, 3) camera matrix used to derive normals for depth-only sources (MINI-RGBD).
    """

    kind = "oracle"

    def __init__(self, intrinsics: np.ndarray | None = None) -> None:
        self.intrinsics = None if intrinsics is None else np.asarray(intrinsics, dtype=np.float64)

    def image_maps(self, record: PoseRecord) -> GeometryMaps:
        """(1, ., H, W) maps in the image frame, depth still in millimetres."""
        depth, normals, valid = load_rendered_geometry(record, self.intrinsics)
        return GeometryMaps(
            depth=torch.from_numpy(depth)[None, None],
            normals=torch.from_numpy(normals).permute(2, 0, 1)[None],
            valid=torch.from_numpy(valid)[None, None],
        )

    def focal(self, record: PoseRecord, image_width: int) -> float | None:
        """The image's horizontal focal length in px: the record's or the critic's intrinsics, else for the
        generator's maps (``maps_path``) MINI-RGBD's scaled to the image width as the generator renders."""
        K = record.extra.get("intrinsics", self.intrinsics)
        if K is not None:
            return float(np.asarray(K)[0, 0])
        if record.maps_path is not None:
            from geosapiens.data.formats.mini_rgbd import MINI_RGBD_INTRINSICS

            return float(MINI_RGBD_INTRINSICS[0, 0]) * image_width / 640.0
        return None

    @torch.no_grad()
    def maps(
        self, records: Sequence[PoseRecord], affines: torch.Tensor, out_size_hw: tuple[int, int]
    ) -> GeometryMaps:
        """Maps of each record's crop.

        Args:
            records: B records.
            affines: (B, 2, 3) image px -> crop px.
            out_size_hw: crop (H, W).

        Returns:
            GeometryMaps (B, ., H, W): depth normalised per crop, unit normals, valid.
        """
        return self.maps_and_units(records, affines, out_size_hw)[0]

    @torch.no_grad()
    def maps_and_units(
        self, records: Sequence[PoseRecord], affines: torch.Tensor, out_size_hw: tuple[int, int]
    ) -> tuple[GeometryMaps, np.ndarray]:
        """:meth:`maps` and, per crop, what its units are in millimetres (the oracle knows them).

        Returns:
            maps, and (B, 2) float64 ``(depth unit, image unit)`` in mm: the body's mean absolute deviation of
            depth about its median (one unit of the normalised depth), and the crop's longer side at the
            body's median depth (one isotropic image unit); NaN where the focal length or the body is
            unknown.
        """
        if len(records) != affines.shape[0]:
            raise ValueError(f"OracleCritic.maps: {len(records)} records for {affines.shape[0]} affines")
        H, W = int(out_size_hw[0]), int(out_size_hw[1])
        crops, units = [], np.full((len(records), 2), np.nan)
        for i, r in enumerate(records):
            image = self.image_maps(r)
            crop = warp_maps(image, affines[i : i + 1], out_size_hw)
            crops.append(crop)
            body = crop.depth[crop.valid]
            focal = self.focal(r, image.depth.shape[-1])
            if body.numel() and focal:
                median = body.double().median()
                image_px_per_crop_px = float(torch.linalg.det(affines[i, :, :2].double()).abs()) ** -0.5
                units[i] = (
                    float((body.double() - median).abs().mean()),
                    (max(H, W) - 1) * float(median) / focal * image_px_per_crop_px,
                )
        valid = torch.cat([c.valid for c in crops])
        depth = normalize_relative_depth(torch.cat([c.depth for c in crops]), valid)
        return GeometryMaps(depth=depth, normals=torch.cat([c.normals for c in crops]), valid=valid), units
