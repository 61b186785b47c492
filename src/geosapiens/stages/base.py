"""What every pose stage shares: the model, the codec, evaluation and the optimiser.

Stages are thin (torchgeo-style tasks): the model comes from
:func:`~geosapiens.models.stage_checkpoint.build_pose_model`, targets and decoding
from the codec, losses from :mod:`~geosapiens.losses.functional`, metrics from :mod:`geosapiens.metrics`.
A stage only says which losses it combines.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from geosapiens.affine import apply_affine, invert_affine
from geosapiens.metrics.pck import PCK, SampleErrors, pck_curve_from_errors
from geosapiens.models.codec import UDPHeatmapCodec, flip_test
from geosapiens.models.frozen import drop_frozen_keys, frozen_children, keep_frozen
from geosapiens.models.stage_checkpoint import VALIDATION_CONFIDENCE, build_pose_model, load_model_weights
from geosapiens.skeleton import COCO17


class PoseStage(L.LightningModule):
    """Base of the pose stages.

    Args:
        backbone: backbone name for :func:`geosapiens.models.backbone.create_backbone`.
        input_size: crop size (H, W); heatmaps are (H/4, W/4).
        backbone_kwargs: extra backbone arguments (``checkpoint``, ``patch_padding``, ``family``...).
        head_kwargs: extra :class:`DeconvHead` arguments.
        sigma: Gaussian sigma of the heatmap targets, in heatmap pixels.
        encoder_lr: AdamW learning rate of the backbone.
        decoder_lr: AdamW learning rate of the head (and any other new module).
        weight_decay: AdamW weight decay (not applied to norms, biases and position embeddings).
        layer_decay: layer-wise LR decay of ViT blocks (Sapiens fine-tuning uses 0.75-0.95); None = off.
        warmup_steps: linear LR warm-up; then cosine decay to 0 over the run when ``cosine`` is True.
        cosine: cosine-decay the learning rates over ``trainer.estimated_stepping_batches``.
        flip_test: average the heatmaps of the image and its mirror at evaluation.
        pck_thresholds: PCK thresholds reported at validation and test.
        pck_norm: PCK normalisation (``bbox`` max side, ``bbox_diag``, ``torso``, ``head_neck``, ``image``).
        init_checkpoint: Lightning checkpoint whose ``model.*`` weights start this stage (stage chaining).
        grad_checkpointing: per-block activation checkpointing of the backbone (memory for compute).
        pose_model: a ready pose model instead of ``backbone`` + head, e.g. the adult zero-shot
            :class:`~geosapiens.models.zero_shot.ZeroShotPoseModel`.
    """

    # the checkpoints' selection metric: ``geosapiens fit`` gives it to the config's ModelCheckpoint and
    # EarlyStopping callbacks
    monitor = "val/pck@0.1"

    def __init__(
        self,
        backbone: str = "sapiens_0.6b",
        input_size: tuple[int, int] = (1024, 1024),
        backbone_kwargs: dict[str, Any] | None = None,
        head_kwargs: dict[str, Any] | None = None,
        sigma: float = 2.0,
        encoder_lr: float = 1e-5,
        decoder_lr: float = 1e-3,
        weight_decay: float = 0.05,
        layer_decay: float | None = None,
        warmup_steps: int = 0,
        cosine: bool = False,
        flip_test: bool = True,
        pck_thresholds: tuple[float, ...] = (0.05, 0.1, 0.2),
        pck_norm: str = "bbox",
        init_checkpoint: str | None = None,
        grad_checkpointing: bool = False,
        pose_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["pose_model"])
        h, w = input_size
        self.model = pose_model or build_pose_model(backbone, input_size, backbone_kwargs, head_kwargs)
        if init_checkpoint:
            load_model_weights(self.model, init_checkpoint)
        if grad_checkpointing:
            self.model.backbone.set_grad_checkpointing(True)
        self.codec = UDPHeatmapCodec((h, w), (h // 4, w // 4), sigma=sigma)
        self.param_ndims: dict[int, int] = {}
        self.val_pck = PCK(thresholds=pck_thresholds, norm=pck_norm)
        # how sure the network is of the validation poses: the mean over images of their joints' heatmap
        # peaks, kept in the checkpoint (a geometry teacher's is the reference of its per-image gate)
        self.val_confidence = MeanMetric()
        self.validation_confidence: float | None = None
        self.test_pck = PCK(thresholds=pck_thresholds, norm=pck_norm)
        # every test sample's errors, for paired comparisons of runs, and the test PCK curve drawn from them
        # (both written by TestResultsWriter; LogValidationImages plots the curve)
        self.test_errors = SampleErrors(norm=pck_norm)
        self.test_samples: dict[str, Any] | None = None
        self.test_pck_curve: dict[str, Any] | None = None

    # -- frozen networks -------------------------------------------------------------------------------------
    def hold_frozen(self, name: str, network: nn.Module | None) -> None:
        """Hold a network read from its own file (critic, pose prior, geometry or distillation teacher) as
        ``self.<name>``: no gradients, always in eval mode, in no optimiser group and in no checkpoint
        (:mod:`geosapiens.models.frozen`). ``network`` may be None (not given, or read later)."""
        if network is not None:
            network.requires_grad_(False).eval()
        setattr(self, name, network)
        keep_frozen(self, name)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        drop_frozen_keys(self, checkpoint["state_dict"])
        if self.validation_confidence is not None:
            checkpoint[VALIDATION_CONFIDENCE] = self.validation_confidence

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # a resumed run's checkpoints keep it until its next validation
        self.validation_confidence = checkpoint.get(VALIDATION_CONFIDENCE)

    def train(self, mode: bool = True) -> PoseStage:
        super().train(mode)
        for name in frozen_children(self):
            if getattr(self, name, None) is not None:
                getattr(self, name).eval()
        return self

    # -- inference -------------------------------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    @property
    def evaluated_network(self) -> nn.Module:
        """The network validation, test and predict score (and test-time adaptation adapts)."""
        return self.model

    def predict_heatmaps(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Heatmaps (B, K, h, w), averaged with the mirrored image's when ``flip_test`` is on."""
        heatmaps = model(images)
        if self.hparams.flip_test:
            heatmaps = flip_test(heatmaps, model(images.flip(-1)), COCO17.flip_indices)
        return heatmaps

    def predict_keypoints(
        self, images: torch.Tensor, affine: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints (B, K, 2) in IMAGE pixels and scores (B, K), through the crop affine (B, 2, 3)."""
        keypoints, scores = self.codec.decode(self.predict_heatmaps(self.evaluated_network, images))
        return apply_affine(keypoints, invert_affine(affine)), scores

    # -- evaluation ------------------------------------------------------------------------------------------
    def _evaluate(
        self,
        batch: dict,
        metric: PCK,
        errors: SampleErrors | None = None,
        confidence: MeanMetric | None = None,
    ) -> None:
        pred, scores = self.predict_keypoints(batch["image"], batch["affine"])
        if confidence is not None:
            confidence.update(scores.mean(dim=1))
        target = apply_affine(batch["keypoints"], invert_affine(batch["affine"]))
        labelled = batch["weights"] > 0
        metric.update(pred, target, labelled, bbox=batch["bbox"])
        if errors is not None and "index" in batch:
            errors.update(pred, target, labelled, index=batch["index"], bbox=batch["bbox"])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_pck, confidence=self.val_confidence)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_pck, self.test_errors)

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_pck, "val/")
        if self.val_confidence.update_called:
            self.validation_confidence = float(self.val_confidence.compute())
            self.log("val/confidence", self.validation_confidence, sync_dist=False)
        self.val_confidence.reset()

    def on_test_epoch_end(self) -> None:
        self._log_metric(self.test_pck, "test/")
        self.test_samples = self.test_pck_curve = None
        if self.test_errors.update_called:
            index, errors = self.test_errors.compute()  # a collective under DDP: every rank calls it
            self.test_samples = {
                "norm": self.test_errors.norm,
                "keypoints": list(COCO17.names),
                "index": index.reshape(-1).tolist(),
                "errors": errors.tolist(),
            }
            self.test_pck_curve = pck_curve_from_errors(errors, self.test_errors.norm)
        self.test_errors.reset()

    def _log_metric(self, metric: PCK, prefix: str) -> None:
        values = metric.compute()
        self.log_dict({f"{prefix}{k}": v for k, v in values.items() if v.ndim == 0}, sync_dist=False)
        metric.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Keypoints in image pixels with what a prediction writer needs to place them."""
        keypoints, scores = self.predict_keypoints(batch["image"], batch["affine"])
        out = {"keypoints": keypoints, "scores": scores, "bbox": batch["bbox"]}
        out |= {k: batch[k] for k in ("image_path", "image_id", "sequence", "frame") if k in batch}
        return out

    # -- optimisation ----------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # FSDP (use_orig_params) wraps the module after this hook and hands the optimiser 1-D shard views of
        # the same parameter objects; their true ranks, which decide weight decay, are read here
        self.param_ndims = {id(p): p.ndim for p in self.parameters()}

    def decoder_modules(self) -> list[nn.Module]:
        """Modules trained at the decoder LR (the head; stages add their own new modules)."""
        return [self.model.head]

    def configure_optimizers(self):
        hp, ndims = self.hparams, self.param_ndims
        groups = param_groups(self.model.backbone, hp.encoder_lr, hp.weight_decay, hp.layer_decay, ndims)
        for module in self.decoder_modules():
            groups += param_groups(module, hp.decoder_lr, hp.weight_decay, ndims=ndims)
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self.hparams.cosine else None
        schedule = lr_lambda(self.hparams.warmup_steps, total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_lambda(warmup_steps: int, total_steps: int | None):
    """Linear warm-up then (optionally) cosine decay, as a LambdaLR factor."""
    import math

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if total_steps is None:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def param_groups(
    module: nn.Module,
    lr: float,
    weight_decay: float,
    layer_decay: float | None = None,
    ndims: dict[int, int] | None = None,
) -> list[dict]:
    """AdamW groups: no decay for 1-D params and position embeddings; optional layer-wise LR decay.

    ``ndims`` maps ``id(parameter)`` to its rank before FSDP flattened it (a shard view is always 1-D).

    Layer ids follow Sapiens' LayerDecayOptimWrapperConstructor: 0 = patch/pos embedding,
    ``blocks.i`` = i + 1, the rest = L + 1; LR scale = decay ** (L + 1 - id).
    """
    num_blocks = len(getattr(getattr(module, "vit", module), "blocks", [])) if layer_decay else 0
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        ndim = (ndims or {}).get(id(p), p.ndim)
        decay = 0.0 if ndim <= 1 or "pos_embed" in name else weight_decay
        scale = 1.0
        if num_blocks:
            layer = _layer_id(name, num_blocks)
            scale = layer_decay ** (num_blocks + 1 - layer)
        groups.setdefault((lr * scale, decay), []).append(p)
    return [{"params": ps, "lr": group_lr, "weight_decay": wd} for (group_lr, wd), ps in groups.items()]


def _layer_id(name: str, num_blocks: int) -> int:
    if "patch_embed" in name or "pos_embed" in name or "cls_token" in name:
        return 0
    if "blocks." in name:
        return int(name.split("blocks.")[1].split(".")[0]) + 1
    return num_blocks + 1
