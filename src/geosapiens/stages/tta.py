"""Test-time adaptation: a few decoder steps per video (or image group) on the geometric objectives alone.

Before a group of frames is predicted, the encoder stays frozen and the head takes ``steps`` gradient steps on
the label-free terms the mean-teacher stage trains with (``geo_body``, ``geo_heatmap``, ``manifold``; the
seed's ``geo_depth`` and ``geo_norm``) and, for video, bone-length consistency over time; the frames are then
predicted by the adapted head. The head is reset to its trained weights whenever a new video starts (or for
every group of stills), so nothing learnt on one infant leaks into the next.

:class:`HeadAdaptation` is that procedure on a bare :class:`~geosapiens.models.pose_model.PoseModel`, shared
by ``geosapiens infer --tta.steps k`` and by the :class:`TestTimeAdaptation` callback (``trainer.test`` /
``trainer.predict``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as L
import torch
from torch import nn

from geosapiens.affine import invert_affine
from geosapiens.callbacks.schedule import LossSchedule
from geosapiens.data.critic_cache import CriticCache
from geosapiens.losses import objectives
from geosapiens.models.codec import UDPHeatmapCodec
from geosapiens.models.critics import GeometricCritic, GeometryMaps
from geosapiens.models.geometry import body_distance
from geosapiens.models.normal_prior import load_normal_priors
from geosapiens.models.pose_vae import PoseVAE
from geosapiens.models.stage_checkpoint import GeometryTeacher, load_geometry_teacher

__all__ = ["DEFAULT_WEIGHTS", "HeadAdaptation", "TestTimeAdaptation"]

# Weights of the label-free terms for a network trained without them (warm-up, supervised, distilled); a
# mean teacher's own weights replace them (HeadAdaptation.weigh_as). They are configs/demo/uda.yaml's, where
# they are measured (geo_body's head gradient matched to L_cons', geo_heatmap's weight chosen on validation);
# the seed's geo_depth and geo_norm are off there (measured not to point to the true pose). temporal is TTA's
# alone (video); its 0.1 is not measured.
DEFAULT_WEIGHTS = {"geo_body": 0.35, "geo_heatmap": 30.0, "manifold": 5e-3, "temporal": 0.1}


class HeadAdaptation:
    """k Adam steps on a pose model's head over label-free objectives, resettable to the trained head.

    The objective is :func:`geosapiens.losses.objectives.label_free_objective`, the one the mean-teacher stage
    trains with. Geometry maps come from a critic cache (by image path, for datasets: its canonical crops are
    the test crops, so they are read as stored) or a critic run on the crops (for new videos); without either
    the geometric terms are off, without normal priors ``geo_norm`` is, without a pose VAE ``manifold`` is,
    without a geometry teacher ``geo_heatmap`` and ``geo_pose`` are. Depth is read at the joints the trained
    head is confident of (its heatmap peaks before the first step play the teacher's part). The pseudo-labels
    of ``geo_heatmap`` / ``geo_pose`` are the geometry teacher's keypoints on the group's critic maps,
    computed once per group (the maps do not change between steps) by the stage's functions, with no view
    affine (the crops are canonical).

    Weights: :data:`DEFAULT_WEIGHTS`, or, after :meth:`weigh_as` with the hyper-parameters of a mean-teacher
    stage (as :class:`TestTimeAdaptation` and ``geosapiens infer`` do), the weights that stage trained with;
    ``weights`` overrides either.

    Args:
        steps: gradient steps per group (k).
        lr: Adam learning rate of the head.
        critic_cache: critic cache of the images (``geosapiens critics cache``).
        critic: a frozen critic run on the crops when there is no cache.
        normal_priors: per-keypoint normal priors file; required for ``geo_norm``.
        pose_prior: pose VAE checkpoint; required for ``manifold``.
        geometry_teacher: checkpoint of a pose network on critic maps of the model's crop of the box, at any
            resolution (``configs/geometry_teacher.yaml``); required for ``geo_heatmap`` and ``geo_pose``.
            Read by :meth:`remember`.
        manifold_margin: prior reconstruction error that costs nothing (``losses.manifold_loss``); None = the
            objective's default (0).
        weights: weight overrides by term name (``geo_body``, ``geo_heatmap``, ``geo_pose``, ``geo_depth``,
            ``geo_norm``, ``manifold``, ``temporal``).
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
        geometry_teacher: str | None = None,
        manifold_margin: float | None = None,
        weights: dict[str, float] | None = None,
        objective: dict | None = None,
    ) -> None:
        self.steps, self.lr = steps, lr
        self.overrides = dict(weights or {})
        self.cache = CriticCache(critic_cache) if critic_cache else None
        self.critic = critic.freeze() if critic is not None else None
        self.priors = load_normal_priors(normal_priors).tensors() if normal_priors else None
        self.vae = PoseVAE.load(pose_prior).requires_grad_(False).eval() if pose_prior else None
        self.geometry_teacher_file = geometry_teacher
        self.geometry_teacher: GeometryTeacher | None = None  # read by remember(), for the model's crop
        self.weights = self._usable(DEFAULT_WEIGHTS)
        self.options = objectives.ObjectiveOptions.from_args(objective, manifold_margin)
        self.history: list[tuple[float, float]] = []  # (objective before, after) per adapted group
        self._trained: dict | None = None

    def _usable(self, base: Mapping[str, float]) -> dict[str, float]:
        """``base`` with the overrides, and 0 for each term whose files were not given."""
        weights = dict(base) | self.overrides
        unknown = set(weights) - set(objectives.TERMS)
        if unknown:
            known = sorted(objectives.TERMS)
            raise ValueError(f"HeadAdaptation: unknown terms {sorted(unknown)}; use {known}")
        off = {"geo_norm"} if self.priors is None else set()
        off |= {"manifold"} if self.vae is None else set()
        off |= set(objectives.TEACHER_TERMS) if not self.geometry_teacher_file else set()
        if self.cache is None and self.critic is None:
            off |= {name for name, term in objectives.TERMS.items() if term.needs_maps}
        return {name: 0.0 if name in off else w for name, w in weights.items()}

    def weigh_as(self, hparams: Mapping[str, Any]) -> None:
        """Weigh the label-free terms as the stage with these hyper-parameters trained them.

        A mean teacher's ``loss_terms``, over the plan's layout as its
        :class:`~geosapiens.callbacks.schedule.LossSchedule` reads them, give each term's final weight (so a
        trained network is adapted on its own objective, written once in its config); a stage without them
        (warm-up, supervised, distilled) gets :data:`DEFAULT_WEIGHTS`. ``temporal``, which no stage trains,
        keeps its default.
        """
        base = DEFAULT_WEIGHTS
        if "loss_terms" in hparams:
            terms = LossSchedule(hparams["loss_terms"]).terms
            trained = {name: term.weight for name, term in terms.items() if name in objectives.TERMS}
            base = {"temporal": DEFAULT_WEIGHTS["temporal"]} | trained
        self.weights = self._usable(base)

    @property
    def active(self) -> list[str]:
        """The objectives with weight (what adaptation can use with the files it was given)."""
        return [name for name, w in self.weights.items() if w > 0]

    def remember(self, head: nn.Module, input_size: tuple[int, int]) -> None:
        """Keep ``head``'s current weights as the trained ones to reset to, and read the geometry teacher,
        which must see the model's ``input_size`` crop of the box (checked here, before anything is
        predicted)."""
        self._trained = copy.deepcopy(head.state_dict())
        if self.geometry_teacher_file:
            self.geometry_teacher = load_geometry_teacher(self.geometry_teacher_file, input_size)

    def reset(self, head: nn.Module) -> None:
        """Put the trained weights back (a new video starts, or testing ends)."""
        if self._trained is None:
            raise RuntimeError("HeadAdaptation.reset before remember(): no trained head weights kept")
        head.load_state_dict(self._trained)

    def geometry(
        self, images: torch.Tensor, image_paths: list[str] | None, input_size: tuple[int, int]
    ) -> GeometryMaps | None:
        """Critic maps of the crops: cached by path, else computed online, else None."""
        if not any(w > 0 and objectives.TERMS[n].needs_maps for n, w in self.weights.items()):
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

    def pseudo_labels(self, maps: GeometryMaps | None, codec: UDPHeatmapCodec) -> dict[str, torch.Tensor]:
        """The geometry teacher's pseudo-labels of a group of canonical crops (``extras``; empty when no term
        reads them)."""
        if maps is None or all(self.weights.get(name, 0.0) <= 0 for name in objectives.TEACHER_TERMS):
            return {}
        if self.geometry_teacher is None:
            raise RuntimeError("HeadAdaptation.adapt before remember(): the geometry teacher is read there")
        teacher = self.geometry_teacher.to(maps.depth.device)
        keypoints, keep = objectives.geometry_teacher_keypoints(teacher, maps, codec, self.options)
        return objectives.geometry_pseudo_labels(keypoints, keep, None, codec, self.options)

    def objective(
        self,
        heatmaps: torch.Tensor,
        codec: UDPHeatmapCodec,
        maps: GeometryMaps | None,
        crop_to_image: torch.Tensor | None,
        confidence: torch.Tensor | None = None,
        extras: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Weighted label-free loss of canonical crop heatmaps (+ temporal when ``crop_to_image`` is given).

        ``crop_to_image`` (T, 2, 3) marks the group as consecutive video frames; bone lengths are then
        compared in image pixels, so a box that follows the infant does not count as a change of length.
        ``extras`` holds the group's geometry-teacher pseudo-labels (:meth:`pseudo_labels`).
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
            extras=extras,
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
            extras = self.pseudo_labels(maps, codec)
            optimizer = torch.optim.Adam(head.parameters(), lr=self.lr)
            first, best, best_state, confidence = None, math.inf, None, None
            for step in range(self.steps + 1):
                heatmaps = head(features)
                if confidence is None:  # the trained head's judgement of which joints it sees
                    confidence = heatmaps.detach().amax(dim=(-2, -1))
                loss = self.objective(heatmaps, codec, maps, crop_to_image, confidence, extras)
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
    restored when testing ends. The terms are weighted as the module's stage trained them
    (:meth:`HeadAdaptation.weigh_as`). Arguments are :class:`HeadAdaptation`'s.
    """

    __test__ = False  # not a pytest class, whatever its name says

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loop = trainer.test_loop if trainer.testing else trainer.predict_loop
        if loop.inference_mode:
            raise RuntimeError(
                "TestTimeAdaptation takes gradient steps at test time: set `trainer.inference_mode: false`"
            )
        self.weigh_as(pl_module.hparams)
        self.remember(pl_module.evaluated_network.head, pl_module.codec.input_size)
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
