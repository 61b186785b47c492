"""Infant pose-manifold prior: a small VAE over normalised 2D COCO-17 poses (SPEC §4, §5 ``L_manifold``).

Poses are normalised (centre at mid-hip, scale by torso length) so the prior sees shape only; lying infants
take any in-plane orientation and either chirality, so training augments with rotations up to +-180 deg,
horizontal flips (with the COCO-17 left/right channel swap) and anisotropic scaling (a uniform scale would be
undone by the normalisation; stretching one axis mimics foreshortening). Missing joints are zeroed and their
mask is fed to the encoder, so one prior serves datasets that label different joints (MINI-RGBD has no eyes
or ears).

Used frozen: :func:`geosapiens.losses.manifold_loss` scores predicted poses by their reconstruction error.
Load a trained prior with :meth:`PoseVAE.load` from the Lightning checkpoint of :class:`PosePriorTask` or from
a safetensors export (:meth:`PoseVAE.save`).

VAE shape follows VPoser (Pavlakos et al. 2019; an MLP encoder to a Gaussian latent and an MLP decoder),
scaled down to 2D keypoints: ~0.2M parameters at the defaults.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from geosapiens.errors import CheckpointError, DataError
from geosapiens.skeleton import COCO17

__all__ = [
    "normalize_pose",
    "masked_pose_error",
    "PoseVAE",
    "augment_poses",
    "PoseDataset",
    "PoseDataModule",
    "PosePriorTask",
]

LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_HIP, RIGHT_HIP = (
    COCO17.index(n) for n in ("left_shoulder", "right_shoulder", "left_hip", "right_hip")
)
TORSO_JOINTS = (LEFT_SHOULDER, RIGHT_SHOULDER, LEFT_HIP, RIGHT_HIP)


def normalize_pose(keypoints: torch.Tensor, labelled: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Translate and scale COCO-17 poses to a common frame: mid-hip at the origin, torso length 1.

    Torso length is the mean shoulder-hip distance over the sides whose shoulder and hip are both labelled.
    Fallbacks keep every pose finite: without both hips the centre is the mean of the labelled joints; without
    a labelled side the scale is the RMS distance of the labelled joints from the centre; a pose with no
    labelled joint is all zeros. Unlabelled joints come out as exact zeros (their input values, even NaN, are
    never read), so feed ``labelled`` to the VAE with them.

    Args:
        keypoints: (B, K, 2) pixel coordinates (any frame).
        labelled: (K,) or (B, K) bool.
        eps: floor of the scale (coincident joints give zeros, not NaN).

    Returns:
        (B, K, 2) normalised poses.
    """
    mask = labelled.bool().expand(keypoints.shape[:-1])
    kp = torch.where(mask.unsqueeze(-1), keypoints, torch.zeros_like(keypoints))
    m = mask.to(kp.dtype)

    mean = kp.sum(1) / m.sum(1, keepdim=True).clamp_min(1.0)
    hips = mask[:, LEFT_HIP] & mask[:, RIGHT_HIP]
    centre = torch.where(hips.unsqueeze(-1), 0.5 * (kp[:, LEFT_HIP] + kp[:, RIGHT_HIP]), mean)

    def side(s: int, h: int) -> tuple[torch.Tensor, torch.Tensor]:
        both = m[:, s] * m[:, h]
        return torch.sqrt((kp[:, s] - kp[:, h]).pow(2).sum(-1) + eps**2) * both, both

    (ls, lw), (rs, rw) = side(LEFT_SHOULDER, LEFT_HIP), side(RIGHT_SHOULDER, RIGHT_HIP)
    sides = lw + rw
    torso = (ls + rs) / sides.clamp_min(1.0)
    offsets = (kp - centre.unsqueeze(1)) * m.unsqueeze(-1)
    spread = torch.sqrt(offsets.pow(2).sum((1, 2)) / m.sum(1).clamp_min(1.0) + eps**2)
    scale = torch.where(sides > 0, torso, spread).clamp_min(eps)
    return offsets / scale[:, None, None]


