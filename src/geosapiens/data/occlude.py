"""Cut-occlude augmentation: textured patches over random joints, labels kept, visibility cleared.

Real infants lie under blankets, behind toys and parents' hands; synthetic renders rarely show that. Pasting
background-like textures over joints teaches the model to infer occluded joints from context. The patch
textures come from a :class:`TextureBank`: crops of *other* images' backgrounds taken away from the body box
(collected as a dataset reads images, so no extra I/O) and procedural blanket-like textures (stripes,
checks, blotchy noise).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["TextureBank", "CutOcclude", "procedural_texture"]


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    a = rng.uniform(0, 255, size=3).astype(np.float32)
    b = np.clip(a + rng.normal(0, 80, size=3), 0, 255).astype(np.float32)
    return a, b


def procedural_texture(size_hw: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random blanket-like texture: stripes, checks or blotchy colour noise.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    h, w = size_hw
    kind = int(rng.integers(3))
    if kind == 2:  # blotchy noise: low-resolution colour noise, upsampled
        cells = int(rng.integers(2, 9))
        low = rng.uniform(0, 255, size=(cells, cells, 3)).astype(np.float32)
        return cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(6, 40)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xs * np.cos(angle) + ys * np.sin(angle)) / period
    if kind == 0:  # soft stripes, like knitted or printed cloth
        t = 0.5 + 0.5 * np.sin(2 * np.pi * u)
    else:  # checks
        v = (-xs * np.sin(angle) + ys * np.cos(angle)) / period
        t = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    a, b = _two_colours(rng)
    texture = a + t[..., None] * (b - a) + rng.normal(0, 6, size=(h, w, 1)).astype(np.float32)
    return texture.clip(0, 255).astype(np.uint8)


class TextureBank:
    """A bounded pool of background crops plus a procedural texture source.

    Each DataLoader worker holds its own copy (datasets are copied into workers), filled from the images
    that worker reads; the pool never needs a separate pass over the data.

    Args:
        capacity: most background crops kept (oldest dropped first).
        crop_size: side of the square background crops, in image px.
        procedural_prob: probability that :meth:`sample` returns a procedural texture even when crops exist.
        margin: the body box is enlarged by this fraction of its size before background crops avoid it.
    """

    def __init__(
        self, capacity: int = 64, crop_size: int = 160, procedural_prob: float = 0.5, margin: float = 0.1
    ) -> None:
        self.crops: deque[tuple[str, np.ndarray]] = deque(maxlen=capacity)
        self.crop_size = crop_size
        self.procedural_prob = procedural_prob
        self.margin = margin

    def __len__(self) -> int:
        return len(self.crops)

    def add_background(
        self,
        image: np.ndarray,
        bbox_xywh: np.ndarray,
        rng: np.random.Generator,
        source: str = "",
        tries: int = 10,
    ) -> bool:
        """Store a random square crop of ``image`` that does not touch the (enlarged) body box.

        Returns:
            True if a crop was stored (False when no free region of that size was found).
        """
        h, w = image.shape[:2]
        side = min(self.crop_size, h, w)
        x, y, bw, bh = (float(v) for v in bbox_xywh)
        x0, y0 = x - self.margin * bw, y - self.margin * bh
        x1, y1 = x + (1 + self.margin) * bw, y + (1 + self.margin) * bh
        for _ in range(tries):
            cx, cy = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            if cx + side <= x0 or cx >= x1 or cy + side <= y0 or cy >= y1:
                self.crops.append((source, image[cy : cy + side, cx : cx + side].copy()))
                return True
        return False

    def sample(self, size_hw: tuple[int, int], rng: np.random.Generator, exclude: str = "") -> np.ndarray:
        """A texture of ``size_hw`` (H, W): a stored background crop (resized, maybe mirrored) or procedural.

        Args:
            exclude: source name whose crops are skipped (the image being occluded).
        """
        h, w = size_hw
        candidates = [crop for source, crop in self.crops if source != exclude or not source]
        if not candidates or rng.random() < self.procedural_prob:
            return procedural_texture(size_hw, rng)
        crop = candidates[int(rng.integers(len(candidates)))]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        return cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_LINEAR)


@dataclass
class CutOcclude:
    """Paste textured rectangles over random labelled joints of a crop.

    Args:
        prob: probability that a sample gets any patch.
        max_patches: 1..max_patches patches per occluded sample.
        size_range: patch side as a fraction of the crop's shorter side.
        aspect_range: patch width / height range (log-uniform).
        jitter: patch centre offset from the joint, as a fraction of the patch size.
    """

    prob: float = 0.5
    max_patches: int = 3
    size_range: tuple[float, float] = (0.08, 0.25)
    aspect_range: tuple[float, float] = (0.5, 2.0)
    jitter: float = 0.3

    def __call__(
        self,
        image: np.ndarray,
        keypoints: np.ndarray,
        labelled: np.ndarray,
        visible: np.ndarray,
        rng: np.random.Generator,
        bank: TextureBank,
        source: str = "",
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Occlude in place.

        Args:
            image: (H, W, 3) uint8 crop, modified in place.
            keypoints: (K, 2) crop px.
            labelled, visible: (K,) bool.
            source: name of this image, so the bank does not paste its own background.

        Returns:
            image, visible (K,) bool with occluded joints False, and the patch mask (H, W) bool.
        """
        h, w = image.shape[:2]
        mask = np.zeros((h, w), dtype=bool)
        inside = labelled & (keypoints[:, 0] >= 0) & (keypoints[:, 0] <= w - 1)
        inside &= (keypoints[:, 1] >= 0) & (keypoints[:, 1] <= h - 1)
        joints = np.flatnonzero(inside)
        if len(joints) == 0 or rng.random() >= self.prob:
            return image, visible, mask
        short = min(h, w)
        for joint in rng.choice(
            joints, size=min(len(joints), int(rng.integers(1, self.max_patches + 1))), replace=False
        ):
            side = rng.uniform(*self.size_range) * short
            aspect = np.exp(rng.uniform(np.log(self.aspect_range[0]), np.log(self.aspect_range[1])))
            pw, ph = max(2, int(round(side * np.sqrt(aspect)))), max(2, int(round(side / np.sqrt(aspect))))
            cx = keypoints[joint, 0] + rng.uniform(-self.jitter, self.jitter) * pw
            cy = keypoints[joint, 1] + rng.uniform(-self.jitter, self.jitter) * ph
            x0, y0 = int(round(cx - pw / 2)), int(round(cy - ph / 2))
            cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + pw, w), min(y0 + ph, h)
            if cx1 <= cx0 or cy1 <= cy0:
                continue
            texture = bank.sample((ph, pw), rng, exclude=source)
            image[cy0:cy1, cx0:cx1] = texture[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
            mask[cy0:cy1, cx0:cx1] = True
        pixel = np.rint(keypoints[inside]).astype(int)
        covered = np.zeros_like(visible, dtype=bool)
        covered[inside] = mask[pixel[:, 1], pixel[:, 0]]
        return image, visible & ~covered, mask
