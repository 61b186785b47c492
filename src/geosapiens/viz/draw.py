"""Pictures drawn with OpenCV: skeleton overlays, depth/normal colour maps, contact sheets, PNG files.

Shared by training callbacks, the report and deployment, so that all of them draw the same way.
Images are ``(H, W, 3)`` uint8 **RGB** throughout (OpenCV is only used for rasterising and encoding, BGR
conversion happens at the file boundary in :func:`save_png`). Keypoints are ``(K, 2)`` pixel coordinates with
pixel centres at integer coordinates, the project convention, drawn with sub-pixel precision.

Plots live in :mod:`geosapiens.viz.plots`; drawing needs only OpenCV, so training works without matplotlib.

Note:
    K: keypoints, H x W: image size, B: batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from geosapiens.models.preprocess import SAPIENS_MEAN, SAPIENS_STD
from geosapiens.skeleton import COCO17

__all__ = [
    "LEFT_COLOR",
    "RIGHT_COLOR",
    "CENTER_COLOR",
    "keypoint_sides",
    "draw_skeleton",
    "depth_to_rgb",
    "normals_to_rgb",
    "denormalize_image",
    "contact_sheet",
    "encode_png",
    "save_png",
    "read_png",
]

# RGB. Left orange, right blue, central joints and limbs green (mmpose's COCO palette does the same split).
LEFT_COLOR: tuple[int, int, int] = (255, 128, 0)
RIGHT_COLOR: tuple[int, int, int] = (0, 128, 255)
CENTER_COLOR: tuple[int, int, int] = (0, 220, 0)

# Sapiens normalisation on 0-255 RGB (reference/sapiens.md §5); the datasets normalise with the same values.

_SHIFT = 4  # OpenCV fixed-point bits: coordinates are drawn at 1/16 px precision
_SIDES = ("left", "right", "center")


def keypoint_sides(names: Sequence[str]) -> tuple[str, ...]:
    """``"left"``, ``"right"`` or ``"center"`` per keypoint name (``left_*``, ``l_*``, ``leftThigh``...)."""
    sides = []
    for name in names:
        low = name.lower()
        if low.startswith(("left", "l_")):
            sides.append("left")
        elif low.startswith(("right", "r_")):
            sides.append("right")
        else:
            sides.append("center")
    return tuple(sides)


def _limb_side(a: str, b: str) -> str:
    """A limb is left/right when its lateral endpoints all are; a limb across the body is central."""
    lateral = {a, b} - {"center"}
    return lateral.pop() if len(lateral) == 1 else "center"


def _shown(
    keypoints: np.ndarray, scores_or_mask: np.ndarray | torch.Tensor | None, threshold: float
) -> np.ndarray:
    """``(K,)`` bool: finite keypoints whose mask is True or whose score reaches ``threshold``."""
    shown = np.isfinite(keypoints).all(axis=-1)
    if scores_or_mask is None:
        return shown
    s = np.asarray(
        scores_or_mask.detach().cpu() if isinstance(scores_or_mask, torch.Tensor) else scores_or_mask
    )
    if s.shape != shown.shape:
        raise ValueError(f"draw_skeleton: scores_or_mask {s.shape} must be (K,) = {shown.shape}")
    return shown & (s if s.dtype == bool else np.nan_to_num(s.astype(np.float64), nan=-np.inf) >= threshold)


def _fixed(point: np.ndarray) -> tuple[int, int]:
    return int(round(point[0] * (1 << _SHIFT))), int(round(point[1] * (1 << _SHIFT)))


def draw_skeleton(
    image_rgb: np.ndarray,
    keypoints: np.ndarray | torch.Tensor,
    scores_or_mask: np.ndarray | torch.Tensor | None = None,
    limbs: Sequence[tuple[int, int]] = COCO17.limbs,
    *,
    names: Sequence[str] = COCO17.names,
    threshold: float = 0.3,
    colors: Mapping[str, tuple[int, int, int]] | None = None,
    thickness: int = 2,
    radius: int = 3,
    alpha: float = 1.0,
) -> np.ndarray:
    """Draw limbs, then joints, on a copy of ``image_rgb``; left and right sides in different colours.

    Args:
        image_rgb: ``(H, W, 3)`` uint8 RGB.
        keypoints: ``(K, 2)`` pixel coordinates (NaN = not drawn).
        scores_or_mask: ``(K,)`` bool mask of joints to draw, or float scores (drawn when ``>= threshold``);
            None draws every finite joint. A limb is drawn when both its joints are.
        limbs: joint index pairs.
        names: keypoint names; their ``left``/``right`` prefixes choose the colours.
        threshold: score threshold for float ``scores_or_mask``.
        colors: ``{"left", "right", "center"}`` RGB colours (default :data:`LEFT_COLOR` etc.).
        thickness: limb width in pixels.
        radius: joint disc radius in pixels.
        alpha: opacity of the drawing (e.g. 0.5 for a dimmed ground truth under a prediction).

    Returns:
        ``(H, W, 3)`` uint8 RGB; the input is not modified.
    """
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(
            f"draw_skeleton: image must be (H, W, 3) uint8, got {image_rgb.shape} {image_rgb.dtype}"
        )
    kp = np.asarray(
        keypoints.detach().cpu() if isinstance(keypoints, torch.Tensor) else keypoints, np.float64
    )
    if kp.ndim != 2 or kp.shape[1] != 2 or kp.shape[0] != len(names):
        raise ValueError(f"draw_skeleton: keypoints must be (K, 2) with K = {len(names)}, got {kp.shape}")
    palette = {"left": LEFT_COLOR, "right": RIGHT_COLOR, "center": CENTER_COLOR} | dict(colors or {})
    sides = keypoint_sides(names)
    shown = _shown(kp, scores_or_mask, threshold)

    canvas = np.ascontiguousarray(image_rgb).copy()
    for a, b in limbs:
        if shown[a] and shown[b]:
            color = palette[_limb_side(sides[a], sides[b])]
            cv2.line(canvas, _fixed(kp[a]), _fixed(kp[b]), color, thickness, cv2.LINE_AA, _SHIFT)
    for j in np.flatnonzero(shown):
        cv2.circle(canvas, _fixed(kp[j]), radius << _SHIFT, palette[sides[j]], -1, cv2.LINE_AA, _SHIFT)
    if alpha >= 1.0:
        return canvas
    # Undrawn pixels are equal in both images, so the blend only dims the drawing.
    return cv2.addWeighted(canvas, float(alpha), image_rgb, 1.0 - float(alpha), 0.0)


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def depth_to_rgb(
    depth: np.ndarray | torch.Tensor,
    mask: np.ndarray | torch.Tensor | None = None,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    colormap: int = cv2.COLORMAP_TURBO,
) -> np.ndarray:
    """Colour a depth map: near = red end of the colormap, far = blue end, outside ``mask`` black.

    Args:
        depth: ``(H, W)`` (or ``(1, H, W)``) depth, any unit; larger = farther.
        mask: ``(H, W)`` bool, where depth is meaningful (default: finite values). For millimetre depth
            files where 0 means no data, pass ``depth > 0``.
        vmin, vmax: depth range mapped onto the colormap (default: min/max over the mask).
        colormap: an OpenCV colormap id.

    Returns:
        ``(H, W, 3)`` uint8 RGB.
    """
    d = _as_numpy(depth).astype(np.float64)
    d = d[0] if d.ndim == 3 and d.shape[0] == 1 else d
    if d.ndim != 2:
        raise ValueError(f"depth_to_rgb: depth must be (H, W), got {d.shape}")
    valid = np.isfinite(d)
    if mask is not None:
        m = _as_numpy(mask).astype(bool)
        valid &= m[0] if m.ndim == 3 and m.shape[0] == 1 else m
    out = np.zeros((*d.shape, 3), np.uint8)
    if not valid.any():
        return out
    lo = float(d[valid].min()) if vmin is None else float(vmin)
    hi = float(d[valid].max()) if vmax is None else float(vmax)
    t = np.clip((d - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(d)
    levels = np.round((1.0 - np.nan_to_num(t)) * 255).astype(np.uint8)  # near -> 255 (red in TURBO)
    colored = cv2.cvtColor(cv2.applyColorMap(levels, colormap), cv2.COLOR_BGR2RGB)
    out[valid] = colored[valid]
    return out


def normals_to_rgb(
    normals: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor | None = None
) -> np.ndarray:
    """The usual normal-map colouring ``rgb = (n + 1) / 2``: x right -> red, y down -> green, z -> blue.

    Args:
        normals: ``(H, W, 3)`` or ``(3, H, W)`` unit normals.
        mask: ``(H, W)`` bool (default: non-zero normals); black outside.

    Returns:
        ``(H, W, 3)`` uint8 RGB (a component of -1 maps to 0, 0 to 128, 1 to 255).
    """
    n = _as_numpy(normals).astype(np.float64)
    if n.ndim == 3 and n.shape[0] == 3 and n.shape[2] != 3:
        n = n.transpose(1, 2, 0)
    if n.ndim != 3 or n.shape[2] != 3:
        raise ValueError(f"normals_to_rgb: normals must be (H, W, 3) or (3, H, W), got {n.shape}")
    valid = np.isfinite(n).all(axis=-1) & (np.abs(np.nan_to_num(n)).sum(axis=-1) > 0)
    if mask is not None:
        m = _as_numpy(mask).astype(bool)
        valid &= m[0] if m.ndim == 3 and m.shape[0] == 1 else m
    rgb = np.round((np.clip(np.nan_to_num(n), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def denormalize_image(
    tensor: torch.Tensor, mean: Sequence[float] = SAPIENS_MEAN, std: Sequence[float] = SAPIENS_STD
) -> np.ndarray:
    """Undo the model-input normalisation: ``(3, H, W)`` -> ``(H, W, 3)``, or ``(B, 3, H, W)`` ->
    ``(B, H, W, 3)``, uint8 RGB (rounded and clipped to 0-255)."""
    if tensor.ndim not in (3, 4) or tensor.shape[-3] != 3:
        raise ValueError(f"denormalize_image: expected (3, H, W) or (B, 3, H, W), got {tuple(tensor.shape)}")
    t = tensor.detach().float().cpu()
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    rgb = (t * s + m).round().clamp(0, 255).to(torch.uint8)
    return rgb.movedim(-3, -1).contiguous().numpy()


def _as_rgb_tile(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"contact_sheet: images must be (H, W[, 3]) uint8, got {img.shape} {img.dtype}")
    return img


def contact_sheet(
    images: Sequence[np.ndarray],
    cols: int,
    labels: Sequence[str] | None = None,
    *,
    pad: int = 2,
    background: int = 0,
    font_scale: float = 0.4,
) -> np.ndarray:
    """Tile images row-major into one uint8 RGB image.

    Every cell is ``(max H, max W)`` of the inputs; images sit at the cell's top-left, ``pad`` pixels of
    ``background`` between and around cells. A label is written at the top-left of its cell on a dark strip.

    Returns:
        ``(rows * (Hc + pad) + pad, cols * (Wc + pad) + pad, 3)`` uint8 with ``rows = ceil(N / cols)``.
    """
    if not images:
        raise ValueError("contact_sheet: no images")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"contact_sheet: {len(labels)} labels for {len(images)} images")
    tiles = [_as_rgb_tile(im) for im in images]
    cols = max(1, min(int(cols), len(tiles)))
    rows = -(-len(tiles) // cols)
    ch = max(t.shape[0] for t in tiles)
    cw = max(t.shape[1] for t in tiles)
    sheet = np.full((rows * (ch + pad) + pad, cols * (cw + pad) + pad, 3), background, np.uint8)
    for i, tile in enumerate(tiles):
        y0 = pad + (i // cols) * (ch + pad)
        x0 = pad + (i % cols) * (cw + pad)
        sheet[y0 : y0 + tile.shape[0], x0 : x0 + tile.shape[1]] = tile
        if labels is not None and labels[i]:
            (tw, th), base = cv2.getTextSize(labels[i], cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
            cv2.rectangle(sheet, (x0, y0), (x0 + min(tw + 4, cw) - 1, y0 + th + base + 3), (0, 0, 0), -1)
            cv2.putText(
                sheet,
                labels[i],
                (x0 + 2, y0 + th + 2),
                cv2.FONT_HERSHEY_SIMPLEX,
                font_scale,
                (255, 255, 255),
                1,
                cv2.LINE_AA,
            )
    return sheet


def encode_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` grey)."""
    img = np.asarray(rgb)
    if img.dtype != np.uint8 or img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] != 3):
        raise ValueError(f"encode_png: expected (H, W[, 3]) uint8, got {img.shape} {img.dtype}")
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img)
    if not ok:
        raise ValueError(f"encode_png: OpenCV could not encode a {img.shape} image")
    return encoded.tobytes()


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write ``(H, W, 3)`` uint8 RGB (or ``(H, W)`` grey) as PNG, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(rgb))
    return path


def read_png(path: str | Path) -> np.ndarray:
    """Read an image file as ``(H, W, 3)`` uint8 RGB (the inverse of :func:`save_png`)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"{path}: not a readable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