def masked_pose_error(recon: torch.Tensor, poses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared joint distance between ``recon`` and ``poses`` (B, K, 2) over ``mask``'s joints."""
    m = mask.bool().expand(poses.shape[:-1]).to(poses.dtype)
    return ((recon - poses).pow(2).sum(-1) * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-2], sizes[1:-1], strict=True):
        layers += [nn.Linear(a, b), nn.SiLU()]
    layers.append(nn.Linear(sizes[-2], sizes[-1]))
    return nn.Sequential(*layers)


class PoseVAE(nn.Module):
    """MLP VAE over normalised poses with a joint mask.

    No dropout or normalisation layers, so train and eval modes compute the same function and the frozen prior
    can be called through ``torch.func.functional_call`` in any mode.

    Args:
        num_keypoints: K (17 for COCO-17).
        latent_dim: size of the Gaussian latent.
        hidden_dim: width of the hidden layers.
        num_layers: hidden layers in each of encoder and decoder.
    """

    def __init__(
        self, num_keypoints: int = 17, latent_dim: int = 24, hidden_dim: int = 256, num_layers: int = 2
    ):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.encoder = _mlp([num_keypoints * 3] + [hidden_dim] * num_layers + [2 * latent_dim])
        self.decoder = _mlp([latent_dim] + [hidden_dim] * num_layers + [num_keypoints * 2])

    @property
    def config(self) -> dict[str, int]:
        return {
            "num_keypoints": self.num_keypoints,
            "latent_dim": self.latent_dim,
            "hidden_dim": self.hidden_dim,
            "num_layers": self.num_layers,
        }

    def encode(self, poses: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, 2) normalised poses and (B, K) mask -> mean and log-variance, each (B, latent_dim)."""
        m = mask.bool().expand(poses.shape[:-1]).to(poses.dtype)
        x = torch.cat([(poses * m.unsqueeze(-1)).flatten(1), m], dim=1)
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) -> (B, K, 2) normalised poses."""
        return self.decoder(z).unflatten(-1, (self.num_keypoints, 2))

    def forward(
        self, poses: torch.Tensor, mask: torch.Tensor, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct poses; ``sample=False`` decodes the posterior mean (deterministic scoring).

        Returns:
            ``(recon (B, K, 2), mu (B, latent_dim), logvar (B, latent_dim))``.
        """
        mu, logvar = self.encode(poses, mask)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return self.decode(z), mu, logvar

    def reconstruction_error(self, poses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B,) deterministic reconstruction error of normalised poses (B, K, 2) over ``mask``'s joints."""
        recon, _, _ = self(poses, mask, sample=False)
        return masked_pose_error(recon, poses, mask)

    def freeze(self) -> PoseVAE:
        """Frozen for use as a prior: no gradients, eval mode."""
        self.requires_grad_(False)
        return self.eval()

    def save(self, path: str | Path) -> None:
        """Write weights and config to a safetensors file (safe to load, no pickle)."""
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(
            tensors, str(path), metadata={"format": "geosapiens.pose_vae", "config": json.dumps(self.config)}
        )

    @classmethod
    def load(
        cls, path: str | Path, *, freeze: bool = True, map_location: str | torch.device = "cpu"
    ) -> PoseVAE:
        """Load from a safetensors export or a :class:`PosePriorTask` Lightning checkpoint (``weights_only``).

        Raises:
            CheckpointError: the file is missing, unsafe, or does not hold a pose VAE that fits.
        """
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such pose-prior file")
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), "pt") as f:
                    meta = f.metadata() or {}
                if meta.get("format") != "geosapiens.pose_vae":
                    raise CheckpointError(f"{path}: not a geosapiens pose VAE (metadata {meta})")
                config, state = json.loads(meta["config"]), load_file(str(path), device=str(map_location))
            else:
                ckpt = torch.load(path, map_location=map_location, weights_only=True)
                hparams = ckpt.get("hyper_parameters", {})
                config = {
                    k: hparams[k]
                    for k in ("num_keypoints", "latent_dim", "hidden_dim", "num_layers")
                    if k in hparams
                }
                state = {
                    k.removeprefix("vae."): v for k, v in ckpt["state_dict"].items() if k.startswith("vae.")
                }
            vae = cls(**config)
            vae.load_state_dict(state)
        except CheckpointError:
            raise
        except Exception as e:  # unpickling refusals, missing keys, shape mismatches: name the file
            raise CheckpointError(f"{path}: cannot load a pose VAE ({type(e).__name__}: {e})") from e
        return vae.freeze() if freeze else vae


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


