"""ONNX export: ONNX Runtime's heatmaps equal PyTorch's (random and real crops, batch 1 and 3), the file's
metadata round-trips, both runtimes open through one call, and bad files are named in the errors."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from geosapiens.cli.main import main
from geosapiens.data.datamodules import SyRIPRealDataModule
from geosapiens.deploy.export import TOLERANCE, check_onnx, export_onnx
from geosapiens.deploy.runtime import ModelFileError, OnnxRunner, TorchRunner, open_runner, read_metadata
from geosapiens.errors import CheckpointError
from geosapiens.models.preprocess import SAPIENS_MEAN, SAPIENS_STD
from geosapiens.models.stage_checkpoint import build_pose_model, pose_model_from_checkpoint
from geosapiens.skeleton import COCO17

pytestmark = pytest.mark.slow

CNN = {"backbone": "timm:regnetx_002", "input_size": [96, 96], "backbone_kwargs": {"output_stride": 16},
       "head_kwargs": {"channels": [64, 32]}}
VIT_SIZE = (128, 96)  # a fixed, non-square ViT input: the position embeddings are laid out for it
SAMPLE_TRAIN = "annotations/200R/person_keypoints_train_infant.json"
REPO = Path(__file__).resolve().parents[1]


def _trained_like(model: nn.Module, seed: int) -> nn.Module:
    """Heatmaps of order 1 and non-trivial BatchNorm statistics, as after training (the head's init gives
    heatmaps of order 1e-3, where a 1e-4 tolerance would prove nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.head.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / fan_in**0.5)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def cnn(tmp_path_factory) -> dict:
    """A timm CNN pose model saved as a stage checkpoint, and its export through ``geosapiens export``."""
    root = tmp_path_factory.mktemp("export_cnn")
    model = _trained_like(build_pose_model(CNN["backbone"], CNN["input_size"], CNN["backbone_kwargs"],
                                           CNN["head_kwargs"]), seed=0)
    ckpt = root / "best.ckpt"
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": CNN, "state_dict": state}, ckpt)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["export", str(ckpt), "--out", str(root / "student.onnx")])
    return {"ckpt": ckpt, "onnx": root / "student.onnx", "code": code, "stdout": out.getvalue(),
            "model": pose_model_from_checkpoint(ckpt)[0], "input_size": tuple(CNN["input_size"])}


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> dict:
    """A tiny Sapiens ViT pose model exported at a fixed input size with :func:`export_onnx`."""
    torch.manual_seed(1)
    model = _trained_like(build_pose_model("sapiens_tiny", VIT_SIZE), seed=1).train()
    path = tmp_path_factory.mktemp("export_vit") / "vit.onnx"
    path.write_bytes(b"an earlier export")
    export_onnx(model, VIT_SIZE, path, metadata={"weights": "teacher"})
    was_training = model.training
    return {"onnx": path, "model": model.eval(), "input_size": VIT_SIZE, "was_training": was_training}


@pytest.fixture(params=["cnn", "vit"])
def exported(request) -> dict:
    return request.getfixturevalue(request.param)


