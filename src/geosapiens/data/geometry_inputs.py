"""Critic maps as a network's input: the data of the geometry teacher.

The geometry teacher is a pose network that never sees RGB: its input is a critic's depth, normals and body
mask of the crop (:data:`GEOMETRY_CHANNELS`). Trained on the labelled source images' critic maps, it carries
no RGB style gap to the target, only the critic's own gap; on the target its keypoints are pseudo-labels for
the RGB student (``geo_pose`` in :mod:`geosapiens.stages.mean_teacher`).

Maps come from a critic cache (canonical crop frame, any stride) and are warped into each augmented view by
:meth:`~geosapiens.data.critic_cache.CriticCache.lookup` (normals rotate and mirror with the view), so a
sample carries the keys of an RGB :class:`~geosapiens.data.datasets.PoseDataset` sample (but ``visible``) and
every pose stage, metric and callback works on it unchanged. :class:`MapDegradation` corrupts the maps at
training time (blur, normal and depth noise, dropped channels): a perfect critic exists only in the oracle,
and a network trained on clean maps leans on the body mask (measured in issue #13's probe: 76.0 -> 55.2
PCK@0.1 without the mask).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from geosapiens.affine import apply_affine
from geosapiens.data.augment import ViewAugment, flip_channels
from geosapiens.data.critic_cache import CriticCache
from geosapiens.data.crop import canonical_affine, canonical_to_view, view_affine
from geosapiens.data.records import PoseRecord
from geosapiens.data.sampling import SampleKey, key_rng
from geosapiens.errors import DataError
from geosapiens.models.critics import GeometryMaps

__all__ = [
    "GEOMETRY_CHANNELS",
    "maps_to_input",
    "MapDegradation",
    "CriticMapsDataset",
    "CriticInputDataModule",
]

GEOMETRY_CHANNELS = ("depth", "normal_x", "normal_y", "normal_z", "body")


def maps_to_input(maps: GeometryMaps) -> torch.Tensor:
    """(B, 5, H, W) network input from critic maps: relative depth, normals, body mask; 0 off the body."""
    valid = (torch.ones_like(maps.depth, dtype=torch.bool) if maps.valid is None else maps.valid.bool()).to(
        maps.depth.device
    )
    body = valid.to(torch.float32)
    return torch.cat([maps.depth.float() * body, maps.normals.float() * body, body], dim=1)


@dataclass
class MapDegradation:
    """Training-time corruption of critic maps, per sample, drawn from the sample's generator.

    Attributes:
        prob: probability that a sample is degraded at all.
        blur_sigma: maximum Gaussian blur of every channel, in crop pixels (uniform in [0, max]).
        normal_noise_deg: maximum angular noise of the normals (a random rotation per pixel, smoothed).
        depth_noise: maximum std of additive depth noise, in normalised depth units.
        drop_prob: probability of zeroing each channel group (depth, normals, body) on its own; never all.
    """

    prob: float = 0.8
    blur_sigma: float = 2.0
    normal_noise_deg: float = 15.0
    depth_noise: float = 0.3
    drop_prob: float = 0.2

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """(5, H, W) -> (5, H, W) degraded copy."""
        if rng.random() >= self.prob:
            return x
        a = x.numpy().transpose(1, 2, 0).copy()  # (H, W, 5)
        H, W = a.shape[:2]
        sigma = rng.uniform(0.0, self.blur_sigma)
        if sigma > 0.3:
            a = cv2.GaussianBlur(a, (0, 0), sigma)
        if self.normal_noise_deg > 0:
            noise = rng.normal(0.0, 1.0, (H, W, 3)).astype(np.float32)
            noise = cv2.GaussianBlur(noise, (0, 0), 2.0)
            scale = np.tan(np.deg2rad(rng.uniform(0.0, self.normal_noise_deg))) / max(noise.std(), 1e-6)
            n = a[..., 1:4] + scale * noise * (np.linalg.norm(a[..., 1:4], axis=-1, keepdims=True) > 0)
            a[..., 1:4] = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
        if self.depth_noise > 0:
            a[..., 0] += rng.normal(0.0, rng.uniform(0.0, self.depth_noise), (H, W)).astype(np.float32)
        body = a[..., 4:5] > 0.5
        a[..., :4] *= body
        a[..., 4:5] = body
        groups = [slice(0, 1), slice(1, 4), slice(4, 5)]
        dropped = [g for g in groups if rng.random() < self.drop_prob]
        for g in dropped[: len(groups) - 1]:
            a[..., g] = 0.0
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


class CriticMapsDataset(Dataset):
    """Labelled crops whose pixels are the critic's maps of the crop, not its RGB.

    Sample dict: the keys of a :class:`~geosapiens.data.datasets.PoseDataset` sample, with ``image`` the
    (5, H, W) :func:`maps_to_input` of the view, and no ``visible`` (no occlusion is known in maps).

    Args:
        records: the samples; every image must be in ``cache``.
        cache: maps of the records' images in the canonical crop frame (``geosapiens critics cache``), of
            any crop size with the aspect ratio of ``input_size`` (the same crop of the box).
        input_size: crop (H, W).
        padding: box padding factor of the crop (the cache's, checked).
        geometry: random view geometry; None = the canonical crop.
        degradation: map corruption; None = the maps as cached.
    """

    def __init__(
        self,
        records: Sequence[PoseRecord],
        cache: CriticCache,
        input_size: tuple[int, int],
        padding: float = 1.25,
        geometry: ViewAugment | None = None,
        degradation: MapDegradation | None = None,
    ) -> None:
        self.records = list(records)
        self.cache = cache
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.padding = padding
        self.geometry = geometry
        self.degradation = degradation

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | SampleKey) -> dict:
        index, rng = key_rng(key, stream=3)
        record = self.records[index]
        params = self.geometry.sample(rng) if self.geometry is not None else None
        affine = view_affine(record.bbox, self.input_size, params, self.padding)
        canonical = canonical_affine(record.bbox, self.cache.input_size, self.padding)  # the cache's frame
        keypoints = apply_affine(np.asarray(record.keypoints, dtype=np.float64), affine)
        keypoints, labelled = flip_channels(
            params is not None and params.flip, keypoints, np.asarray(record.labelled, bool)
        )
        to_view = torch.from_numpy(canonical_to_view(canonical, affine))[None]
        image = maps_to_input(self.cache.lookup([record.image_path], to_view, self.input_size))[0]
        if self.degradation is not None:
            image = self.degradation(image, rng)
        sample = {
            "image": image,
            "keypoints": torch.from_numpy(keypoints.astype(np.float32)),
            "weights": torch.from_numpy(labelled.astype(np.float32)),
            "affine": torch.from_numpy(affine.astype(np.float32)),
            "bbox": torch.from_numpy(np.asarray(record.bbox, dtype=np.float32)),
            "image_path": str(record.image_path),
            "image_id": record.image_id,
            "index": index,
        }
        if record.sequence is not None:
            sample["sequence"], sample["frame"] = record.sequence, record.frame
        return sample


class CriticInputDataModule(L.LightningDataModule):
    """A labelled DataModule whose crops are replaced by the critic's maps of the same crops.

    The wrapped DataModule says which records make each split, the crop, its padding and the view geometry;
    the maps come from ``critic_cache`` (which must hold every image of the splits used). The cache may be
    built for larger crops of the same box (the student's: Sapiens' 1024 px crops, maps stored at 256 px),
    so the teacher trains at the maps' resolution. Photometric,
    elastic and cut-occlude augmentation are RGB-only and do not apply; :class:`MapDegradation` takes their
    place. Loaders, keyed sampling and resume state are the wrapped DataModule's.

    Args:
        data: the labelled DataModule (e.g. :class:`~geosapiens.data.datamodules.SyRIPSynthDataModule`).
        critic_cache: the critic cache directory.
        degrade_prob, blur_sigma, normal_noise_deg, depth_noise, drop_prob: :class:`MapDegradation`
            (``degrade_prob: 0`` trains on the maps as cached).
    """

    def __init__(
        self,
        data: L.LightningDataModule,
        critic_cache: str | Path,
        degrade_prob: float = 0.8,
        blur_sigma: float = 2.0,
        normal_noise_deg: float = 15.0,
        depth_noise: float = 0.3,
        drop_prob: float = 0.2,
    ) -> None:
        super().__init__()
        self.data = data
        self.critic_cache = Path(critic_cache)
        self.degradation = (
            MapDegradation(degrade_prob, blur_sigma, normal_noise_deg, depth_noise, drop_prob)
            if degrade_prob > 0
            else None
        )
        self.cache: CriticCache | None = None

    @property
    def input_size(self) -> tuple[int, int]:
        return self.data.input_size

    def setup(self, stage: str | None = None) -> None:
        self.data.trainer = self.trainer
        self.data.setup(stage)
        self.cache = CriticCache(self.critic_cache, padding=self.data.padding)
        (H, W), (h, w) = self.cache.input_size, self.data.input_size
        if H * w != W * h:
            raise DataError(
                self.critic_cache,
                f"cache of {H}x{W} crops, the model takes {h}x{w}: not the same crop of the box (aspect "
                "ratio); build the cache at the model's aspect ratio",
            )

    def _dataset(self, records: Sequence[PoseRecord], train: bool) -> CriticMapsDataset:
        return CriticMapsDataset(
            records,
            self.cache,
            self.data.input_size,
            self.data.padding,
            geometry=self.data.geometry if train else None,
            degradation=self.degradation if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self.data._loader(self._dataset(self.data.train_records, train=True), train=True)

    def val_dataloader(self) -> DataLoader | list:
        if not self.data.val_records:
            return []
        return self.data._loader(self._dataset(self.data.val_records, train=False), train=False)

    def test_dataloader(self) -> DataLoader:
        return self.data._loader(self._dataset(self.data.test_records, train=False), train=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    def state_dict(self) -> dict[str, Any]:
        return self.data.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.data.load_state_dict(state_dict)
