"""Rendered depth/normal maps as training data of the small critic: canonical crops and their target maps.

A critic trained on the synthetic renders' RGB alone inherits their style: on the real-like images its body
mask overlapped the oracle's with IoU 0.37 (3 epochs, geometric augmentation only). Because the target maps
say exactly where the body is, a training crop can be restyled without touching its labels: a random texture
behind the body and over its clothes, textured occluders that cut the body mask, and the pose network's
photometric augmentation (colour, blur, noise, JPEG). Measured on the demo preset, restyling improves the
critic's real-like normals (33.7 vs 37.2 degrees) but not its mask, and does not close the gap
(``docs/results/geometry_signal.md``).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from geosapiens.affine import apply_affine
from geosapiens.data.augment import Photometric
from geosapiens.data.crop import ViewParams, view_affine, warp_image
from geosapiens.data.occlude import CutOcclude, TextureBank, procedural_texture
from geosapiens.data.oracle_critic import OracleCritic
from geosapiens.data.records import PoseRecord
from geosapiens.errors import DataError


class RenderedMapsDataset(Dataset):
    """Canonical (optionally augmented) crops of rendered records with their target maps.

    Augmentation draws one random rotation / scale / flip per item from torch's generator (seeded per worker
    by the DataLoader) and applies the same affine to the image and the maps, so normals rotate and flip
    with it.

    Args:
        records: records with ``maps_path`` (generator output).
        input_size_hw: crop (H, W).
        padding: box padding of the crop.
        augment: random rotation (+-``max_rotation`` deg), scale (1 +- ``max_scale``), mirror (p 0.5).

    Items: ``image`` (3, H, W) Sapiens-normalised, ``depth`` (1, H, W) normalised relative depth, ``normals``
    (3, H, W), ``valid`` (1, H, W) bool body, ``inside`` (1, H, W) bool inside the source image.
    """

    def __init__(
        self,
        records: Sequence[PoseRecord],
        input_size_hw: Sequence[int] = (128, 96),
        padding: float = 1.25,
        augment: bool = False,
        max_rotation: float = 30.0,
        max_scale: float = 0.2,
        restyle: float = 0.0,
        photometric: float = 0.0,
    ) -> None:
        self.records = [r for r in records if r.maps_path is not None]
        if not self.records:
            where = records[0].image_path.parent if records else "<no records>"
            raise DataError(where, "no record has rendered maps (geosapiens_maps/*.npz) to train a critic on")
        self.input_size = (int(input_size_hw[0]), int(input_size_hw[1]))
        self.padding, self.augment = padding, augment
        self.max_rotation, self.max_scale = max_rotation, max_scale
        self.restyle = float(restyle)
        self.occlude = CutOcclude(prob=self.restyle, size_range=(0.15, 0.35))
        self.textures = TextureBank(procedural_prob=1.0)
        self.photometric = Photometric(photometric) if photometric > 0 else None
        self.oracle = OracleCritic()

    def __len__(self) -> int:
        return len(self.records)

    def affine(self, record: PoseRecord) -> np.ndarray:
        params = None
        if self.augment:
            u = torch.rand(3).tolist()
            zoom = 1 + (2 * u[1] - 1) * self.max_scale
            params = ViewParams(scale=zoom, rotation=(2 * u[0] - 1) * self.max_rotation, flip=u[2] < 0.5)
        return view_affine(record.bbox, self.input_size, params, self.padding)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        from geosapiens.data.images import read_image
        from geosapiens.models.preprocess import to_tensor

        record = self.records[index]
        affine = self.affine(record)
        image = read_image(record.image_path, record=record.image_id)
        maps = self.oracle.maps([record], torch.from_numpy(affine)[None], self.input_size)
        inside = warp_image(np.ones(image.shape[:2], np.uint8), affine, self.input_size, border_value=0) > 0
        crop, valid = warp_image(image, affine, self.input_size), maps.valid[0]
        if self.augment and (self.restyle > 0 or self.photometric is not None):
            rng = np.random.default_rng(int(torch.randint(2**62, ())))
            keypoints = apply_affine(record.keypoints, affine)
            crop, body = self._restyle(crop, valid[0].numpy(), inside, keypoints, record.labelled, rng)
            valid = torch.from_numpy(body)[None]
        return {
            "image": to_tensor(crop),
            "depth": maps.depth[0],
            "normals": maps.normals[0],
            "valid": valid,
            "inside": torch.from_numpy(inside)[None],
        }

    def _restyle(
        self,
        crop: np.ndarray,
        body: np.ndarray,
        inside: np.ndarray,
        keypoints: np.ndarray,
        labelled: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Restyle an (H, W, 3) uint8 crop around its (H, W) body mask; returns the crop and the new mask."""
        size = crop.shape[:2]
        out = crop.astype(np.float32)
        if rng.random() < self.restyle:
            background = ~body & inside
            out[background] = procedural_texture(size, rng)[background]
        if rng.random() < self.restyle:
            strength = rng.uniform(0.3, 0.8)
            pattern = procedural_texture(size, rng).astype(np.float32) / 127.5
            out[body] *= (1 - strength) + strength * pattern[body]
        crop = out.clip(0, 255).astype(np.uint8)
        crop, _, covered = self.occlude(crop, keypoints, labelled, labelled.copy(), rng, self.textures)
        if self.photometric is not None:
            crop = self.photometric(crop, rng)
        return crop, body & ~covered


