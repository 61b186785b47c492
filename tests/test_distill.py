"""Distillation: the UDP-aligned resolution change, the loss, and a student learning a real teacher's maps."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import numpy as np
import pytest
import torch
import yaml

from geosapiens.cli.main import main
from geosapiens.data.crop import udp_affine, warp_image
from geosapiens.data.datamodules import SyRIPRealDataModule
from geosapiens.errors import CheckpointError
from geosapiens.losses.functional import distillation_loss
from geosapiens.models.codec import UDPHeatmapCodec, resize_aligned
from geosapiens.models.stage_checkpoint import pose_model_from_checkpoint
from geosapiens.stages import Distillation

REPO = Path(__file__).resolve().parents[1]
TEACHER_SIZE, STUDENT_SIZE = (64, 64), (48, 48)


# -- resolution alignment ------------------------------------------------------------------------------------


@pytest.mark.parametrize("point", [(31.5, 31.5), (17.3, 40.8), (40.2, 22.7), (9.5, 50.2)])
def test_heatmap_peak_maps_to_the_same_crop_position_at_both_resolutions(point):
    """A teacher heatmap (64 px crop -> 16x16) resampled to the student's (48 px crop -> 12x12) decodes like a
    target drawn directly at the student's resolution at x' = x (W' - 1) / (W - 1), and (inside the map, where
    DARK has room) maps back through x = x' (W - 1) / (W' - 1) to the teacher's crop position."""
    teacher = UDPHeatmapCodec(TEACHER_SIZE, (16, 16), sigma=2.0)
    student = UDPHeatmapCodec(STUDENT_SIZE, (12, 12), sigma=1.5)  # sigma scaled with the heatmap
    keypoints = torch.tensor([[point]])
    ratio = (STUDENT_SIZE[1] - 1) / (TEACHER_SIZE[1] - 1)
    heatmaps, _ = teacher.encode(keypoints, torch.ones(1, 1))
    decoded, _ = student.decode(resize_aligned(heatmaps, (12, 12)))
    direct, _ = student.decode(student.encode(keypoints * ratio, torch.ones(1, 1))[0])
    assert torch.allclose(decoded, direct, atol=0.1), (decoded, direct)  # student px
    if min(point) > 12 and max(point) < TEACHER_SIZE[0] - 13:
        own, _ = teacher.decode(heatmaps)
        assert torch.allclose(decoded / ratio, own, atol=0.25), (decoded / ratio, own)
        assert torch.allclose(decoded / ratio, keypoints, atol=0.25)


def test_resized_crop_equals_a_crop_taken_at_the_smaller_size():
    """Cropping at the teacher's size then resize_aligned == cropping the image at the student's size (UDP),
    on a smooth image (bilinear sampling twice vs once differs only by interpolation error)."""
    yy, xx = np.mgrid[0:240, 0:320].astype(np.float64)
    channels = [127 + 100 * np.sin(xx / 23), 127 + 100 * np.cos(yy / 19), 127 + 100 * np.sin((xx + yy) / 31)]
    image = np.stack(channels, -1).astype(np.float32)  # float: no uint8 rounding to hide a misplacement
    center, scale = np.array([150.0, 110.0]), np.array([120.0, 120.0])
    big = warp_image(image, udp_affine(center, scale, TEACHER_SIZE), TEACHER_SIZE).astype(np.float32)
    small = warp_image(image, udp_affine(center, scale, STUDENT_SIZE), STUDENT_SIZE).astype(np.float32)
    resized = resize_aligned(torch.from_numpy(big).permute(2, 0, 1)[None], STUDENT_SIZE)[0].permute(1, 2, 0)
    # the half-pixel convention (align_corners=False) misplaces the content by up to a third of a px here
    shifted = torch.nn.functional.interpolate(
        torch.from_numpy(big).permute(2, 0, 1)[None], STUDENT_SIZE, mode="bilinear", align_corners=False
    )[0].permute(1, 2, 0)
    error = (resized - torch.from_numpy(small)).abs().mean()
    assert error < 0.5  # grey levels of 255
    assert (shifted - torch.from_numpy(small)).abs().mean() > 3 * error