class PoseDataset(Dataset):
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


class PoseDataModule(L.LightningDataModule):
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
        self.train_set: PoseDataset | None = None
        self.val_set: PoseDataset | None = None
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
                "PoseDataModule", "no pose source: give syrip_annotation_files, mini_rgbd_root or poses"
            )
        kp = np.concatenate([s[0] for s in sources])
        lab = np.concatenate([s[1] for s in sources])
        groups = np.asarray([g for s in sources for g in s[2]])
        if len(kp) == 0:
            raise DataError(
                "PoseDataModule", f"the sources hold no pose (syrip_domain={self.hparams.syrip_domain!r})"
            )
        usable = lab[:, list(TORSO_JOINTS)].all(1)
        kp, lab, groups = kp[usable], lab[usable], groups[usable]
        if len(kp) == 0:
            raise DataError("PoseDataModule", "no pose has both shoulders and both hips labelled")

        hp = self.hparams
        unique = np.unique(groups)
        rng = np.random.default_rng(hp.seed)
        n_val = int(round(hp.val_fraction * len(unique))) if len(unique) > 1 else 0
        self.val_groups = sorted(rng.permutation(unique)[:n_val].tolist())
        is_val = np.isin(groups, self.val_groups)
        self.train_set = PoseDataset(kp[~is_val], lab[~is_val])
        val_kp, val_lab = augment_poses(
            torch.from_numpy(kp[is_val]),
            torch.from_numpy(lab[is_val]),
            generator=torch.Generator().manual_seed(hp.seed),
            **self._augmentation(),
        )
        self.val_set = PoseDataset(val_kp, val_lab)

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


class PosePriorTask(L.LightningModule):
    """Trains :class:`PoseVAE` on normalised poses: reconstruction + KL with a linear KL warm-up.

    The KL weight rises from 0 to ``kl_weight`` over ``kl_warmup_steps`` optimiser steps, so the decoder
    learns to reconstruct before the posterior is pulled towards the prior (avoids posterior collapse). The
    checkpoint holds the VAE under ``vae.`` and its shape in the hyper-parameters, which is all
    :meth:`PoseVAE.load` needs.

    Args:
        num_keypoints, latent_dim, hidden_dim, num_layers: :class:`PoseVAE` shape.
        lr, weight_decay: AdamW.
        kl_weight: final weight of the KL term (VPoser uses 5e-3).
        kl_warmup_steps: optimiser steps of the linear KL warm-up (0: none).
    """

    def __init__(
        self,
        num_keypoints: int = 17,
        latent_dim: int = 24,
        hidden_dim: int = 256,
        num_layers: int = 2,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        kl_weight: float = 5e-3,
        kl_warmup_steps: int = 2000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.vae = PoseVAE(num_keypoints, latent_dim, hidden_dim, num_layers)

    def kl_beta(self, step: int | None = None) -> float:
        """KL weight after ``step`` optimiser steps (None: the current global step)."""
        step = self.global_step if step is None else step
        warm = self.hparams.kl_warmup_steps
        return self.hparams.kl_weight * (1.0 if warm <= 0 else min(1.0, step / warm))

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        mask = batch["labelled"]
        poses = normalize_pose(batch["keypoints"], mask)
        recon, mu, logvar = self.vae(poses, mask, sample=stage == "train")
        rec = masked_pose_error(recon, poses, mask).mean()
        kl = (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()
        loss = rec + self.kl_beta() * kl
        bs = poses.shape[0]
        self.log_dict(
            {f"{stage}/loss": loss, f"{stage}/rec": rec, f"{stage}/kl": kl},
            batch_size=bs,
            prog_bar=stage == "val",
            on_step=stage == "train",
            on_epoch=True,
        )
        return loss

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        self.log("train/kl_beta", self.kl_beta(), on_step=True, on_epoch=False)
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.vae.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
