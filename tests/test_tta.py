"""Test-time adaptation with the geometry teacher's pseudo-labels (``geo_pose``, ``geo_heatmap``): a teacher
read from its checkpoint pulls the head toward its keypoints on the critic's maps, computed once per group;
its crop size is checked against the model's; the label-free weights are the trained stage's, else the
documented default."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from geosapiens.cli.main import main
from geosapiens.data.geometry_inputs import maps_to_input
from geosapiens.losses import objectives
from geosapiens.models.codec import UDPHeatmapCodec
from geosapiens.models.small_critic import SmallCritic, SmallCriticNet
from geosapiens.models.stage_checkpoint import build_pose_model, pose_model_from_checkpoint
from geosapiens.stages import SupervisedPose
from geosapiens.stages.small_critic import SmallCriticTask
from geosapiens.stages.tta import DEFAULT_WEIGHTS, HeadAdaptation

SIZE = (64, 64)
TINY_CRITIC = {"depth_deconvs": (8,), "depth_convs": (8,), "normal_deconvs": (8,), "normal_convs": (8,)}


def _checkpoint(path: Path, size: tuple[int, int] = SIZE, **kwargs) -> Path:
    """A pose stage checkpoint as Lightning writes it (hyper-parameters + state dict), tiny CNN."""
    module = SupervisedPose(backbone="timm:resnet10t", input_size=size, flip_test=False, **kwargs)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Geometry teachers (5 map channels in) at the model's crop size and another, a pose model checkpoint,
    a small-critic file and an image."""
    root = tmp_path_factory.mktemp("tta")
    torch.manual_seed(0)
    maps_in = {"backbone_kwargs": {"in_chans": 5}}
    SmallCriticTask(backbone="timm:resnet10t", **TINY_CRITIC).export(root / "critic.safetensors")
    cv2.imwrite(str(root / "infant.png"), np.random.default_rng(0).integers(0, 255, (80, 60, 3), np.uint8))
    return {
        "teacher": _checkpoint(root / "teacher.ckpt", **maps_in),
        "teacher32": _checkpoint(root / "teacher32.ckpt", (32, 32), **maps_in),
        "teacher_wide": _checkpoint(root / "teacher_wide.ckpt", (64, 48), **maps_in),
        "model": _checkpoint(root / "model.ckpt"),
        "critic": root / "critic.safetensors",
        "image": root / "infant.png",
    }


def _critic() -> SmallCritic:
    # threshold 0: every pixel is on the body, so the random critic's maps all reach the teacher
    return SmallCritic(SmallCriticNet(backbone="timm:resnet10t", **TINY_CRITIC), mask_threshold=0.0)


@pytest.mark.parametrize("term", objectives.TEACHER_TERMS)
def test_the_teacher_terms_pull_the_decoded_keypoints_toward_the_geometry_teachers_once_per_group(
    files, term
):
    torch.manual_seed(1)
    critic = _critic()
    only = {name: 0.0 for name in DEFAULT_WEIGHTS} | {name: 0.0 for name in objectives.TEACHER_TERMS}
    only[term] = 1.0
    assert term not in HeadAdaptation(critic=critic, weights=only).active  # no teacher, no pseudo-labels
    assert term not in HeadAdaptation(geometry_teacher=str(files["teacher"]), weights=only).active  # no maps
    adaptation = HeadAdaptation(
        steps=40,
        lr=1e-3,
        critic=critic,
        geometry_teacher=str(files["teacher"]),
        weights=only,
        objective={"geo_pose_threshold": 0.0},  # an untrained teacher's peaks are tiny
    )
    assert adaptation.active == [term]

    model = build_pose_model("timm:resnet10t", SIZE).eval()
    codec = UDPHeatmapCodec(SIZE, (SIZE[0] // 4, SIZE[1] // 4))
    images = torch.randn(4, 3, *SIZE)
    teacher, _, _ = pose_model_from_checkpoint(files["teacher"])
    with torch.no_grad():  # the teacher's keypoints on the critic's maps of these crops
        known = codec.decode(teacher(maps_to_input(critic(images))))[0]

    def error() -> float:
        with torch.no_grad():
            return float((codec.decode(model(images))[0] - known).norm(dim=-1).mean())

    adaptation.remember(model.head, SIZE)
    calls = []
    adaptation.geometry_teacher.register_forward_hook(lambda *_: calls.append(1))
    before = error()
    adaptation.adapt(model, codec, images)
    assert len(calls) == 1  # one teacher forward for the group, not one per step
    (first, best), after = adaptation.history[0], error()
    assert best < first and after < 0.6 * before, (before, after)
    adaptation.reset(model.head)
    assert error() == pytest.approx(before)


def test_a_geometry_teacher_of_another_crop_of_the_box_is_refused_naming_its_file(files):
    model = build_pose_model("timm:resnet10t", SIZE)
    adaptation = HeadAdaptation(critic=_critic(), geometry_teacher=str(files["teacher32"]))
    adaptation.remember(model.head, SIZE)  # the same crop at half the resolution: read
    assert adaptation.geometry_teacher.input_size == (32, 32)
    adaptation = HeadAdaptation(critic=_critic(), geometry_teacher=str(files["teacher_wide"]))
    with pytest.raises(ValueError, match=rf"{files['teacher_wide']}: .*64x48 crops, the model takes 64x64"):
        adaptation.remember(model.head, SIZE)


def test_the_weights_are_the_trained_stages_else_the_default():
    adaptation = HeadAdaptation(critic=_critic(), weights={"temporal": 0.5})
    # the default, the override, and 0 for the terms whose files were not given (geometry teacher, pose prior)
    assert adaptation.weights == DEFAULT_WEIGHTS | {"geo_heatmap": 0.0, "manifold": 0.0, "temporal": 0.5}
    terms = {"cons": {"weight": 1.0}, "geo_body": {"weight": 0.2}, "geo_depth": {"weight": 0.0}}
    adaptation.weigh_as({"loss_terms": terms})  # a mean teacher's, over the plan's layout
    assert adaptation.weights == {
        "geo_body": 0.2,
        "geo_depth": 0.0,
        "geo_norm": 0.0,  # the plan weighs it, but no normal priors were given
        "manifold": 0.0,  # nor a pose prior
        "temporal": 0.5,  # the override still wins
    }
    adaptation.weigh_as({"backbone": "timm:resnet10t"})  # a stage trained without them: the default
    assert adaptation.weights["geo_body"] == DEFAULT_WEIGHTS["geo_body"]


def test_infer_adapts_with_a_geometry_teacher_and_refuses_a_wrong_one(files, tmp_path, capsys):
    args = ["infer", str(files["image"]), "--model", str(files["model"]), "--no-progress"]
    tta = ["--tta.steps", "2", "--tta.lr", "1e-3", "--tta.critic", str(files["critic"])]
    teacher = ["--tta.geometry_teacher", str(files["teacher"])]
    assert main([*args, *tta, *teacher, "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "coco_results.json").is_file()

    wrong = ["--tta.geometry_teacher", str(files["teacher_wide"])]
    assert main([*args, *tta, *wrong, "--out", str(tmp_path / "wrong")]) == 2
    err = capsys.readouterr().err
    assert f"{files['teacher_wide']}: geometry teacher trained on 64x48 crops, the model takes 64x64" in err
    assert main([*args, "--tta.steps", "2", *teacher]) == 2
    assert "--tta.critic" in capsys.readouterr().err