# -- loss ----------------------------------------------------------------------------------------------------


def test_distillation_loss_is_zero_at_the_resized_teacher_and_pulls_towards_it():
    codec = UDPHeatmapCodec(TEACHER_SIZE, (16, 16))
    teacher, _ = codec.encode(torch.tensor([[[20.0, 30.0], [40.0, 10.0]]]), torch.ones(1, 2))
    target = resize_aligned(teacher, (12, 12))
    assert distillation_loss(target.clone(), teacher).item() == pytest.approx(0.0, abs=1e-12)
    student = torch.zeros(1, 2, 12, 12, requires_grad=True)
    loss = distillation_loss(student, teacher)
    loss.backward()
    # gradient descent moves every student pixel towards the teacher's value
    step = -student.grad
    assert torch.all(step * target >= 0) and step.abs().sum() > 0
    expected = target.pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_confidence_weighting_ignores_a_joint_the_teacher_does_not_find():
    teacher = torch.zeros(1, 2, 8, 8)
    teacher[0, 0, 3, 4] = 1.0  # joint 0 found with peak 1; joint 1 flat zero
    student = torch.zeros(1, 2, 8, 8)
    student[0, 1] = 0.5  # wrong only on the joint the teacher does not see
    assert distillation_loss(student, teacher, confidence_weighted=True).item() == pytest.approx(1 / 64)
    assert distillation_loss(student, teacher).item() == pytest.approx(0.5 * (1 / 64 + 0.25))


# -- the stage on generated data -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> dict[str, Path]:
    """Tiny generated data and a teacher: the demo warm-up at 64 px for a few steps (its heatmaps are
    fixed, which is all a student needs to copy)."""
    root = tmp_path_factory.mktemp("distill")
    data = root / "data"
    assert main(["data", "synth", "--out", str(data), "--preset", "tiny", "--seed", "0"]) == 0
    run = root / "teacher"
    args = ["--config", str(REPO / "configs/demo/warmup.yaml"), "--model.init_args.input_size", "[64, 64]"]
    args += ["--model.init_args.backbone", "timm:resnet10t", "--data.init_args.root", str(data / "SyRIP")]
    args += ["--data.init_args.input_size", "[64, 64]", "--data.init_args.batch_size", "4"]
    args += ["--data.init_args.num_workers", "0", "--trainer.max_steps", "3", "--trainer.default_root_dir"]
    args += [str(run), "--trainer.logger.init_args.save_dir", str(run), "--trainer.enable_progress_bar=false"]
    main(["fit", *args])
    return {"syrip": data / "SyRIP", "ckpt": next(run.rglob("last.ckpt"))}


def _datamodule(syrip: Path) -> SyRIPRealDataModule:
    return SyRIPRealDataModule(
        root=str(syrip), mode="unlabelled", val_file="annotations/val_real/person_keypoints_val_infant.json",
        input_size=TEACHER_SIZE, batch_size=4, num_workers=0, pin_memory=False, photometric_strength=0.0,
        cutmix_prob=0.0,
    )


def _student(teacher_ckpt: Path | str) -> Distillation:
    return Distillation(
        teacher_checkpoint=str(teacher_ckpt), teacher_weights="model", backbone="timm:resnet10t",
        backbone_kwargs={"output_stride": 16}, head_kwargs={"channels": [32, 32]}, input_size=STUDENT_SIZE,
        encoder_lr=2e-3, decoder_lr=2e-3, weight_decay=0.0, flip_test=False,
    )


def _trainer(root: Path, steps: int, logger: bool = False) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, default_root_dir=root,
        logger=L.loggers.CSVLogger(root, name="", version="") if logger else False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
    )


