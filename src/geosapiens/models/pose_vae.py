"""Infant pose-manifold prior: a small VAE over normalised 2D COCO-17 poses (SPEC §4, §5 ``L_manifold``).

Poses are normalised (centre at mid-hip, scale by torso length) so the prior sees shape only; lying infants
take any in-plane orientation and either chirality, so training augments with rotations up to +-180 deg,
horizontal flips (with the COCO-17 left/right channel swap) and anisotropic scaling (a uniform scale would be
undone by the normalisation; stretching one axis mimics foreshortening). Missing joints are zeroed and their
mask is fed to the encoder, so one prior serves datasets that label different joints (MINI-RGBD has no eyes
or ears).

Used frozen: :func:`~.losses.functional.manifold_loss` scores predicted poses by their reconstruction
error.
Load a trained prior with :meth:`PoseVAE.load` from the Lightning checkpoint of :class:`PosePriorTask` or from
a safetensors export (:meth:`PoseVAE.save`).

VAE shape follows VPoser (Pavlakos et al. 2019; an MLP encoder to a Gaussian latent and an MLP decoder),
scaled down to 2D keypoints: ~0.2M parameters at the defaults.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from geosapiens.errors import CheckpointError
from geosapiens.models.stage_checkpoint import prefixed_weights, read_checkpoint
from geosapiens.skeleton import COCO17

__all__ = [
    "normalize_pose",
    "masked_pose_error",
    "PoseVAE",
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
                ckpt = read_checkpoint(path)
                hparams = ckpt.get("hyper_parameters", {})
                config = {
                    k: hparams[k]
                    for k in ("num_keypoints", "latent_dim", "hidden_dim", "num_layers")
                    if k in hparams
                }
                state = prefixed_weights(ckpt, path, "vae.")
            vae = cls(**config)
            vae.load_state_dict(state)
        except CheckpointError:
            raise
        except Exception as e:  # unpickling refusals, missing keys, shape mismatches: name the file
            raise CheckpointError(f"{path}: cannot load a pose VAE ({type(e).__name__}: {e})") from e
        return vae.freeze() if freeze else vae
