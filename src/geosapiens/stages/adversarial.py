"""FiDIP baseline: adversarial feature confusion by alternating updates (no gradient-reversal layer).

Step I trains the domain classifier on detached backbone features of source (synthetic) and target (real)
crops; step II trains the pose network with ``L_sup - lambda * BCE(D(features), domain)``
(reference/datasets.md §2.7). The classifier alone trains for ``pretrain_epochs`` first. Manual optimisation.
"""

from __future__ import annotations

import torch

from geosapiens.losses import functional as losses
from geosapiens.models.domain_classifier import DomainClassifier
from geosapiens.stages.base import PoseStage, param_groups


class AdversarialAdaptation(PoseStage):
    """FiDIP-style domain-adversarial fine-tuning.

    Args:
        domain_lambda: weight of the domain-confusion term (FiDIP code default 0.0005).
        pretrain_epochs: epochs in which only the domain classifier trains (FiDIP ``PRE_EPOCH``).
        classifier_lr: learning rate of the domain classifier.
        **kwargs: :class:`PoseStage` arguments.
    """

    def __init__(
        self, domain_lambda: float = 0.0005, pretrain_epochs: int = 0, classifier_lr: float = 1e-3, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.domain_classifier = DomainClassifier(self.model.backbone.out_channels)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        source, target = batch["source"], batch["target"]
        pose_opt, domain_opt = self.optimizers()
        n_src = source["image"].shape[0]
        features = self.model.forward_features(torch.cat([source["image"], target["weak"]]))
        is_synthetic = torch.cat([features.new_ones(n_src), features.new_zeros(target["weak"].shape[0])])

        targets, target_weights = self.codec.encode(source["keypoints"], source["weights"])
        sup = losses.heatmap_mse(self.model.head(features[:n_src]), targets, target_weights)
        lam = self.hparams.domain_lambda
        step_one = losses.domain_adversarial_losses(
            self.domain_classifier, features, is_synthetic, sup, lam=lam
        )
        domain_opt.zero_grad()
        self.manual_backward(step_one.classifier)
        domain_opt.step()
        self.log_dict(
            {
                "train/loss_domain": step_one.classifier,
                "train/loss_sup": sup,
                "train/loss_confusion": step_one.confusion,
            },
            prog_bar=True,
            batch_size=n_src,
        )
        if self.current_epoch < self.hparams.pretrain_epochs:
            return
        # step II against the classifier as step I left it (its weights changed in place: a new graph)
        step_two = losses.domain_adversarial_losses(
            self.domain_classifier, features, is_synthetic, sup, lam=lam
        )
        pose_opt.zero_grad()
        self.manual_backward(step_two.pose)
        pose_opt.step()
        self.lr_schedulers().step()

    def configure_optimizers(self):
        pose = super().configure_optimizers()
        domain = torch.optim.AdamW(
            param_groups(
                self.domain_classifier,
                self.hparams.classifier_lr,
                self.hparams.weight_decay,
                ndims=self.param_ndims,
            )
        )
        return [pose["optimizer"], domain], [pose["lr_scheduler"]]
