"""Test-time adaptation: a few decoder steps per video (or image group) on the geometric objectives alone.

Before a group of frames is predicted, the encoder stays frozen and the head takes ``steps`` gradient steps on
``L_geo-depth``, ``L_geo-norm``, ``L_manifold`` and, for video, bone-length consistency over time; the frames
are then predicted by the adapted head. The head is reset to its trained weights whenever a new video starts
(or for every group of stills), so nothing learnt on one infant leaks into the next.

:class:`HeadAdaptation` is that procedure on a bare :class:`~geosapiens.models.pose_model.PoseModel`, shared
by ``geosapiens infer --tta.steps k`` and by the :class:`TestTimeAdaptation` callback (``trainer.test`` /
``trainer.predict``).
"""

from __future__ import annotations

import copy
import math

import lightning.pytorch as L
import torch
from torch import nn

from geosapiens.affine import invert_affine
from geosapiens.data.critic_cache import CriticCache
from geosapiens.losses import objectives
from geosapiens.models.codec import UDPHeatmapCodec
from geosapiens.models.critics import GeometricCritic, GeometryMaps
from geosapiens.models.geometry import body_distance
from geosapiens.models.normal_prior import load_normal_priors
from geosapiens.models.pose_vae import PoseVAE

__all__ = ["HeadAdaptation", "TestTimeAdaptation", "TTA_WEIGHTS"]

# Weights of the label-free terms at test time (nothing else pulls the head: no L_sup, no L_cons): the
# training weights of configs/demo/uda.yaml, which give each term the same gradient on the head, with its
# seed terms off (geo_depth, geo_norm: measured not to point to the true pose; `weights` turns them on);
# geo_pose needs a geometry teacher, which TTA does not load yet; temporal's 0.1 is not measured yet.
TTA_WEIGHTS = {"geo_body": 0.35, "geo_depth": 0.0, "geo_norm": 0.0, "manifold": 5e-3, "temporal": 0.1}


