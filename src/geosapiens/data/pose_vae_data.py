"""Poses as training data of the pose prior: every labelled 2D pose of the source datasets, augmented."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from geosapiens.errors import DataError
from geosapiens.models.pose_vae import TORSO_JOINTS
from geosapiens.skeleton import COCO17


def augment_poses(
    keypoints: torch.Tensor,
    labelled: torch.Tensor,
    *,
    rotation_deg: float = 180.0,
    flip_prob: float = 0.5,
    scale_range: float = 0.2,
    drop_prob: float = 0.0,
    flip_indices: Sequence[int] = COCO17.flip_indices,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random in-plane rotation, mirror with left/right swap, anisotropic scale and joint dropout, per pose.

    Batched, on the poses' device, so it runs after the batch transfer (no per-sample Python in the loader).

    Args:
        keypoints: (B, K, 2) pixel coordinates.
        labelled: (B, K) bool.
        rotation_deg: uniform rotation in [-rotation_deg, rotation_deg].
        flip_prob: probability of a horizontal mirror (channels swapped with ``flip_indices``).
        scale_range: x and y scaled independently by factors in [1 - s, 1 + s] (after the rotation).
        drop_prob: probability to unlabel each non-torso joint (robustness to missing joints).
        generator: torch RNG on the poses' device (None: the global one).

    Returns:
        ``(keypoints (B, K, 2), labelled (B, K))``.
    """
    B, K, _ = keypoints.shape
    dev, dtype = keypoints.device, keypoints.dtype
    u = torch.rand(B, 4, generator=generator, device=dev, dtype=dtype)
    flip = u[:, 0] < flip_prob
    idx = torch.as_tensor(flip_indices, device=dev)
    kp = torch.where(flip[:, None, None], keypoints[:, idx] * keypoints.new_tensor([-1.0, 1.0]), keypoints)
    lab = torch.where(flip[:, None], labelled[:, idx], labelled).bool()
    theta = torch.deg2rad((2.0 * u[:, 1] - 1.0) * rotation_deg)
    c, s = torch.cos(theta), torch.sin(theta)
    R = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # (B, 2, 2)
    scale = 1.0 + (2.0 * u[:, 2:4] - 1.0) * scale_range  # (B, 2)
    kp = torch.einsum("bij,bkj->bki", R, kp) * scale[:, None, :]
    if drop_prob > 0:
        drop = torch.rand(B, K, generator=generator, device=dev) < drop_prob
        drop[:, list(TORSO_JOINTS)] = False
        lab = lab & ~drop
    return kp, lab


class PoseVAEDataset(Dataset):
    """Poses as ``{"keypoints": (K, 2) float32, "labelled": (K,) bool}`` samples (augmentation is batched).

    Args:
        keypoints: (N, K, 2).
        labelled: (N, K) bool.
    """

    def __init__(self, keypoints: np.ndarray | torch.Tensor, labelled: np.ndarray | torch.Tensor) -> None:
        self.keypoints = torch.as_tensor(np.asarray(keypoints, np.float32))
        self.labelled = torch.as_tensor(np.asarray(labelled, bool))

    def __len__(self) -> int:
        return len(self.keypoints)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"keypoints": self.keypoints[i], "labelled": self.labelled[i]}


