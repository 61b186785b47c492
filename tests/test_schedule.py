"""Loss-weight schedules: ramp values at given epochs, the plan's defaults, YAML init args, and per-batch
fractional epochs inside a real Trainer."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentError, ArgumentParser
from torch.utils.data import DataLoader, TensorDataset

from geosapiens.callbacks.schedule import (
    PLAN_LOSS_TERMS,
    LossSchedule,
    LossTerm,
    fractional_epoch,
    ramp_weight,
)


def test_ramp_weight_linear_sigmoid_and_step():
    assert [ramp_weight(e, 10, 4, 2.0) for e in (0, 9.99, 10, 11, 12, 13, 14, 100)] == pytest.approx(
        [0, 0, 0, 0.5, 1.0, 1.5, 2.0, 2.0]
    )
    assert [ramp_weight(e, 10, 0, 2.0) for e in (9.999, 10, 50)] == [0.0, 2.0, 2.0]
    assert ramp_weight(12, 10, 4, 2.0, "sigmoid") == pytest.approx(2.0 * math.exp(-1.25))
    assert ramp_weight(14, 10, 4, 2.0, "sigmoid") == 2.0
    with pytest.raises(ValueError, match="ramp shape"):
        ramp_weight(12, 10, 4, 1.0, "cosine")  # type: ignore[arg-type]


def test_plan_defaults_at_given_epochs():
    schedule = LossSchedule()
    expected = {  # epoch: (sup, cons, manifold, geo_depth, geo_norm)
        0: (1.0, 0, 0, 0, 0),
        20.9: (1.0, 0, 0, 0, 0),
        21: (1.0, 0, 0, 0, 0),
        23.5: (1.0, 0.5, 0.025, 0, 0),
        26: (1.0, 1.0, 0.05, 0, 0),
        50.9: (1.0, 1.0, 0.05, 0, 0),
        53.5: (1.0, 1.0, 0.05, 0.05, 0.05),
        80: (1.0, 1.0, 0.05, 0.1, 0.1),
    }
    for epoch, values in expected.items():
        w = schedule.weights(epoch)
        assert [w[k] for k in ("sup", "cons", "manifold", "geo_depth", "geo_norm")] == pytest.approx(
            values
        ), epoch
    assert set(PLAN_LOSS_TERMS) == {"sup", "cons", "manifold", "geo_depth", "geo_norm"}


def test_schedule_overrides_and_unknown_terms():
    schedule = LossSchedule(
        {"cons": {"weight": 2.0, "start_epoch": 0, "ramp_epochs": 0}, "bone_time": LossTerm(0.3, 5, 0)}
    )
    assert schedule.weight("cons", 0) == 2.0 and schedule.weight("sup", 0) == 1.0
    assert schedule.weight("bone_time", 4) == 0.0 and schedule.weight("bone_time", 5) == 0.3
    assert schedule.weight("nonexistent", 100) == 0.0
    only = LossSchedule({"sup": LossTerm()}, defaults=False)
    assert list(only.terms) == ["sup"]


class Stage:
    """A stage's constructor as LightningCLI sees it."""

    def __init__(self, loss_terms: dict[str, LossTerm] | None = None) -> None:
        self.schedule = LossSchedule(loss_terms)


def test_loss_terms_come_from_yaml():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Stage, "model")
    cfg = parser.parse_string("""
model:
  loss_terms:
    cons: {weight: 0.5, start_epoch: 3, ramp_epochs: 2, shape: sigmoid}
    geo_depth: {weight: 0.2, start_epoch: 10}
""")
    stage = parser.instantiate_classes(cfg).model
    assert stage.schedule.terms["cons"] == LossTerm(0.5, 3, 2, "sigmoid")
    assert stage.schedule.weight("geo_depth", 10) == 0.2 and stage.schedule.weight("manifold", 30) == 0.05
    with pytest.raises(ArgumentError, match="cosine"):
        parser.parse_string("model: {loss_terms: {cons: {weight: 1, shape: cosine}}}")


class Toy(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.schedule = LossSchedule({"cons": LossTerm(1.0, start_epoch=1, ramp_epochs=1)}, defaults=False)
        self.seen: list[float] = []

    def configure_callbacks(self):
        return [self.schedule]

    def training_step(self, batch, batch_idx):
        self.seen.append(self.schedule.weight("cons", fractional_epoch(self.trainer, batch_idx)))
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_weights_advance_per_batch_inside_a_trainer(tmp_path):
    toy = Toy()
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(toy, DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2))
    assert toy.seen == pytest.approx([0, 0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1])
    assert float(trainer.callback_metrics["loss_weight/cons"]) == 1.0
