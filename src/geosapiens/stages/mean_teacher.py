"""Stage 2: geometry-guided mean-teacher adaptation on unlabelled real images.

Per step: ``L_sup`` on labelled source crops; ``L_cons`` between the student on the strong view and the EMA
teacher on the weak view (warped into the strong frame); ``L_geo-depth``/``L_geo-norm`` from frozen critic
maps (cached, or run online) at the student's soft-argmax keypoints; ``L_manifold`` from the frozen pose VAE.
Each term has a weight, a start epoch and a ramp (the plan: warm-up 0-20, +cons/manifold 21-50, +geometry
51-80). The teacher is updated after every optimiser step by :class:`~geosapiens.callbacks.ema.EMATeacher`.
"""

from __future__ import annotations

import copy

import lightning.pytorch as L
import torch
from torch import nn

from geosapiens import losses
from geosapiens.callbacks.ema import EMATeacher
from geosapiens.callbacks.schedule import LossSchedule, LossTerm, fractional_epoch
from geosapiens.data.geometry_inputs import maps_to_input
from geosapiens.models.codec import apply_affine
from geosapiens.models.critic_cache import CriticCache, canonical_to_view
from geosapiens.models.critics import GeometricCritic, GeometryMaps
from geosapiens.models.geometry import warp_maps
from geosapiens.models.prior import PoseVAE
from geosapiens.normal_priors import load_normal_priors
from geosapiens.stages.base import PoseStage, pose_model_from_checkpoint