def test_cli_exports_and_reports_the_difference_at_batch_1_and_3(cnn):
    assert cnn["code"] == 0, cnn["stdout"]
    lines = re.findall(r"batch (\d+): max abs difference ONNX Runtime vs PyTorch (\S+)", cnn["stdout"])
    diffs = {int(b): float(d) for b, d in lines}
    assert sorted(diffs) == [1, 3]
    assert all(d <= TOLERANCE for d in diffs.values()), diffs
    session_input = OnnxRunner(cnn["onnx"]).session.get_inputs()[0]
    assert isinstance(session_input.shape[0], str) and session_input.shape[1:] == [3, 96, 96]  # dynamic batch


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_equals_torch_on_random_images(exported, batch):
    images = torch.randn(batch, 3, *exported["input_size"], generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        assert exported["model"](images).abs().max() > 0.2  # the tolerance is small against the heatmaps
    assert check_onnx(exported["model"], exported["onnx"], images) <= TOLERANCE


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_equals_torch_on_real_sample_crops(exported, batch, syrip_sample):
    """Real SyRIP images through the real evaluation pipeline (box crop warp, Sapiens normalisation)."""
    data = SyRIPRealDataModule(syrip_sample, test_file=SAMPLE_TRAIN, input_size=exported["input_size"],
                               batch_size=batch, num_workers=0, pin_memory=False)
    data.setup("test")
    loader = iter(data.test_dataloader())
    for _ in range(2):
        images = next(loader)["image"]
        assert images.shape == (batch, 3, *exported["input_size"])
        assert check_onnx(exported["model"], exported["onnx"], images) <= TOLERANCE


def test_metadata_round_trips(cnn, vit):
    facts = read_metadata(cnn["onnx"])
    assert facts == {
        "input_size": [96, 96],
        "mean": list(SAPIENS_MEAN),
        "std": list(SAPIENS_STD),
        "heatmap_stride": 4,
        "num_keypoints": 17,
        "keypoint_names": list(COCO17.names),
        "source_checkpoint": str(cnn["ckpt"].resolve()),
        "weights": "model",
    }
    vit_facts = read_metadata(vit["onnx"])
    assert (vit_facts["input_size"], vit_facts["weights"]) == (list(VIT_SIZE), "teacher")
    runner = OnnxRunner(vit["onnx"])
    assert (runner.input_size, runner.num_keypoints) == (VIT_SIZE, 17)
    assert runner(torch.zeros(2, 3, *VIT_SIZE)).shape == (2, 17, VIT_SIZE[0] // 4, VIT_SIZE[1] // 4)


def test_open_runner_gives_the_same_heatmaps_on_both_runtimes(cnn):
    torch_runner = open_runner(cnn["ckpt"], "torch")
    onnx_runner = open_runner(cnn["onnx"], "onnx", threads=2)
    assert isinstance(torch_runner, TorchRunner) and isinstance(onnx_runner, OnnxRunner)
    assert not torch_runner.model.training
    assert torch_runner.input_size == onnx_runner.input_size == (96, 96)
    assert torch_runner.num_keypoints == onnx_runner.num_keypoints == 17
    images = torch.randn(3, 3, 96, 96, generator=torch.Generator().manual_seed(7))
    expected = torch_runner(images)
    assert expected.shape == (3, 17, 24, 24) and expected.dtype == torch.float32
    assert (onnx_runner(images) - expected).abs().max() <= TOLERANCE


def test_errors_name_the_file_and_the_problem(cnn, tmp_path):
    missing = tmp_path / "gone.onnx"
    with pytest.raises(ModelFileError, match=f"{re.escape(str(missing))}: model file not found"):
        open_runner(missing, "onnx")
    with pytest.raises(ModelFileError, match=r"best\.ckpt: runtime 'onnx' needs a \.onnx file.*export"):
        open_runner(cnn["ckpt"], "onnx")
    with pytest.raises(ModelFileError, match=r"student\.onnx: runtime 'torch' needs a \.ckpt file"):
        open_runner(cnn["onnx"], "torch")
    with pytest.raises(CheckpointError, match="gone.ckpt: checkpoint not found"):
        pose_model_from_checkpoint(tmp_path / "gone.ckpt")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all \x00\xff" * 10)
    with pytest.raises(ModelFileError, match="garbage.onnx: cannot be read as an ONNX model"):
        open_runner(garbage, "onnx")
    with pytest.raises(ModelFileError, match=r"student\.onnx: holds the 'model' network, 'teacher' was"):
        open_runner(cnn["onnx"], "onnx", weights="teacher")

    runner = open_runner(cnn["onnx"], "onnx")
    with pytest.raises(ValueError, match=r"student\.onnx: takes \(B, 3, 96, 96\) crops, got \(1, 3, 64,"):
        runner(torch.zeros(1, 3, 64, 96))
    with pytest.raises(ValueError, match=r"best\.ckpt: takes \(B, 3, 96, 96\) crops, got \(3, 96, 96\)"):
        open_runner(cnn["ckpt"], "torch")(torch.zeros(3, 96, 96))

    proto = onnx.load(str(cnn["onnx"]))
    for entry in proto.metadata_props:
        if entry.key == "geosapiens.input_size":
            entry.value = "[64, 64]"
    edited = tmp_path / "edited.onnx"
    edited.write_bytes(proto.SerializeToString())
    with pytest.raises(ModelFileError, match=r"edited\.onnx: input shape mismatch: metadata says \(64, 64\)"):
        OnnxRunner(edited)


def test_cli_refuses_bad_arguments_with_exit_2(cnn, tmp_path, capsys):
    assert main(["export", str(tmp_path / "gone.ckpt"), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "gone.ckpt: checkpoint not found" in capsys.readouterr().err
    assert main(["export", str(cnn["ckpt"]), "--out", str(tmp_path / "m.pt")]) == 2
    assert "m.pt must end in .onnx" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "m.pt").exists()


def test_export_replaces_the_file_atomically_and_keeps_the_model_mode(vit):
    """The earlier file was replaced (it read back as ONNX above), nothing is left beside it, and the model
    went back to training mode after the export."""
    assert vit["was_training"]
    assert [p.name for p in vit["onnx"].parent.iterdir()] == ["vit.onnx"]


def test_benchmark_names_missing_files_and_how_to_make_them(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "infer.py"), "--data", str(tmp_path),
         "--teacher", str(tmp_path / "t.ckpt"), "--student", str(tmp_path / "s.ckpt")],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert result.returncode == 2
    for name in ("t.ckpt", "s.ckpt", "validate100/person_keypoints_validate_infant.json"):
        assert re.search(rf"missing \S*{re.escape(name)}: run `geosapiens demo`", result.stderr)
