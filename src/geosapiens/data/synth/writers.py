"""Writers of the real dataset formats (MINI-RGBD trees, SyRIP COCO-keypoints JSON) and the geometry maps.

Everything written is byte-deterministic: images go through OpenCV's encoders with fixed parameters, JSON
is dumped with fixed separators and rounded floats, and the ``.npz`` maps are zip files with fixed
timestamps (``numpy.savez`` would stamp the current time).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np

from geosapiens.data.records import MAPS_DIRNAME
from geosapiens.data.synth.body import COCO17_FROM_NODES, NUM_JOINTS
from geosapiens.data.synth.scene import RenderedFrame
from geosapiens.skeleton import COCO17

__all__ = [
    "write_image",
    "write_maps",
    "maps_path",
    "mini_rgbd_paths",
    "write_mini_rgbd_frame",
    "coco_keypoints",
    "coco_bbox",
    "coco_entries",
    "coco_categories",
    "write_json",
]

PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def write_image(path: Path, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an RGB (H, W, 3) uint8 image, or a single-channel uint8/uint16 one, as PNG or JPEG by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
    else:
        ok, buf = cv2.imencode(".png", image, PNG_PARAMS)
    if not ok:
        raise OSError(f"{path}: OpenCV could not encode the image")
    path.write_bytes(buf.tobytes())


def maps_path(root: Path, image_path: Path) -> Path:
    """``<root>/geosapiens_maps/<image path relative to root>.npz`` (API.md's side-folder convention)."""
    return root / MAPS_DIRNAME / Path(image_path).relative_to(root).with_suffix(".npz")


def write_maps(path: Path, frame: RenderedFrame) -> None:
    """Rendered geometry as ``.npz``: ``depth`` float32 mm (0 off the infant), ``normals`` float16
    camera-frame unit vectors (0 off the infant), ``mask`` uint8 (1 = infant)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "depth": frame.body_depth.astype(np.float32),
        "normals": frame.normals.astype(np.float16),
        "mask": frame.mask.astype(np.uint8),
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue(), compresslevel=1)


def mini_rgbd_paths(root: Path, sequence: str, index: int) -> dict[str, Path]:
    """The five files of one MINI-RGBD frame (reference/datasets.md §1.2)."""
    seq = root / sequence
    return {
        "rgb": seq / "rgb" / f"syn_{index:05d}.png",
        "depth": seq / "depth" / f"syn_{index:05d}_depth.png",
        "mask": seq / "fg_mask" / f"mask_{index:05d}.png",
        "joints_2d": seq / "joints_2Ddep" / f"syn_joints_2Ddep_{index:05d}.txt",
        "joints_3d": seq / "joints_3D" / f"syn_joints_3D_{index:05d}.txt",
    }


def write_mini_rgbd_frame(root: Path, sequence: str, index: int, frame: RenderedFrame) -> None:
    """One MINI-RGBD frame: RGB PNG, uint16 depth PNG (mm), 0/255 mask PNG, 25-joint text files, maps.

    ``joints_2Ddep`` lines are ``x y depth id`` (pixels, depth in mm = 1000 z); ``joints_3D`` lines are
    ``x y z id`` in metres, camera frame (x right, y down, z forward), so that projecting the 3D joints with
    the intrinsics gives the 2D ones.
    """
    paths = mini_rgbd_paths(root, sequence, index)
    write_image(paths["rgb"], frame.rgb)
    write_image(paths["depth"], np.clip(np.rint(frame.depth), 0, 65535).astype(np.uint16))
    write_image(paths["mask"], frame.mask * np.uint8(255))
    xyz = frame.nodes_cam[:NUM_JOINTS]
    uv = frame.nodes_2d[:NUM_JOINTS]
    lines_2d = [
        f"{u:.4f} {v:.4f} {1000.0 * p[2]:.3f} {j}" for j, ((u, v), p) in enumerate(zip(uv, xyz, strict=True))
    ]
    lines_3d = [f"{x:.6f} {y:.6f} {z:.6f} {j}" for j, (x, y, z) in enumerate(xyz)]
    for key, lines in (("joints_2d", lines_2d), ("joints_3d", lines_3d)):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        paths[key].write_text("\n".join(lines) + "\n")
    write_maps(maps_path(root, paths["rgb"]), frame)


def coco_keypoints(frame: RenderedFrame) -> np.ndarray:
    """(17, 3) COCO keypoints x, y, v: 2 visible, 1 occluded (depth test), 0 outside the image (x=y=0)."""
    idx = list(COCO17_FROM_NODES)
    kp = np.zeros((len(idx), 3))
    inside = frame.in_image[idx]
    kp[inside, :2] = frame.nodes_2d[idx][inside]
    kp[inside, 2] = np.where(frame.visible[idx][inside], 2, 1)
    return kp


def coco_bbox(frame: RenderedFrame, keypoints: np.ndarray) -> list[float]:
    """Tight box (x, y, w, h) of the infant mask, grown to hold every in-image keypoint (occluded ones too).

    Pixel centres sit at integer coordinates, so mask columns ``c0..c1`` span ``[c0 - 0.5, c1 + 0.5]``: the
    same box the MINI-RGBD reader derives from a foreground mask.
    """
    ys, xs = np.nonzero(frame.mask)
    labelled = keypoints[keypoints[:, 2] > 0, :2]
    corners = (
        [np.array([[xs.min() - 0.5, ys.min() - 0.5], [xs.max() + 0.5, ys.max() + 0.5]])] if xs.size else []
    )
    corners += [labelled] if len(labelled) else []
    if not corners:
        return [0.0, 0.0, 0.0, 0.0]
    pts = np.concatenate(corners)
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    return [round(float(x0), 2), round(float(y0), 2), round(float(x1 - x0), 2), round(float(y1 - y0), 2)]


def coco_entries(
    frame: RenderedFrame, image_id: int, file_name: str, synthetic: bool, posture: str
) -> tuple[dict, dict]:
    """SyRIP-schema ``images[]`` and ``annotations[]`` entries (reference/datasets.md §2.4) for one still.

    ``area`` is bbox w*h (the convention of SyRIP's clean ``validate100`` file).
    """
    height, width = frame.mask.shape
    kp = coco_keypoints(frame)
    bbox = coco_bbox(frame, kp)
    image = {
        "id": image_id,
        "file_name": file_name,
        "width": int(width),
        "height": int(height),
        "is_synthetic": bool(synthetic),
        "is_labeled": True,
        "frame_id": 0,
        "nframes": 1,
        "original_file_name": file_name,
        "image_source": "geosapiens-synth",
        "posture": posture,
    }
    annotation = {
        "id": image_id,
        "image_id": image_id,
        "category_id": 1,
        "keypoints": [round(float(v), 2) if k % 3 < 2 else int(v) for k, v in enumerate(kp.reshape(-1))],
        "num_keypoints": int((kp[:, 2] > 0).sum()),
        "bbox": bbox,
        "area": round(bbox[2] * bbox[3], 2),
        "iscrowd": 0,
        "segmentation": [],
        "bbox_head": [],
        "scores": [],
        "track_id": 0,
    }
    return image, annotation


def coco_categories() -> list[dict]:
    """SyRIP's single ``person`` category with the COCO-17 names and 1-based skeleton."""
    return [
        {
            "supercategory": "person",
            "id": 1,
            "name": "person",
            "keypoints": list(COCO17.names),
            "skeleton": [[a + 1, b + 1] for a, b in COCO17.limbs],
        }
    ]


def write_json(path: Path, images: list[dict], annotations: list[dict]) -> None:
    """A COCO-keypoints file, entries sorted by id, compact and deterministic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "images": sorted(images, key=lambda e: e["id"]),
        "annotations": sorted(annotations, key=lambda e: e["id"]),
        "categories": coco_categories(),
    }
    path.write_text(json.dumps(doc, separators=(",", ":")))