class HeadAdaptation:
    """k Adam steps on a pose model's head over label-free objectives, resettable to the trained head.

    The objective is :func:`geosapiens.losses.objectives.label_free_objective`, the one the mean-teacher stage
    trains with. Geometry maps come from a critic cache (by image path, for datasets: its canonical crops are
    the test crops, so they are read as stored) or a critic run on the crops (for new videos); without either
    the geometric terms are off, without normal priors ``geo_norm`` is, without a pose VAE ``manifold`` is.
    Depth is read at the joints the trained head is confident of (its heatmap peaks before the first step
    play the teacher's part).

    Args:
        steps: gradient steps per group (k).
        lr: Adam learning rate of the head.
        critic_cache: critic cache of the images (``geosapiens critics cache``).
        critic: a frozen critic run on the crops when there is no cache.
        normal_priors: per-keypoint normal priors file; required for ``geo_norm``.
        pose_prior: pose VAE checkpoint; required for ``manifold``.
        manifold_margin: prior reconstruction error that costs nothing (``losses.manifold_loss``); None = the
            objective's default (0).
        weights: loss weights over :data:`TTA_WEIGHTS` (``geo_body``, ``geo_depth``, ``geo_norm``,
            ``manifold``, ``temporal``).
        objective: overrides of :class:`~geosapiens.losses.objectives.ObjectiveOptions` by name.
    """

    def __init__(
        self,
        steps: int = 5,
        lr: float = 1e-4,
        critic_cache: str | None = None,
        critic: GeometricCritic | None = None,
        normal_priors: str | None = None,
        pose_prior: str | None = None,
        manifold_margin: float | None = None,
        weights: dict[str, float] | None = None,
        objective: dict | None = None,
    ) -> None:
        self.steps, self.lr = steps, lr
        self.weights = TTA_WEIGHTS | (weights or {})
        unknown = set(self.weights) - set(objectives.TERMS)
        if unknown:
            known = sorted(objectives.TERMS)
            raise ValueError(f"HeadAdaptation: unknown terms {sorted(unknown)}; use {known}")
        self.cache = CriticCache(critic_cache) if critic_cache else None
        self.critic = critic.freeze() if critic is not None else None
        self.priors = load_normal_priors(normal_priors).tensors() if normal_priors else None
        self.vae = PoseVAE.load(pose_prior).requires_grad_(False).eval() if pose_prior else None
        if self.cache is None and self.critic is None:
            for name, term in objectives.TERMS.items():
                if term.needs_maps:
                    self.weights[name] = 0.0
        if self.priors is None:
            self.weights["geo_norm"] = 0.0
        if self.vae is None:
            self.weights["manifold"] = 0.0
        margin = {} if manifold_margin is None else {"manifold_margin": manifold_margin}
        self.options = objectives.ObjectiveOptions().override(**(objective or {}), **margin)
        self.history: list[tuple[float, float]] = []  # (objective before, after) per adapted group
        self._trained: dict | None = None

    @property
    def active(self) -> list[str]:
        """The objectives with weight (what adaptation can use with the files it was given)."""
        return [name for name, w in self.weights.items() if w > 0]

    def remember(self, head: nn.Module) -> None:
        """Keep ``head``'s current weights as the trained ones to reset to."""
        self._trained = copy.deepcopy(head.state_dict())

    def reset(self, head: nn.Module) -> None:
        """Put the trained weights back (a new video starts, or testing ends)."""
        if self._trained is None:
            raise RuntimeError("HeadAdaptation.reset before remember(): no trained head weights kept")
        head.load_state_dict(self._trained)

    def geometry(
        self, images: torch.Tensor, image_paths: list[str] | None, input_size: tuple[int, int]
    ) -> GeometryMaps | None:
        """Critic maps of the crops: cached by path, else computed online, else None."""
        if not any(self.weights[n] > 0 for n, t in objectives.TERMS.items() if t.needs_maps):
            return None
        if self.cache is not None:
            if image_paths is None:
                raise ValueError("HeadAdaptation: a critic cache needs the image paths of the crops")
            if tuple(self.cache.input_size) != tuple(input_size):
                raise ValueError(
                    f"HeadAdaptation: critic cache {self.cache.cache_dir} holds {self.cache.input_size} "
                    f"crops, the model takes {tuple(input_size)}"
                )
            maps = self.cache.load(list(image_paths))
        else:
            with torch.no_grad():
                maps = self.critic(images)
            if maps.valid is not None:
                maps.body_distance = body_distance(maps.valid)

        def to(t: torch.Tensor | None, dtype: torch.dtype | None = None) -> torch.Tensor | None:
            return None if t is None else t.to(images.device, dtype or images.dtype)

        valid = None if maps.valid is None else maps.valid.to(images.device)
        return GeometryMaps(to(maps.depth), to(maps.normals), valid, to(maps.body_distance))

    def objective(
        self,
        heatmaps: torch.Tensor,
        codec: UDPHeatmapCodec,
        maps: GeometryMaps | None,
        crop_to_image: torch.Tensor | None,
        confidence: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Weighted label-free loss of canonical crop heatmaps (+ temporal when ``crop_to_image`` is given).

        ``crop_to_image`` (T, 2, 3) marks the group as consecutive video frames; bone lengths are then
        compared in image pixels, so a box that follows the infant does not count as a change of length.
        """
        weights = {
            name: w
            for name, w in self.weights.items()
            if w > 0
            and (maps is not None or not objectives.TERMS[name].needs_maps)
            and (name != "temporal" or (crop_to_image is not None and heatmaps.shape[0] > 1))
        }
        inputs = objectives.prepare_inputs(
            heatmaps,
            codec,
            maps=maps,
            lambda_z=None if self.cache is None else self.cache.lambda_z,
            confidence=confidence,
            normal_prior=self.priors,
            vae=None if self.vae is None else self.vae.to(heatmaps.device),
            crop_to_image=crop_to_image,
            options=self.options,
        )
        terms = objectives.label_free_objective(inputs, weights)
        return objectives.weighted_sum(terms, weights) if terms else heatmaps.new_zeros(())

    def adapt(
        self,
        model: nn.Module,
        codec: UDPHeatmapCodec,
        images: torch.Tensor,
        *,
        image_paths: list[str] | None = None,
        crop_to_image: torch.Tensor | None = None,
    ) -> None:
        """Take the steps on ``model.head`` for one group of crops (the encoder is not touched).

        The head ends at the best of the weights the steps visited (the objective is evaluated at each
        anyway), so a step that overshoots never makes the prediction worse by the objective's measure.
        """
        head = model.head
        with torch.enable_grad():
            with torch.no_grad():
                features = model.backbone(images)
            maps = self.geometry(images, image_paths, codec.input_size)
            optimizer = torch.optim.Adam(head.parameters(), lr=self.lr)
            first, best, best_state, confidence = None, math.inf, None, None
            for step in range(self.steps + 1):
                heatmaps = head(features)
                if confidence is None:  # the trained head's judgement of which joints it sees
                    confidence = heatmaps.detach().amax(dim=(-2, -1))
                loss = self.objective(heatmaps, codec, maps, crop_to_image, confidence)
                if not loss.requires_grad or not torch.isfinite(loss):
                    break
                value = float(loss.detach())
                first = value if first is None else first
                if value < best:
                    best, best_state = value, copy.deepcopy(head.state_dict())
                if step == self.steps:
                    break
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if best_state is not None:
                head.load_state_dict(best_state)
                self.history.append((first, best))


class TestTimeAdaptation(HeadAdaptation, L.Callback):
    """Adapt the head of ``pl_module.evaluated_network`` on each test/predict batch before it is predicted.

    Batches must be canonical test crops (as every DataModule's test/predict loader gives), in frame order
    for video (a batch whose ``sequence`` differs from the previous batch's starts a new video). The head is
    restored when testing ends. Arguments are :class:`HeadAdaptation`'s.
    """

    __test__ = False  # not a pytest class, whatever its name says

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loop = trainer.test_loop if trainer.testing else trainer.predict_loop
        if loop.inference_mode:
            raise RuntimeError(
                "TestTimeAdaptation takes gradient steps at test time: set `trainer.inference_mode: false`"
            )
        self.remember(pl_module.evaluated_network.head)
        self._sequence: object = object()

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reset(pl_module.evaluated_network.head)

    on_test_start = on_predict_start = _start
    on_test_end = on_predict_end = _end

    def _adapt(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: dict, *args) -> None:
        sequence = batch["sequence"][0] if "sequence" in batch else None
        if sequence is None or sequence != self._sequence:  # a new video (or a group of stills): reset
            self.reset(pl_module.evaluated_network.head)
            self._sequence = sequence
        self.adapt(
            pl_module.evaluated_network,
            pl_module.codec,
            batch["image"],
            image_paths=list(batch["image_path"]),
            crop_to_image=invert_affine(batch["affine"]) if sequence is not None else None,
        )

    on_test_batch_start = on_predict_batch_start = _adapt
