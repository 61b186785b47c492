"""View sampling (one affine per view), photometric augmentation and CutMix.

Geometry never goes through albumentations: each view is one random scale/rotation/flip/shift folded into the
UDP crop affine (:func:`~geosapiens.data.crop.view_affine`), so the image is warped once and keypoints, critic
maps and the weak->strong transform are exact matrix products. albumentations (2.0.8) does only pixel-level
work (:class:`Photometric`); its distortion transforms drop or corrupt keypoints (``reference/stack.md`` §4).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from torch.utils.data import default_collate

from geosapiens.data.crop import ViewParams
from geosapiens.skeleton import COCO17

__all__ = [
    "ViewAugment",
    "flip_channels",
    "Photometric",
    "cutmix_batch",
    "PairCollate",
]


@dataclass
class ViewAugment:
    """Distribution of a view's random geometry (mmpose ``RandomFlip`` + ``RandomBBoxTransform`` in one).

    Args:
        scale_range: factor on the padded box size (> 1 zooms out).
        rotation_deg: rotation drawn uniformly in +-rotation_deg (lying infants take any orientation).
        rotation_prob: probability of rotating at all.
        flip_prob: probability of a horizontal mirror (left/right channels are swapped by the caller).
        shift_fraction: centre shift drawn uniformly in +-shift_fraction of the box size, per axis.
    """

    scale_range: tuple[float, float] = (0.75, 1.25)
    rotation_deg: float = 45.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    shift_fraction: float = 0.1

    def sample(self, rng: np.random.Generator, flip: bool | None = None) -> ViewParams:
        """Draw one view; ``flip`` forces the mirror state (weak and strong views of a pair share it)."""
        scale = float(rng.uniform(*self.scale_range))
        rotation = 0.0
        if rng.random() < self.rotation_prob:
            rotation = float(rng.uniform(-self.rotation_deg, self.rotation_deg))
        flip = bool(rng.random() < self.flip_prob) if flip is None else flip
        shift = rng.uniform(-self.shift_fraction, self.shift_fraction, size=2)
        return ViewParams(scale, rotation, flip, (float(shift[0]), float(shift[1])))


def flip_channels(flip: bool, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Swap left/right keypoint channels (axis 0) of each array after a mirror (COCO17.flip_indices).

    After a mirror the image's left wrist sits where a right wrist would, so channel ``left_wrist`` of the
    view takes the transformed position (and weight, visibility) of the original right wrist.
    """
    if not flip:
        return arrays
    index = np.asarray(COCO17.flip_indices)
    return tuple(np.asarray(a)[index] for a in arrays)


