"""Safe reading, strict loading with explained mismatches, and ``geosapiens convert`` round trips."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from geosapiens.cli.main import main as cli_main
from geosapiens.errors import CheckpointError
from geosapiens.models.backbone import create_backbone
from geosapiens.models.heads import SapiensHeatmapHead
from geosapiens.models.official_checkpoint import load_checkpoint, load_head_state, read_state_dict
from geosapiens.models.pose_model import PoseModel
from test_checkpoint_official import IMG, images, official_model, save_official

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")

CALLED: list[str] = []


def _payload() -> None:
    CALLED.append("ran")


class _RunsCode:
    """Unpickling this calls a function: what weights_only loading exists to refuse."""

    def __reduce__(self):
        return (_payload, ())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    return {
        "pose": save_official(official_model("pose"), root / "pose.pth"),
        "depth": save_official(official_model("depth", seed=2), root / "depth.pth"),
        "pretrain": save_official(official_model("pretrain", seed=5), root / "pretrain_clean.pth", "clean"),
        "tiny": save_official(official_model("pose", dim=192, depth=4), root / "tiny_pose.pth"),
    }


def test_numpy_meta_needs_and_gets_the_numpy_allow_list(files):
    with pytest.raises(pickle.UnpicklingError):
        torch.load(files["pose"], weights_only=True)
    ckpt = load_checkpoint(files["pose"])
    sigmas = ckpt.meta["dataset_meta"]["sigmas"]
    assert isinstance(sigmas, np.ndarray) and sigmas.shape == (308,) and ckpt.meta["epoch"] == 210


def test_numpy1_pickles_load_too(tmp_path, monkeypatch):
    """Official files were written with numpy 1.x, whose reconstructor lives in ``numpy.core.multiarray``."""
    monkeypatch.setattr(np._core.multiarray._reconstruct, "__module__", "numpy.core.multiarray")
    path = tmp_path / "old.pth"
    torch.save({"state_dict": official_model("pose").state_dict(), "meta": {"sigmas": np.ones(3)}}, path)
    monkeypatch.undo()
    assert "numpy.core.multiarray._reconstruct" in torch.serialization.get_unsafe_globals_in_checkpoint(path)
    np.testing.assert_array_equal(load_checkpoint(path).meta["sigmas"], np.ones(3))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "meta": {"x": _RunsCode()}}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle") as err:
        read_state_dict(path)
    assert "_payload" in str(err.value) and "arbitrary code" in str(err.value)
    assert CALLED == []


def test_unreadable_and_foreign_files_raise_checkpoint_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        read_state_dict(garbage)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_state_dict(tmp_path / "missing.pth")
    listing = tmp_path / "list.pth"
    torch.save([torch.ones(1)], listing)
    with pytest.raises(CheckpointError, match="not a state dict"):
        read_state_dict(listing)
    no_vit = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.ones(1)}, no_vit)
    with pytest.raises(CheckpointError, match="no Sapiens backbone"):
        load_checkpoint(no_vit)


def test_segmentation_heads_are_named_as_unsupported(tmp_path, files):
    state = read_state_dict(files["depth"])[0]
    state["decode_head.conv_seg.weight"] = torch.zeros(28, 16, 1, 1)
    state["decode_head.conv_seg.bias"] = torch.zeros(28)
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "seg.pth")
    with pytest.raises(CheckpointError, match="28 outputs: a segmentation checkpoint"):
        load_checkpoint(tmp_path / "seg.pth")


def test_wrong_family_names_the_head_keys(files):
    with pytest.raises(CheckpointError, match="wrong family") as err:
        load_checkpoint(files["depth"], family="pose")
    assert "expected a pose checkpoint (head.final_layer.*)" in str(err.value)
    assert "depth checkpoint (decode_head.conv_seg.weight (1, 16, 1, 1))" in str(err.value)
    with pytest.raises(CheckpointError, match="wrong family"):
        create_backbone("sapiens_nano", img_size=IMG, checkpoint=files["pose"], family="normal")
    with pytest.raises(CheckpointError, match="wrong family: a depth checkpoint, not pose"):
        create_backbone(
            "sapiens_nano", img_size=IMG, checkpoint=load_checkpoint(files["depth"]), family="pose"
        )
    # forcing a pose head onto depth weights
    with pytest.raises(CheckpointError) as err:
        load_head_state(SapiensHeatmapHead(64, 17, (32, 32), (32, 32)), load_checkpoint(files["depth"]))
    msg = str(err.value)
    assert "missing keys: " in msg and "final_layer.weight" in msg and "unexpected keys: " in msg
    assert "conv_seg.weight" in msg and "wrong family: the file is a depth checkpoint" in msg


def test_task_weights_refuse_the_other_patch_padding(files):
    with pytest.raises(CheckpointError, match="trained with 2-px patch padding, but the backbone uses 0"):
        create_backbone("sapiens_nano", img_size=IMG, checkpoint=files["pose"], patch_padding=0)
    with pytest.raises(CheckpointError, match="trained with 0-px"):
        create_backbone("sapiens_nano", img_size=IMG, checkpoint=files["depth"], patch_padding=2)
    # pretrain weights were never finetuned: the pose recipe runs them with padding 2
    assert (
        create_backbone(
            "sapiens_nano", img_size=IMG, checkpoint=files["pretrain"], patch_padding=2
        ).patch_padding
        == 2
    )


def test_wrong_size_names_keys_and_both_sizes(files):
    with pytest.raises(CheckpointError) as err:
        create_backbone("sapiens_nano", img_size=IMG, checkpoint=files["tiny"])
    msg = str(err.value)
    assert "unexpected keys: blocks.2." in msg
    assert "blocks.0.attn.qkv.weight (576, 192) vs (192, 64)" in msg
    assert "embed dim 192, depth 4 = sapiens_tiny" in msg and "embed dim 64, depth 2 = sapiens_nano" in msg
    # the same file fits the preset it names
    assert create_backbone("sapiens_tiny", img_size=IMG, checkpoint=files["tiny"]).out_channels == 192


def test_keypoint_count_mismatch_is_explained(files):
    with pytest.raises(CheckpointError, match="the file has 308 outputs, the head 17"):
        load_head_state(SapiensHeatmapHead(64, 17, (32, 32), (32, 32)), load_checkpoint(files["pose"]))


def test_safetensors_with_official_names_load_like_the_pth(tmp_path, files):
    raw = read_state_dict(files["pose"])[0]
    save_file({k: v.contiguous() for k, v in raw.items()}, str(tmp_path / "pose.safetensors"))
    a = PoseModel.from_checkpoint(files["pose"], img_size=IMG).eval()
    b = PoseModel.from_checkpoint(tmp_path / "pose.safetensors", img_size=IMG).eval()
    x = images(1)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["pose", "pretrain", "torchscript"])
def test_convert_round_trips(tmp_path, files, family):
    src = files.get(family) or save_official(
        official_model("pose", seed=9), tmp_path / "pose_torchscript.pt2", "ts"
    )
    out = tmp_path / "converted.safetensors"
    grid = (
        [] if family == "pretrain" else ["--grid", "8", "6"]
    )  # 64x48 task grids are inferred, tiny ones not
    assert cli_main(["convert", str(src), str(out), *grid]) == 0

    with safe_open(str(out), framework="pt") as f:
        keys, meta = set(f.keys()), json.loads(f.metadata()["geosapiens"])
    assert "backbone.blocks.1.mlp.fc1.weight" in keys and "backbone.norm.weight" in keys
    assert not any(".layers." in k or "projection" in k or "cls_token" in k for k in keys)
    expected_family = "pretrain" if family == "pretrain" else "pose"
    assert meta["family"] == expected_family and meta["preset"] == "sapiens_nano"
    assert meta["patch_padding"] == (0 if family == "pretrain" else 2)
    assert meta["pos_embed_grid"] == ([8, 8] if family == "pretrain" else [8, 6])

    x = images(1)
    with torch.no_grad():
        if family == "pretrain":
            a = create_backbone("sapiens_nano", img_size=IMG, checkpoint=src).eval()
            b = create_backbone("sapiens_nano", img_size=IMG, checkpoint=out).eval()
        else:
            assert meta["num_outputs"] == 308 and "head.final_layer.weight" in keys
            a = PoseModel.from_checkpoint(src, img_size=IMG).eval()
            b = PoseModel.from_checkpoint(out, img_size=IMG).eval()
        assert torch.equal(a(x), b(x))


def test_convert_reports_errors(tmp_path, files, capsys):
    assert cli_main(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "o.safetensors")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    assert (
        cli_main(["convert", str(files["depth"]), str(tmp_path / "o.safetensors"), "--family", "pose"]) == 1
    )
    assert "wrong family" in capsys.readouterr().err
    assert (
        cli_main(["convert", str(files["depth"]), str(tmp_path / "o.safetensors")]) == 1
    )  # 48 rows: 8x6? 6x8?
    assert "pass --grid H W" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["convert", str(files["depth"]), str(tmp_path / "o.pth")])


def test_a_stage_keeps_its_validation_confidence_in_its_checkpoints_and_across_a_resume():
    from geosapiens.models.stage_checkpoint import VALIDATION_CONFIDENCE
    from geosapiens.stages import SupervisedPose

    stage = SupervisedPose(backbone="timm:resnet10t", input_size=(64, 64), flip_test=False)
    checkpoint = {"state_dict": stage.state_dict()}
    stage.on_save_checkpoint(checkpoint)
    assert VALIDATION_CONFIDENCE not in checkpoint  # never validated: nothing to keep
    stage.validation_confidence = 0.62
    stage.on_save_checkpoint(checkpoint)
    resumed = SupervisedPose(backbone="timm:resnet10t", input_size=(64, 64), flip_test=False)
    resumed.on_load_checkpoint(checkpoint)
    assert checkpoint[VALIDATION_CONFIDENCE] == resumed.validation_confidence == 0.62