class MeanTeacherAdaptation(PoseStage):
    """Mean teacher with geometric critics and an infant pose-manifold prior.

    Args:
        loss_terms: weight / start epoch / ramp per term (``sup``, ``cons``, ``geo_depth``, ``geo_norm``,
            ``manifold``), over the plan's layout (:data:`~geosapiens.callbacks.schedule.PLAN_LOSS_TERMS`).
        ema_decay: teacher EMA decay (per optimiser step).
        ema_warmup: ramp the decay up over the first steps (timm ModelEmaV3 warm-up).
        evaluate: the network validation (model selection), test and predict score: ``teacher`` (the EMA
            network, the usual mean-teacher choice: it averages out the student's step-to-step noise) or
            ``student``.
        confidence_threshold: mask teacher joints whose heatmap peak is below this value.
        confidence_quantile: or mask the joints below this quantile of the batch's peaks (one of the two).
        soft_argmax_temperature: temperature of the differentiable keypoints used by geometry and prior.
        depth_lambda_z: weight of the (normalised) depth difference in the 2.5D bone length; one unit of
            normalised depth is a few cm while an image unit spans the crop, hence the small default.
        critic_cache: directory written by ``geosapiens critics cache`` (maps in the canonical crop frame).
        critic: a critic run online on the strong view instead of the cache (costs a forward per step).
        pose_prior: pose VAE checkpoint (``PosePriorTask``); required when ``manifold`` has weight.
        manifold_margin: prior reconstruction error that costs nothing (``losses.manifold_loss``); a high
            quantile (e.g. the 95th percentile) of the prior's errors on its own training poses.
        normal_priors: per-keypoint normal priors file (``geosapiens priors fit``); required for ``geo_norm``.
        geometry_teacher: checkpoint of a pose network trained on critic maps
            (:class:`~geosapiens.data.geometry_inputs.CriticInputDataModule`); required for ``geo_pose``,
            whose pseudo-labels are its heatmaps on the critic maps of each target image.
        geo_pose_threshold: geometry-teacher joints whose heatmap peak is below this are left out of
            ``geo_pose``.
        **kwargs: :class:`PoseStage` arguments.
    """

    def __init__(
        self,
        loss_terms: dict[str, LossTerm] | None = None,
        ema_decay: float = 0.999,
        ema_warmup: bool = False,
        evaluate: str = "teacher",
        confidence_threshold: float | None = None,
        confidence_quantile: float | None = 0.3,
        soft_argmax_temperature: float = 0.05,
        depth_lambda_z: float = 1e-3,
        critic_cache: str | None = None,
        critic: GeometricCritic | None = None,
        pose_prior: str | None = None,
        manifold_margin: float = 0.0,
        normal_priors: str | None = None,
        geometry_teacher: str | None = None,
        geo_pose_threshold: float = 0.2,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if evaluate not in ("teacher", "student"):
            raise ValueError(f"evaluate must be 'teacher' or 'student', got {evaluate!r}")
        self.save_hyperparameters(ignore=["critic"])
        self.schedule = LossSchedule(loss_terms)
        terms = self.schedule.terms
        self.teacher = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.critic = critic.freeze() if critic is not None else None
        self.cache = (
            CriticCache(critic_cache, input_size=tuple(self.hparams.input_size)) if critic_cache else None
        )
        geo_pose = terms.get("geo_pose", LossTerm(weight=0.0))
        needs_maps = terms["geo_depth"].weight > 0 or terms["geo_norm"].weight > 0 or geo_pose.weight > 0
        if needs_maps and self.cache is None and self.critic is None:
            raise ValueError("geo_depth/geo_norm have weight but neither critic_cache nor critic is set")
        if terms["manifold"].weight > 0 and not pose_prior:
            raise ValueError("manifold has weight but no pose_prior checkpoint is set")
        if terms["geo_norm"].weight > 0 and not normal_priors:
            raise ValueError("geo_norm has weight but no normal_priors file is set")
        if geo_pose.weight > 0 and not geometry_teacher:
            raise ValueError("geo_pose has weight but no geometry_teacher checkpoint is set")
        self.geometry_teacher = None
        if geometry_teacher:
            net, size, _ = pose_model_from_checkpoint(geometry_teacher)
            if tuple(size) != tuple(self.hparams.input_size):
                raise ValueError(
                    f"{geometry_teacher}: geometry teacher trained on {size[0]}x{size[1]} crops, the stage "
                    f"uses {self.hparams.input_size[0]}x{self.hparams.input_size[1]}"
                )
            self.geometry_teacher = net.requires_grad_(False).eval()
        self.vae = PoseVAE.load(pose_prior).requires_grad_(False).eval() if pose_prior else None
        priors = load_normal_priors(normal_priors) if normal_priors else None
        self.register_buffer(
            "prior_mean", None if priors is None else torch.as_tensor(priors.mean).float(), persistent=False
        )
        self.register_buffer(
            "prior_kappa", None if priors is None else torch.as_tensor(priors.kappa).float(), persistent=False
        )

    @property
    def evaluated_network(self) -> nn.Module:
        return self.teacher if self.hparams.evaluate == "teacher" else self.model

    def train(self, mode: bool = True) -> MeanTeacherAdaptation:
        super().train(mode)
        self.teacher.eval()  # the teacher always predicts with running statistics
        for frozen in (self.vae, self.geometry_teacher):
            if frozen is not None:
                frozen.eval()
        return self

    def configure_callbacks(self) -> list[L.Callback]:
        ema = EMATeacher(
            decay=self.hparams.ema_decay, warmup=self.hparams.ema_warmup, student="model", teacher="teacher"
        )
        return [*super().configure_callbacks(), ema, self.schedule]

    def critic_maps(self, target: dict) -> tuple[GeometryMaps, torch.Tensor]:
        """Critic depth/normals in the CANONICAL crop frame (where the normal priors were fitted) and the
        (B, 2, 3) strong-view -> canonical affine that takes predicted keypoints there."""
        strong_to_canonical = canonical_to_view(target["strong_affine"], target["canonical_affine"])
        if self.cache is not None:
            maps = self.cache.load(list(target["image_path"]))
            device = target["strong"].device
            return GeometryMaps(
                maps.depth.to(device).float(), maps.normals.to(device).float(), maps.valid.to(device)
            ), strong_to_canonical
        with torch.no_grad():
            maps = self.critic(target["strong"])
        return warp_maps(maps, strong_to_canonical, tuple(self.hparams.input_size)), strong_to_canonical

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        source, target = batch["source"], batch["target"]
        w = self.schedule.weights(fractional_epoch(self.trainer, batch_idx))
        n_src = source["image"].shape[0]
        uses_target = any(w.get(k, 0.0) > 0 for k in ("cons", "geo_depth", "geo_norm", "manifold", "geo_pose"))
        # Source and strong target views in one forward; the target is left out while no term needs it
        # (warm-up epochs, the source-only baseline), so BatchNorm statistics never see it then either.
        images = torch.cat([source["image"], target["strong"]]) if uses_target else source["image"]
        heatmaps = self.model(images)
        hm_source, hm_strong = heatmaps[:n_src], heatmaps[n_src:]

        targets, target_weights = self.codec.encode(source["keypoints"], source["weights"])
        terms = {"sup": losses.heatmap_mse(hm_source, targets, target_weights)}
        if w["cons"] > 0:
            with torch.no_grad():
                hm_weak = self.teacher(target["weak"])
            terms["cons"], kept = losses.consistency_loss(
                hm_strong,
                hm_weak,
                target["weak_to_strong"],
                tuple(self.hparams.input_size),
                threshold=self.hparams.confidence_threshold,
                quantile=self.hparams.confidence_quantile,
            )
            self.log("train/cons_kept", kept, batch_size=n_src)
        if w.get("geo_pose", 0.0) > 0:
            maps, _ = self.critic_maps(target)
            with torch.no_grad():
                hm_geo = self.geometry_teacher(maps_to_input(maps))  # canonical-frame pseudo-labels
            terms["geo_pose"], kept_geo = losses.consistency_loss(
                hm_strong,
                hm_geo,
                canonical_to_view(target["canonical_affine"], target["strong_affine"]),
                tuple(self.hparams.input_size),
                threshold=self.hparams.geo_pose_threshold,
            )
            self.log("train/geo_pose_kept", kept_geo, batch_size=n_src)
        if w["geo_depth"] > 0 or w["geo_norm"] > 0 or w["manifold"] > 0:
            keypoints = self.codec.soft_argmax(hm_strong, temperature=self.hparams.soft_argmax_temperature)
            if w["geo_depth"] > 0 or w["geo_norm"] > 0:
                maps, strong_to_canonical = self.critic_maps(target)
                h, w_ = self.hparams.input_size
                uv = apply_affine(keypoints, strong_to_canonical) / keypoints.new_tensor([w_ - 1, h - 1])
                if w["geo_depth"] > 0:
                    terms["geo_depth"] = losses.bone_symmetry_loss(
                        uv, maps.depth, lambda_z=self.hparams.depth_lambda_z, valid=maps.valid
                    )
                if w["geo_norm"] > 0:
                    terms["geo_norm"] = losses.normal_prior_loss(
                        uv, maps.normals, self.prior_mean, self.prior_kappa, valid=maps.valid
                    )
            if w["manifold"] > 0:
                terms["manifold"] = losses.manifold_loss(
                    keypoints,
                    self.vae,
                    keypoints.new_ones(keypoints.shape[1], dtype=torch.bool),
                    margin=self.hparams.manifold_margin,
                )
        total = sum(w[name] * value for name, value in terms.items())
        self.log_dict({f"train/loss_{k}": v for k, v in terms.items()}, batch_size=n_src)
        self.log("train/loss", total, prog_bar=True, batch_size=n_src)
        return total
