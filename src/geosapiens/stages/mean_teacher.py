"""Stage 2: geometry-guided mean-teacher adaptation on unlabelled real images.

Per step: ``L_sup`` on labelled source crops; ``L_cons`` between the student on the strong view and the EMA
teacher on the weak view (warped into the strong frame); the label-free terms of
:mod:`geosapiens.losses.objectives` (``geo_body``, ``geo_depth``, ``geo_norm``, ``manifold``) on the student's
strong-view heatmaps, with critic maps of the canonical crop (cached: read by the DataLoader workers into the
batch; or run online on the strong view). Each term has a weight, a start epoch and a ramp (the plan: warm-up
0-20, +cons/manifold 21-50, +geometry 51-80). The teacher is updated after every optimiser step by
:class:`~geosapiens.callbacks.ema.EMATeacher`.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as L
import torch
from torch import nn

from geosapiens.callbacks.ema import EMATeacher
from geosapiens.callbacks.schedule import LossSchedule, LossTerm, fractional_epoch
from geosapiens.data.critic_cache import maps_from_entries
from geosapiens.data.crop import canonical_to_view, view_to_canonical
from geosapiens.losses import functional as losses
from geosapiens.losses import objectives
from geosapiens.models.critics import GeometricCritic
from geosapiens.models.geometry import body_distance, warp_maps
from geosapiens.models.normal_prior import load_normal_priors
from geosapiens.models.pose_vae import PoseVAE
from geosapiens.models.stage_checkpoint import load_geometry_teacher
from geosapiens.stages.base import PoseStage

SUPERVISED_TERMS = ("sup", "cons")  # every other term is a label-free one (losses.objectives.TERMS)


class MeanTeacherAdaptation(PoseStage):
    """Mean teacher with geometric critics and an infant pose-manifold prior.

    Critic maps come from ``critic`` run on the strong view when one is given, else from the target batches
    (``critic_maps``: the target DataModule's ``critic_cache``, read by its workers; the one place the cache
    is named).

    Args:
        loss_terms: weight / start epoch / ramp per term (``sup``, ``cons`` and the label-free terms
            ``geo_body``, ``geo_depth``, ``geo_norm``, ``manifold``), over the plan's layout
            (:data:`~geosapiens.callbacks.schedule.PLAN_LOSS_TERMS`).
        ema_decay: teacher EMA decay (per optimiser step).
        ema_warmup: ramp the decay up over the first steps (timm ModelEmaV3 warm-up).
        evaluate: the network validation (model selection), test and predict score: ``teacher`` (the EMA
            network, the usual mean-teacher choice: it averages out the student's step-to-step noise) or
            ``student``.
        confidence_threshold: mask teacher joints whose heatmap peak is below this value.
        confidence_quantile: or mask the joints below this quantile of the batch's peaks (one of the two).
        objective: overrides of :class:`~geosapiens.losses.objectives.ObjectiveOptions` by name (soft-argmax
            ``temperature``/``normalize``/``window``, ``lambda_z``, ``edge_threshold``,
            ``visibility_threshold``); the defaults are stated there once.
        critic: a critic run online on the strong view instead of cached maps (costs a forward per step).
        pose_prior: pose VAE checkpoint (``PosePriorTask``); required when ``manifold`` has weight.
        manifold_margin: prior reconstruction error that costs nothing (``losses.manifold_loss``); a high
            quantile (e.g. the 95th percentile) of the prior's errors on its own training poses; None = the
            objective's default (0: the plain error).
        normal_priors: per-keypoint normal priors file (``geosapiens priors fit``); required for ``geo_norm``.
        geometry_teacher: checkpoint of a pose network trained on critic maps of the model's crop of the box,
            at any resolution (``configs/geometry_teacher.yaml``); required for ``geo_heatmap`` and
            ``geo_pose``, whose pseudo-labels are its keypoints on the critic maps of each target image.
            Frozen, and like the pose VAE re-read from its file.
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
        objective: dict[str, Any] | None = None,
        critic: GeometricCritic | None = None,
        pose_prior: str | None = None,
        manifold_margin: float | None = None,
        normal_priors: str | None = None,
        geometry_teacher: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if evaluate not in ("teacher", "student"):
            raise ValueError(f"evaluate must be 'teacher' or 'student', got {evaluate!r}")
        self.save_hyperparameters(ignore=["critic"])
        self.schedule = LossSchedule(loss_terms)
        terms = self.schedule.terms
        self.label_free = [name for name in terms if name not in SUPERVISED_TERMS]
        unknown = set(self.label_free) - set(objectives.TERMS)
        if unknown:
            raise ValueError(
                f"loss_terms {sorted(unknown)} are unknown: use sup, cons or {sorted(objectives.TERMS)}"
            )
        self.options = objectives.ObjectiveOptions.from_args(objective, manifold_margin)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.hold_frozen("critic", critic)
        if terms.get("manifold", LossTerm(0.0)).weight > 0 and not pose_prior:
            raise ValueError("manifold has weight but no pose_prior checkpoint is set")
        if terms.get("geo_norm", LossTerm(0.0)).weight > 0 and not normal_priors:
            raise ValueError("geo_norm has weight but no normal_priors file is set")
        for name in objectives.TEACHER_TERMS:
            if terms.get(name, LossTerm(0.0)).weight > 0 and not geometry_teacher:
                raise ValueError(f"{name} has weight but no geometry_teacher checkpoint is set")
        net = None
        if geometry_teacher:
            net = load_geometry_teacher(geometry_teacher, self.hparams.input_size)
        self.hold_frozen("geometry_teacher", net)
        self._geometry_memo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.hold_frozen("vae", PoseVAE.load(pose_prior) if pose_prior else None)
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

    def configure_callbacks(self) -> list[L.Callback]:
        ema = EMATeacher(
            decay=self.hparams.ema_decay, warmup=self.hparams.ema_warmup, student="model", teacher="teacher"
        )
        return [ema, self.schedule]

    def critic_inputs(self, target: dict) -> dict[str, Any]:
        """Critic maps in the CANONICAL crop frame (where the normal priors were fitted), the (B, 2, 3)
        strong-view -> canonical affine that takes predicted keypoints there, and the critic's lambda_z."""
        strong_to_canonical = view_to_canonical(target["canonical_affine"], target["strong_affine"])
        if self.critic is None:
            if "critic_maps" in target:  # read by the DataLoader workers, stored at the cache's stride
                maps = maps_from_entries(target["critic_maps"].float())
                lambda_z = target.get("critic_lambda_z")
                return {"maps": maps, "view_to_maps": strong_to_canonical, "lambda_z": lambda_z}
            raise ValueError(
                "a geometric term has weight but the target batches carry no critic maps: set the target "
                "DataModule's critic_cache (data.init_args.target.init_args.critic_cache) or the model's "
                "critic"
            )
        with torch.no_grad():
            online = self.critic(target["strong"])
        maps = warp_maps(online, strong_to_canonical, tuple(self.hparams.input_size))
        if online.valid is not None:
            maps.body_distance = body_distance(maps.valid)
        return {
            "maps": maps,
            "view_to_maps": strong_to_canonical,
            "lambda_z": getattr(self.critic, "lambda_z", None),
        }

    def geometry_keypoints(self, target: dict, maps) -> tuple[torch.Tensor, torch.Tensor]:
        """The geometry teacher's canonical keypoints and pseudo-label joints for the target batch
        (:func:`~geosapiens.losses.objectives.geometry_teacher_keypoints`). Cached critic maps
        never change, so each image's are computed once and kept (in memory, not in checkpoints): the
        teacher then costs one forward per target image per run, not one per step."""
        if "critic_maps" not in target:  # an online critic's maps follow the view: no reuse
            return objectives.geometry_teacher_keypoints(
                self.geometry_teacher, maps, self.codec, self.options
            )
        paths = list(target["image_path"])
        todo = [i for i, path in enumerate(paths) if path not in self._geometry_memo]
        if todo:
            index = torch.as_tensor(todo, device=maps.depth.device)
            rows = maps.rows(index)
            keypoints, keep = objectives.geometry_teacher_keypoints(
                self.geometry_teacher, rows, self.codec, self.options
            )
            for j, i in enumerate(todo):
                self._geometry_memo[paths[i]] = (keypoints[j], keep[j])
        keypoints, keep = zip(*(self._geometry_memo[path] for path in paths), strict=True)
        return torch.stack(keypoints), torch.stack(keep)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        w = self.schedule.weights(fractional_epoch(self.trainer, batch_idx))
        terms, kept = self.step_terms(batch, w)
        n_src = batch["source"]["image"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in kept.items()}, batch_size=n_src)
        total = sum(w[name] * value for name, value in terms.items())
        self.log_dict({f"train/loss_{k}": v for k, v in terms.items()}, batch_size=n_src)
        self.log("train/loss", total, prog_bar=True, batch_size=n_src)
        return total

    def step_terms(
        self, batch: dict, w: dict[str, float]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """The step's terms, unweighted (``sup`` always, the others where ``w`` is positive), and the share
        of teacher joints each pseudo-label term kept (``cons_kept``, ``geo_teacher_kept``).

        ``training_step`` weights them; ``benchmarks/geometry_signal.py`` measures each one's gradient."""
        source, target = batch["source"], batch["target"]
        label_free = {name: w[name] for name in self.label_free if w.get(name, 0.0) > 0}
        kept: dict[str, torch.Tensor] = {}
        n_src = source["image"].shape[0]
        # Source and strong target views in one forward; the target is left out while no term needs it
        # (warm-up epochs, the source-only baseline), so BatchNorm statistics never see it then either.
        uses_target = w.get("cons", 0.0) > 0 or bool(label_free)
        images = torch.cat([source["image"], target["strong"]]) if uses_target else source["image"]
        heatmaps = self.model(images)
        hm_source, hm_strong = heatmaps[:n_src], heatmaps[n_src:]

        targets, target_weights = self.codec.encode(source["keypoints"], source["weights"])
        terms = {"sup": losses.heatmap_mse(hm_source, targets, target_weights)}
        confidence = None
        needs_confidence = "geo_depth" in label_free and self.options.visibility_threshold is not None
        if w.get("cons", 0.0) > 0 or needs_confidence:
            with torch.no_grad():
                hm_weak = self.teacher(target["weak"])
            confidence = hm_weak.amax(dim=(-2, -1))  # weak and strong views share the channel order
        if w.get("cons", 0.0) > 0:
            terms["cons"], cons_kept = losses.consistency_loss(
                hm_strong,
                hm_weak,
                target["weak_to_strong"],
                tuple(self.hparams.input_size),
                threshold=self.hparams.confidence_threshold,
                quantile=self.hparams.confidence_quantile,
            )
            kept["cons_kept"] = cons_kept
        if label_free:
            geometric = any(objectives.TERMS[name].needs_maps for name in label_free)
            critic = self.critic_inputs(target) if geometric else {}
            extras = {}
            if any(name in label_free for name in objectives.TEACHER_TERMS):
                extras = objectives.geometry_pseudo_labels(
                    *self.geometry_keypoints(target, critic["maps"]),
                    canonical_to_view(target["canonical_affine"], target["strong_affine"]),
                    self.codec,
                    self.options,
                )
                kept["geo_teacher_kept"] = extras["geo_keep"].float().mean()
            inputs = objectives.prepare_inputs(
                hm_strong,
                self.codec,
                **critic,
                extras=extras,
                confidence=confidence,
                normal_prior=None if self.prior_mean is None else (self.prior_mean, self.prior_kappa),
                vae=self.vae,
                options=self.options,
            )
            terms |= objectives.label_free_objective(inputs, label_free)
        return terms, kept
