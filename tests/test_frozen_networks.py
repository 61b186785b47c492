"""Frozen networks (critic, pose prior, geometry and distillation teachers) stay out of checkpoints, by one
mechanism (``models/frozen.py``), and the checkpoints still load strictly and resume."""

from __future__ import annotations

import lightning
import lightning.pytorch as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from geosapiens.models.frozen import drop_frozen_keys, keep_frozen
from geosapiens.models.pose_vae import PoseVAE
from geosapiens.models.small_critic import SmallCritic, SmallCriticNet
from geosapiens.stages import Distillation, MeanTeacherAdaptation, SupervisedPose

SIZE = (64, 64)
TINY_CRITIC = {"depth_deconvs": (8,), "depth_convs": (8,), "normal_deconvs": (8,), "normal_convs": (8,)}
FROZEN = ("critic.", "vae.", "geometry_teacher.")


@pytest.mark.parametrize("from_state_dict", [False, True])
def test_frozen_children_leave_checkpoints_and_a_strict_load_goes_without_them(from_state_dict):
    def holder() -> nn.Module:
        outer = nn.Module()
        outer.inner = nn.Module()
        outer.inner.trained, outer.inner.frozen = nn.Linear(2, 2), nn.Linear(2, 2)
        keep_frozen(outer.inner, "frozen", from_state_dict=from_state_dict)
        return outer

    a, b = holder(), holder()
    state = a.state_dict()
    assert any(k.startswith("inner.frozen.") for k in state) != from_state_dict
    drop_frozen_keys(a.inner, state, "inner.")
    assert sorted(state) == ["inner.trained.bias", "inner.trained.weight"]
    frozen = b.inner.frozen.weight.clone()
    assert not b.load_state_dict(state).missing_keys  # strict
    torch.testing.assert_close(b.inner.trained.weight, a.inner.trained.weight)
    # an older checkpoint that carried the frozen weights: they are skipped, the network keeps its own
    older = state | {"inner.frozen.weight": torch.zeros(2, 2), "inner.frozen.bias": torch.zeros(2)}
    b.load_state_dict(older)
    assert torch.equal(b.inner.frozen.weight, frozen)
    with pytest.raises(RuntimeError, match="Missing key"):  # the trained ones are still required
        b.load_state_dict({"inner.trained.weight": state["inner.trained.weight"]})


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A pose VAE file and a tiny pose stage checkpoint (the geometry / distillation teacher)."""
    root = tmp_path_factory.mktemp("frozen")
    torch.manual_seed(0)
    PoseVAE(num_keypoints=17).save(root / "vae.safetensors")
    teacher = SupervisedPose(backbone="timm:resnet10t", input_size=SIZE, flip_test=False)
    ckpt = root / "teacher.ckpt"
    torch.save({"hyper_parameters": dict(teacher.hparams), "state_dict": teacher.state_dict()}, ckpt)
    return {"vae": root / "vae.safetensors", "teacher": ckpt}


def _mean_teacher(files: dict) -> MeanTeacherAdaptation:
    return MeanTeacherAdaptation(
        backbone="timm:resnet10t",
        input_size=SIZE,
        critic=SmallCritic(SmallCriticNet(**TINY_CRITIC)),
        pose_prior=str(files["vae"]),
        geometry_teacher=str(files["teacher"]),
        loss_terms={"geo_norm": {"weight": 0.0}, "geo_pose": {"weight": 1.0}},
    )


def test_mean_teacher_checkpoint_holds_no_frozen_network_and_reloads_strictly(files, tmp_path):
    stage = _mean_teacher(files)
    assert stage.critic is not None and stage.vae is not None and stage.geometry_teacher is not None
    checkpoint = {
        "state_dict": {k: v.clone() for k, v in stage.state_dict().items()},
        "hyper_parameters": dict(stage.hparams),
        "pytorch-lightning_version": lightning.__version__,
    }
    stage.on_save_checkpoint(checkpoint)  # as Lightning's checkpoint connector calls it on every save
    state = checkpoint["state_dict"]
    assert any(k.startswith("model.") for k in state) and any(k.startswith("teacher.") for k in state)
    assert not [k for k in state if k.startswith(FROZEN)]
    path = tmp_path / "stage.ckpt"
    torch.save(checkpoint, path)
    with torch.no_grad():
        for p in stage.model.parameters():
            p.add_(1.0)  # the reloaded stage must take the checkpoint's model, not a fresh one
    reloaded = MeanTeacherAdaptation.load_from_checkpoint(
        path, critic=SmallCritic(SmallCriticNet(**TINY_CRITIC)), strict=True
    )
    reloaded_state = reloaded.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(reloaded_state[key], value, rtol=0, atol=0)
    # frozen networks: no gradients, no train mode, whatever the stage's mode
    reloaded.train()
    for name in ("critic", "vae", "geometry_teacher"):
        network = getattr(reloaded, name)
        assert not network.training and not any(p.requires_grad for p in network.parameters())
    assert reloaded.model.training


class _Crops(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.randn(3, *SIZE, generator=torch.Generator().manual_seed(i))}


def _trainer(root, steps: int) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )


def test_distillation_checkpoint_holds_the_student_alone_and_resumes(files, tmp_path):
    def student() -> Distillation:
        return Distillation(
            teacher_checkpoint=str(files["teacher"]),
            teacher_weights="model",
            backbone="timm:resnet10t",
            input_size=SIZE,
            flip_test=False,
        )

    L.seed_everything(0)
    first = student()
    trainer = _trainer(tmp_path, steps=2)
    trainer.fit(first, DataLoader(_Crops(), batch_size=4))
    assert first.teacher is not None and not first.teacher.training
    path = tmp_path / "student.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["state_dict"] and all(k.startswith("model.") for k in saved["state_dict"])

    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step
            seen["model"] = {k: v.clone() for k, v in pl_module.model.state_dict().items()}

    resumed = _trainer(tmp_path, steps=3)
    resumed.callbacks.append(Probe())
    resumed.fit(student(), DataLoader(_Crops(), batch_size=4), ckpt_path=path)  # strict load
    assert seen["step"] == 2 and resumed.global_step == 3
    for key, value in saved["state_dict"].items():
        torch.testing.assert_close(seen["model"][key.removeprefix("model.")], value, rtol=0, atol=0)