class SmallCriticDataModule(L.LightningDataModule):
    """Rendered SyRIP-format data (generator output with ``geosapiens_maps``) for :class:`SmallCriticTask`.

    Args:
        data_root: dataset root. annotation_file: SyRIP annotation file (relative to the root or absolute).
        input_size: crop (H, W). padding: box padding.
        val_every: every ``val_every``-th image (by sorted image path) is held out for validation.
        batch_size, num_workers: DataLoader settings. augment: augment the training crops.
        restyle, photometric: :class:`RenderedMapsDataset`'s restyling of the training crops.
        target_annotation_file: rendered images of the other style (the real-like ``val_real``), validated as
            a second loader (``val_target/*``): how well the critic holds across the style gap. A diagnostic
            the generator makes possible (real target images have no depth labels); nothing selects on it.
    """

    def __init__(
        self,
        data_root: str,
        annotation_file: str,
        input_size: Sequence[int] = (128, 96),
        padding: float = 1.25,
        val_every: int = 10,
        batch_size: int = 16,
        num_workers: int = 0,
        augment: bool = True,
        restyle: float = 0.0,
        photometric: float = 0.0,
        target_annotation_file: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        from geosapiens.data.formats.syrip import read_syrip

        hp = self.hparams
        records = sorted(read_syrip(hp.data_root, hp.annotation_file), key=lambda r: str(r.image_path))
        records = [r for r in records if r.maps_path is not None]
        if len(records) < 2:
            raise DataError(
                hp.data_root,
                f"{len(records)} images with rendered maps under {hp.annotation_file}; "
                "need at least 2 (generate data with `geosapiens data synth`)",
            )
        every = max(2, int(hp.val_every))
        val = [r for i, r in enumerate(records) if i % every == every - 1] or records[-1:]
        train = [r for r in records if all(r is not v for v in val)]
        self.train_set = RenderedMapsDataset(
            train, hp.input_size, hp.padding, hp.augment, restyle=hp.restyle, photometric=hp.photometric
        )
        self.val_sets = [RenderedMapsDataset(val, hp.input_size, hp.padding)]
        if hp.target_annotation_file:
            target = read_syrip(hp.data_root, hp.target_annotation_file)
            self.val_sets.append(RenderedMapsDataset(target, hp.input_size, hp.padding))

    def train_dataloader(self) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.train_set,
            batch_size=hp.batch_size,
            shuffle=True,
            num_workers=hp.num_workers,
            drop_last=len(self.train_set) > hp.batch_size,
            persistent_workers=hp.num_workers > 0,
        )

    def val_dataloader(self) -> list[DataLoader]:
        hp = self.hparams
        return [
            DataLoader(
                val_set,
                batch_size=hp.batch_size,
                num_workers=hp.num_workers,
                persistent_workers=hp.num_workers > 0,
            )
            for val_set in self.val_sets
        ]
