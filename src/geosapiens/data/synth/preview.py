"""Contact sheet: the same scenes rendered in both styles, with skeletons, depth and normals side by side."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from geosapiens.data.synth.body import COCO17_FROM_NODES
from geosapiens.data.synth.scene import RenderedFrame, render_frame, sample_still, stream
from geosapiens.data.synth.writers import write_image
from geosapiens.skeleton import COCO17

__all__ = ["draw_skeleton", "contact_sheet", "write_contact_sheet"]

_PREVIEW_CODE = 200
_LEFT, _RIGHT, _CENTRE = (255, 140, 0), (0, 170, 255), (60, 230, 60)


def draw_skeleton(
    image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray, labelled: np.ndarray
) -> np.ndarray:
    """Draw COCO-17 ``keypoints`` (17, 2) on RGB: filled dots visible, rings occluded, left side orange."""
    out = image.copy()
    scale = max(1, round(out.shape[1] / 320))
    pts = np.round(keypoints).astype(int)

    def colour(k: int) -> tuple[int, int, int]:
        name = COCO17.names[k]
        return _LEFT if name.startswith("left") else _RIGHT if name.startswith("right") else _CENTRE

    for a, b in COCO17.limbs:
        if labelled[a] and labelled[b]:
            cv2.line(out, tuple(pts[a]), tuple(pts[b]), colour(b), scale, cv2.LINE_AA)
    for k in range(len(pts)):
        if labelled[k]:
            cv2.circle(out, tuple(pts[k]), 2 * scale + 1, colour(k), -1 if visible[k] else scale, cv2.LINE_AA)
    return out


def _panels(frame: RenderedFrame) -> list[np.ndarray]:
    idx = list(COCO17_FROM_NODES)
    skel = draw_skeleton(frame.rgb, frame.nodes_2d[idx], frame.visible[idx], frame.in_image[idx])
    d = frame.body_depth
    on = d > 0
    depth = np.zeros_like(frame.rgb)
    if on.any():
        lo, hi = d[on].min(), d[on].max()
        norm = np.clip((d - lo) / max(hi - lo, 1.0), 0, 1)
        depth = cv2.applyColorMap((255 * (1 - norm)).astype(np.uint8), cv2.COLORMAP_VIRIDIS)
        depth = np.ascontiguousarray(depth[..., ::-1])
        depth[~on] = 0
    normals = ((frame.normals * 0.5 + 0.5) * 255 * on[..., None]).astype(np.uint8)
    return [skel, depth, normals]


def contact_sheet(seed: int = 0, rows: int = 4, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """(rows * H, 4 * W, 3) RGB: synthetic | real-like (same infant, pose and camera) | depth | normals."""
    lines = []
    for r in range(rows):
        ss = np.random.SeedSequence([seed, _PREVIEW_CODE, r])
        frames = {}
        for style in ("synthetic", "real-like"):
            scene = sample_still(ss, style, size, camera_style="real-like")
            frames[style] = render_frame(scene, stream(ss, "noise"))
        syn, depth, normals = _panels(frames["synthetic"])
        real = _panels(frames["real-like"])[0]
        tiles = [syn, real, depth, normals]
        for tile, label in zip(tiles, ("synthetic", "real-like", "depth", "normals"), strict=True):
            text = f"{label} / {scene.pose.posture}" if label in frames else label
            cv2.putText(tile, text, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        lines.append(np.concatenate(tiles, axis=1))
    return np.concatenate(lines, axis=0)


def write_contact_sheet(path: str | Path, seed: int = 0, rows: int = 4) -> Path:
    path = Path(path)
    write_image(path, contact_sheet(seed, rows))
    return path
