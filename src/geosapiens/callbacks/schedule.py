"""Per-loss weight schedules: each loss term switches on at a start epoch and ramps to its weight (SPEC §6).

The plan's layout is the default (:data:`PLAN_LOSS_TERMS`): epochs 0-20 supervised warm-up; from epoch 21
``L_cons`` and ``L_manifold``; from epoch 51 ``L_geo-depth`` and ``L_geo-norm``; weights sup 1.0, cons 1.0,
geo 0.1, manifold 0.05. The plan gives no ramp length; the defaults ramp each new term over 5 epochs so the
first unsupervised gradients do not jolt a converged student.

A stage takes ``loss_terms: dict[str, LossTerm]`` as an init argument (YAML:
``loss_terms: {cons: {weight: 1.0, start_epoch: 21, ramp_epochs: 5}}``), builds a :class:`LossSchedule` and
asks it for the weights at the fractional epoch of each batch (:func:`fractional_epoch`); a term whose weight
is 0 need not be computed. The schedule is also a callback: returned from the stage's ``configure_callbacks``
it logs every weight per step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import lightning as L

__all__ = ["ramp_weight", "LossTerm", "LossSchedule", "PLAN_LOSS_TERMS", "fractional_epoch"]

RampShape = Literal["linear", "sigmoid"]


def ramp_weight(
    epoch: float, start: float, ramp_epochs: float, weight: float, shape: RampShape = "linear"
) -> float:
    """Weight of a loss term at a (fractional) epoch.

    0 before ``start``; then over ``ramp_epochs`` a rise from 0 to ``weight``, either ``linear`` or the
    ``sigmoid``-shaped ``exp(-5 (1 - t)^2)`` of Laine & Aila's temporal ensembling (mean teacher's consistency
    ramp-up; slow start, it reaches the full weight at the end of the ramp); ``weight`` afterwards. With
    ``ramp_epochs <= 0`` the term switches on fully at ``start``.
    """
    if epoch < start:
        return 0.0
    if ramp_epochs <= 0 or epoch >= start + ramp_epochs:
        return float(weight)
    t = (epoch - start) / ramp_epochs
    if shape == "linear":
        return float(weight) * t
    if shape == "sigmoid":
        return float(weight) * math.exp(-5.0 * (1.0 - t) ** 2)
    raise ValueError(f"unknown ramp shape {shape!r} (linear or sigmoid)")


@dataclass(frozen=True)
class LossTerm:
    """Schedule of one loss term.

    Attributes:
        weight: full weight.
        start_epoch: first epoch (0-based, fractional allowed) at which the term counts.
        ramp_epochs: epochs from 0 to the full weight.
        shape: ``linear`` or ``sigmoid`` (see :func:`ramp_weight`).
    """

    weight: float = 1.0
    start_epoch: float = 0.0
    ramp_epochs: float = 0.0
    shape: RampShape = "linear"

    def at(self, epoch: float) -> float:
        """Weight at ``epoch``."""
        return ramp_weight(epoch, self.start_epoch, self.ramp_epochs, self.weight, self.shape)


PLAN_LOSS_TERMS: dict[str, LossTerm] = {
    "sup": LossTerm(weight=1.0, start_epoch=0),
    "cons": LossTerm(weight=1.0, start_epoch=21, ramp_epochs=5),
    "manifold": LossTerm(weight=0.05, start_epoch=21, ramp_epochs=5),
    "geo_depth": LossTerm(weight=0.1, start_epoch=51, ramp_epochs=5),
    "geo_norm": LossTerm(weight=0.1, start_epoch=51, ramp_epochs=5),
}


class LossSchedule(L.Callback):
    """Named loss terms and their weights over training; as a callback, logs ``loss_weight/<name>`` per step.

    Args:
        terms: name -> :class:`LossTerm` (or a plain mapping of its fields, as YAML gives); None for the
            plan's layout. Names not given keep the plan's term only when ``defaults`` is True.
        defaults: start from :data:`PLAN_LOSS_TERMS` and override with ``terms``.
    """

    def __init__(
        self, terms: Mapping[str, LossTerm | Mapping] | None = None, *, defaults: bool = True
    ) -> None:
        merged: dict[str, LossTerm] = dict(PLAN_LOSS_TERMS) if defaults else {}
        for name, term in (terms or {}).items():
            merged[name] = term if isinstance(term, LossTerm) else LossTerm(**term)
        self.terms = merged

    def __repr__(self) -> str:
        return f"LossSchedule({self.terms})"

    def weight(self, name: str, epoch: float) -> float:
        """Weight of term ``name`` at ``epoch`` (0 for a term the schedule does not know)."""
        term = self.terms.get(name)
        return 0.0 if term is None else term.at(epoch)

    def weights(self, epoch: float) -> dict[str, float]:
        """Every term's weight at ``epoch``."""
        return {name: term.at(epoch) for name, term in self.terms.items()}

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int
    ) -> None:
        weights = self.weights(fractional_epoch(trainer, batch_idx))
        pl_module.log_dict({f"loss_weight/{k}": v for k, v in weights.items()}, on_step=True, on_epoch=False)


def fractional_epoch(trainer: L.Trainer, batch_idx: int) -> float:
    """``current_epoch + batch_idx / batches_per_epoch``: ramps advance every batch, not once per epoch."""
    per_epoch = trainer.num_training_batches
    if not isinstance(per_epoch, int | float) or not math.isfinite(per_epoch) or per_epoch <= 0:
        return float(trainer.current_epoch)
    return trainer.current_epoch + batch_idx / per_epoch
