"""Test-time adaptation: a few decoder steps per video (or image group) on the geometric objectives alone.

Before a group of test or predict frames is scored, the encoder stays frozen and the head takes ``steps``
gradient steps on ``L_geo-depth``, ``L_geo-norm``, ``L_manifold`` and, for video, bone-length consistency
over time; the frames are then predicted by the adapted head. The head is reset to its trained weights
whenever a new video starts (or for every batch of stills), so nothing learnt on one infant leaks into the
next, and restored when testing ends.
"""

from __future__ import annotations

import copy

import lightning.pytorch as L
import torch

from geosapiens import losses
from geosapiens.models.critic_cache import CriticCache
from geosapiens.models.prior import PoseVAE
from geosapiens.normal_priors import load_normal_priors


class TestTimeAdaptation(L.Callback):
    """Adapt ``pl_module.model.head`` on each test/predict group before it is predicted.

    Batches must be canonical test crops (as every DataModule's test/predict loader gives), in frame order
    for video (a batch whose ``sequence`` differs from the previous batch's starts a new video).

    Args:
        steps: gradient steps per batch (k).
        lr: Adam learning rate of the head.
        critic_cache: critic cache of the test images (``geosapiens critics cache``); None = no geometry.
        normal_priors: per-keypoint normal priors file; required for ``geo_norm``.
        pose_prior: pose VAE checkpoint; required for ``manifold``.
        weights: loss weights (``geo_depth``, ``geo_norm``, ``manifold``, ``temporal``).
        soft_argmax_temperature: temperature of the differentiable keypoints.
        depth_lambda_z: depth weight of the 2.5D bone length.
    """

    __test__ = False  # not a pytest class, whatever its name says

    def __init__(
        self,
        steps: int = 5,
        lr: float = 1e-4,
        critic_cache: str | None = None,
        normal_priors: str | None = None,
        pose_prior: str | None = None,
        weights: dict[str, float] | None = None,
        soft_argmax_temperature: float = 0.05,
        depth_lambda_z: float = 1e-3,
    ) -> None:
        self.steps, self.lr = steps, lr
        self.weights = {"geo_depth": 0.1, "geo_norm": 0.1, "manifold": 0.05, "temporal": 0.1} | (
            weights or {}
        )
        self.cache = CriticCache(critic_cache) if critic_cache else None
        self.priors = load_normal_priors(normal_priors).tensors() if normal_priors else None
        self.vae = PoseVAE.load(pose_prior).requires_grad_(False).eval() if pose_prior else None
        if self.cache is None:
            self.weights["geo_depth"] = self.weights["geo_norm"] = 0.0
        if self.priors is None:
            self.weights["geo_norm"] = 0.0
        if self.vae is None:
            self.weights["manifold"] = 0.0
        self.temperature, self.lambda_z = soft_argmax_temperature, depth_lambda_z
        self.history: list[tuple[float, float]] = []  # (objective before, after) per adapted batch
        self._trained: dict | None = None
        self._sequence: object = object()

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loop = trainer.test_loop if trainer.testing else trainer.predict_loop
        if loop.inference_mode:
            raise RuntimeError(
                "TestTimeAdaptation takes gradient steps at test time: set `trainer.inference_mode: false`"
            )
        self._trained = copy.deepcopy(pl_module.model.head.state_dict())
        self._sequence = object()

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.model.head.load_state_dict(self._trained)

    on_test_start = on_predict_start = _start
    on_test_end = on_predict_end = _end

    def objective(self, pl_module: L.LightningModule, heatmaps: torch.Tensor, batch: dict) -> torch.Tensor:
        """Weighted geometric + prior (+ temporal) loss of the head's heatmaps on canonical crops."""
        keypoints = pl_module.codec.soft_argmax(heatmaps, temperature=self.temperature)
        h, w = pl_module.hparams.input_size
        uv = keypoints / keypoints.new_tensor([w - 1, h - 1])
        total = keypoints.new_zeros(())
        if self.weights["geo_depth"] > 0 or self.weights["geo_norm"] > 0:
            maps = self.cache.load(list(batch["image_path"]))
            depth, normals = maps.depth.to(uv).float(), maps.normals.to(uv).float()
            valid = maps.valid.to(uv.device)
            if self.weights["geo_depth"] > 0:
                total = total + self.weights["geo_depth"] * losses.bone_symmetry_loss(
                    uv, depth, lambda_z=self.lambda_z, valid=valid
                )
            if self.weights["geo_norm"] > 0:
                mean, kappa = (t.to(uv) for t in self.priors)
                total = total + self.weights["geo_norm"] * losses.normal_prior_loss(
                    uv, normals, mean, kappa, valid=valid
                )
        if self.weights["manifold"] > 0:
            labelled = torch.ones(keypoints.shape[1], dtype=torch.bool, device=keypoints.device)
            total = total + self.weights["manifold"] * losses.manifold_loss(
                keypoints, self.vae.to(uv), labelled
            )
        if self.weights["temporal"] > 0 and "sequence" in batch and keypoints.shape[0] > 1:
            total = total + self.weights["temporal"] * losses.bone_length_consistency(keypoints)
        return total

    def _adapt(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, *args) -> None:
        sequence = batch["sequence"][0] if "sequence" in batch else None
        if sequence is None or sequence != self._sequence:  # a new video (or a group of stills): reset
            pl_module.model.head.load_state_dict(self._trained)
            self._sequence = sequence
        head = pl_module.model.head
        with torch.enable_grad():
            with torch.no_grad():
                features = pl_module.model.backbone(batch["image"])  # the encoder stays frozen
            optimizer = torch.optim.Adam(head.parameters(), lr=self.lr)
            before = None
            for _ in range(self.steps):
                loss = self.objective(pl_module, head(features), batch)
                if not loss.requires_grad or not torch.isfinite(loss):
                    break
                before = float(loss.detach()) if before is None else before
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if before is not None:
                with torch.no_grad():
                    self.history.append((before, float(self.objective(pl_module, head(features), batch))))

    on_test_batch_start = on_predict_batch_start = _adapt