class Photometric:
    """Pixel-level strong augmentation through albumentations (colour, blur, noise, JPEG).

    Magnitudes scale with ``strength`` (0 = off, 1 = the defaults below, > 1 harsher); the probabilities are
    fixed. Randomness comes from the caller's generator, so it is reproducible and worker-safe.

    Args:
        strength: magnitude multiplier.
        jitter_prob, blur_prob, noise_prob, jpeg_prob: probability of each op (blur: Gaussian or motion).
    """

    def __init__(
        self,
        strength: float = 1.0,
        jitter_prob: float = 0.8,
        blur_prob: float = 0.3,
        noise_prob: float = 0.3,
        jpeg_prob: float = 0.3,
    ) -> None:
        if strength < 0:
            raise ValueError(f"Photometric: strength must be >= 0, got {strength}")
        self.strength = strength
        s = strength
        blur = max(3, 2 * int(round(3 * s)) + 1)
        self.transform = A.Compose(
            [
                A.ColorJitter(
                    brightness=(max(0.0, 1 - 0.4 * s), 1 + 0.4 * s),
                    contrast=(max(0.0, 1 - 0.4 * s), 1 + 0.4 * s),
                    saturation=(max(0.0, 1 - 0.4 * s), 1 + 0.4 * s),
                    hue=(-min(0.5, 0.1 * s), min(0.5, 0.1 * s)),
                    p=jitter_prob,
                ),
                A.OneOf(
                    [
                        A.GaussianBlur(blur_limit=(3, blur), sigma_limit=(0.1, max(0.2, 2.0 * s))),
                        A.MotionBlur(blur_limit=(3, blur)),
                    ],
                    p=blur_prob,
                ),
                # Noise drawn at half resolution and upsampled: grain like a sensor's, and 4x fewer draws.
                A.GaussNoise(std_range=(0.01 * s, 0.06 * s), noise_scale_factor=0.5, p=noise_prob),
                A.ImageCompression(quality_range=(max(5, int(95 - 65 * s)), 95), p=jpeg_prob),
            ]
        )

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment an (H, W, 3) uint8 RGB image; returns a new uint8 image."""
        if self.strength == 0:
            return image
        self.transform.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        return self.transform(image=image)["image"]


def cutmix_batch(
    images: torch.Tensor,
    prob: float = 0.5,
    area_range: tuple[float, float] = (0.1, 0.3),
    draws: torch.Tensor | None = None,
) -> torch.Tensor:
    """Paste a random rectangle from the next image of the batch into each image (CutMix between targets).

    Args:
        images: (B, C, H, W) views (e.g. the strong views of a pair batch).
        prob: per-image probability of a paste.
        area_range: rectangle area as a fraction of the image (aspect ratio log-uniform in [1/2, 2]).
        draws: (B, 5) uniforms in [0, 1) deciding each image's paste (whether, area, aspect, x, y); the
            pair dataset draws them per sample from its keyed generator. Default: torch's global RNG.

    Returns:
        ``images``, mixed in place (only the pasted rectangles are copied, not the batch). With B = 1
        nothing is pasted.
    """
    b, _, h, w = images.shape
    if b < 2:
        return images
    rand = torch.rand(b, 5, dtype=torch.float64) if draws is None else draws.to(torch.float64)
    pastes = []
    for i in range(b):
        if rand[i, 0] >= prob:
            continue
        area = (area_range[0] + rand[i, 1] * (area_range[1] - area_range[0])) * h * w
        aspect = 2.0 ** (2 * rand[i, 2] - 1)
        rw = int(min(w, max(1, round(float((area * aspect) ** 0.5)))))
        rh = int(min(h, max(1, round(float((area / aspect) ** 0.5)))))
        x0 = int(rand[i, 3] * (w - rw + 1))
        y0 = int(rand[i, 4] * (h - rh + 1))
        region = (slice(y0, y0 + rh), slice(x0, x0 + rw))
        pastes.append((i, region, images[(i + 1) % b, :, region[0], region[1]].clone()))  # before any paste
    for i, region, patch in pastes:
        images[i, :, region[0], region[1]] = patch
    return images


class PairCollate:
    """Collate unlabelled pair samples, then CutMix the strong views between the batch's images.

    The paste of each image is decided by its sample's ``cutmix_draw`` (consumed here), so it is reproducible
    and resumable like every other augmentation.

    The teacher target comes from the un-mixed weak view, so under a paste it still says where the joint is:
    the pasted patch acts as an occluder, training robustness to occlusion as cut-occlude does. Runs in the
    DataLoader workers (cheap tensor copies), not on the accelerator.

    Args:
        cutmix_prob: per-image probability of a paste (0 disables CutMix).
        cutmix_area: rectangle area range as a fraction of the view.
    """

    def __init__(self, cutmix_prob: float = 0.5, cutmix_area: tuple[float, float] = (0.1, 0.3)) -> None:
        self.cutmix_prob = cutmix_prob
        self.cutmix_area = tuple(cutmix_area)

    def __call__(self, samples: Sequence[dict]) -> dict:
        batch = default_collate(list(samples))
        draws = batch.pop("cutmix_draw")
        batch["strong"] = cutmix_batch(batch["strong"], self.cutmix_prob, self.cutmix_area, draws)
        return batch