def _distance(stage: Distillation, images: torch.Tensor) -> float:
    """The student's eval-mode loss against the teacher on fixed crops."""
    stage.model.eval()
    with torch.no_grad():
        return distillation_loss(
            stage.model(resize_aligned(images, STUDENT_SIZE)), stage.teacher_heatmaps(images)
        ).item()


@pytest.mark.slow
def test_student_learns_the_teacher_which_stays_frozen_and_checkpoints_alone(teacher, tmp_path):
    L.seed_everything(0)
    dm = _datamodule(teacher["syrip"])
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["weak"].shape[-2:] == TEACHER_SIZE  # the datamodule crops at the teacher's size
    images = batch["weak"]

    stage = _student(teacher["ckpt"])
    before = _distance(stage, images)
    frozen = {k: v.clone() for k, v in stage.teacher.state_dict().items()}
    assert stage.teacher_input_size == TEACHER_SIZE
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer = _trainer(tmp_path, steps=30, logger=True)
    trainer.callbacks.append(Record())
    trainer.fit(stage, datamodule=dm)
    # the student's and the DataModule's input sizes differ: both logged, the DataModule's under data/
    logged = yaml.unsafe_load((tmp_path / "hparams.yaml").read_text())  # Lightning writes tuples
    assert list(logged["input_size"]) == list(STUDENT_SIZE) and list(logged["data/input_size"]) == [64, 64]
    after = _distance(stage, images)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3]), losses
    assert after < 0.5 * before, (before, after)

    # the teacher: untouched, in eval mode, outside the optimiser and the checkpoint
    assert all(torch.equal(frozen[k], v) for k, v in stage.teacher.state_dict().items())
    assert not stage.teacher.training and not any(p.requires_grad for p in stage.teacher.parameters())
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in stage.teacher.parameters()}
    ckpt = tmp_path / "student.ckpt"
    trainer.save_checkpoint(ckpt)
    keys = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"].keys()
    assert keys and all(k.startswith("model.") for k in keys)

    # the checkpoint alone rebuilds the student; its keypoints equal the stage's on teacher-size test crops
    model, size, hparams = pose_model_from_checkpoint(ckpt, "model")
    assert size == STUDENT_SIZE and hparams["teacher_checkpoint"] == str(teacher["ckpt"])
    dm.setup("test")
    test = next(iter(dm.test_dataloader()))
    stage.eval()
    with torch.no_grad():
        expected, _ = stage.predict_keypoints(test["image"], test["affine"])
        heatmaps = model(resize_aligned(test["image"], STUDENT_SIZE))
    keypoints, _ = stage.codec.decode(heatmaps)
    keypoints = keypoints * (TEACHER_SIZE[1] - 1) / (STUDENT_SIZE[1] - 1)
    inverse = torch.linalg.inv(
        torch.cat([test["affine"], test["affine"].new_tensor([0, 0, 1]).expand(len(keypoints), 1, 3)], 1)
    )
    image_px = keypoints @ inverse[:, :2, :2].transpose(1, 2) + inverse[:, None, :2, 2]
    torch.testing.assert_close(image_px, expected, atol=1e-4, rtol=0)

    # testing a student needs no teacher file
    tester = Distillation.load_from_checkpoint(ckpt, teacher_checkpoint=str(tmp_path / "gone.ckpt"))
    result = _trainer(tmp_path, 1).test(tester, datamodule=dm, verbose=False)
    assert 0.0 <= result[0]["test/pck@0.1"] <= 1.0


@pytest.mark.slow
def test_missing_teacher_checkpoint_is_named(teacher, tmp_path):
    missing = tmp_path / "runs" / "uda" / "best.ckpt"
    with pytest.raises(CheckpointError, match=r"teacher_checkpoint.*runs/uda/best\.ckpt.*not found"):
        _trainer(tmp_path, 1).fit(_student(missing), datamodule=_datamodule(teacher["syrip"]))