class PoseVAEDataModule(L.LightningDataModule):
    """Training poses for the prior, from SyRIP-format annotation files, MINI-RGBD roots, or arrays in memory.

    Only poses whose four torso joints (shoulders, hips) are labelled are kept: the normalisation needs them.
    Non-finite coordinates count as unlabelled. Validation holds out whole groups (a MINI-RGBD sequence, a
    SyRIP image; recorded in ``val_groups``), so near-identical video frames never sit on both sides; it is
    augmented once, with a fixed seed. Training batches are augmented on their device after transfer
    (:func:`augment_poses`).

    Args:
        syrip_root: SyRIP dataset root, for ``syrip_annotation_files``.
        syrip_annotation_files: ``annotations/<split>/person_keypoints_<set>_infant.json`` paths (relative to
            ``syrip_root`` or absolute).
        syrip_domain: ``"synthetic"`` (the prior learns from synthetic poses), ``"real"`` or ``"all"``.
        mini_rgbd_root: MINI-RGBD root.
        mini_rgbd_sequences: sequences to read (None: all).
        poses: in-memory poses, a sequence of (K, 2) arrays or an (N, K, 2) array (NaN = unlabelled).
        val_fraction: fraction of groups held out.
        batch_size, num_workers: DataLoader settings.
        rotation_deg, flip_prob, scale_range, drop_prob: augmentation (see :func:`augment_poses`).
        seed: split and validation-augmentation seed.
    """

    def __init__(
        self,
        syrip_root: str | None = None,
        syrip_annotation_files: Sequence[str] = (),
        syrip_domain: str = "synthetic",
        mini_rgbd_root: str | None = None,
        mini_rgbd_sequences: Sequence[str] | None = None,
        poses: Sequence[Any] | None = None,
        val_fraction: float = 0.1,
        batch_size: int = 256,
        num_workers: int = 0,
        rotation_deg: float = 180.0,
        flip_prob: float = 0.5,
        scale_range: float = 0.2,
        drop_prob: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["poses"])
        self.poses = poses
        self.train_set: PoseVAEDataset | None = None
        self.val_set: PoseVAEDataset | None = None
        self.val_groups: list[str] = []

    def _sources(self) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
        """(keypoints (N, K, 2), labelled (N, K), group ids) per source."""
        hp = self.hparams
        out = []
        if hp.syrip_annotation_files:
            from geosapiens.data.formats.syrip import read_syrip

            if hp.syrip_root is None:
                raise DataError("syrip_annotation_files", "syrip_root is required to read SyRIP annotations")
            for ann in hp.syrip_annotation_files:
                records = read_syrip(hp.syrip_root, ann, domain=hp.syrip_domain)
                out.append(self._from_records(records, f"syrip:{ann}:"))
        if hp.mini_rgbd_root is not None:
            from geosapiens.data.formats.mini_rgbd import read_mini_rgbd

            records = read_mini_rgbd(hp.mini_rgbd_root, hp.mini_rgbd_sequences)
            out.append(self._from_records(records, "mini-rgbd:"))
        if self.poses is not None:
            kp = np.asarray([np.asarray(p, np.float32) for p in self.poses], np.float32).reshape(
                -1, COCO17.num_keypoints, 2
            )
            lab = np.isfinite(kp).all(-1)
            out.append((np.nan_to_num(kp), lab, [f"pose:{i}" for i in range(len(kp))]))
        return out

    @staticmethod
    def _from_records(records: Sequence[Any], prefix: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        K = COCO17.num_keypoints
        kp = (
            np.stack([r.keypoints for r in records]).astype(np.float32)
            if records
            else np.zeros((0, K, 2), np.float32)
        )
        lab = np.stack([r.labelled for r in records]).astype(bool) if records else np.zeros((0, K), bool)
        groups = [prefix + str(r.sequence if r.sequence is not None else r.image_id) for r in records]
        return kp, lab, groups

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        sources = self._sources()
        if not sources:
            raise DataError(
                "PoseVAEDataModule", "no pose source: give syrip_annotation_files, mini_rgbd_root or poses"
            )
        kp = np.concatenate([s[0] for s in sources])
        lab = np.concatenate([s[1] for s in sources])
        groups = np.asarray([g for s in sources for g in s[2]])
        if len(kp) == 0:
            raise DataError(
                "PoseVAEDataModule", f"the sources hold no pose (syrip_domain={self.hparams.syrip_domain!r})"
            )
        usable = lab[:, list(TORSO_JOINTS)].all(1)
        kp, lab, groups = kp[usable], lab[usable], groups[usable]
        if len(kp) == 0:
            raise DataError("PoseVAEDataModule", "no pose has both shoulders and both hips labelled")

        hp = self.hparams
        unique = np.unique(groups)
        rng = np.random.default_rng(hp.seed)
        n_val = int(round(hp.val_fraction * len(unique))) if len(unique) > 1 else 0
        self.val_groups = sorted(rng.permutation(unique)[:n_val].tolist())
        is_val = np.isin(groups, self.val_groups)
        self.train_set = PoseVAEDataset(kp[~is_val], lab[~is_val])
        val_kp, val_lab = augment_poses(
            torch.from_numpy(kp[is_val]),
            torch.from_numpy(lab[is_val]),
            generator=torch.Generator().manual_seed(hp.seed),
            **self._augmentation(),
        )
        self.val_set = PoseVAEDataset(val_kp, val_lab)

    def _augmentation(self) -> dict[str, float]:
        hp = self.hparams
        return {"rotation_deg": hp.rotation_deg, "flip_prob": hp.flip_prob, "scale_range": hp.scale_range}

    def on_after_batch_transfer(
        self, batch: dict[str, torch.Tensor], dataloader_idx: int
    ) -> dict[str, torch.Tensor]:
        if self.trainer is None or not self.trainer.training:
            return batch
        kp, lab = augment_poses(
            batch["keypoints"], batch["labelled"], drop_prob=self.hparams.drop_prob, **self._augmentation()
        )
        return {**batch, "keypoints": kp, "labelled": lab}

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            shuffle=True,
            num_workers=self.hparams.num_workers,
            persistent_workers=self.hparams.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set, batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers
        )
