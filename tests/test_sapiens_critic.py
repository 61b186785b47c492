"""Official depth/normal critics: the reference pipeline, TorchScript sources, the frozen contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geosapiens.errors import CheckpointError
from geosapiens.models.critics import GeometryMaps
from geosapiens.models.sapiens_critic import SapiensCritic, TorchScriptCritic
from test_checkpoint_official import IMG, official_model, rel_err, save_official

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning"),
]

CROP = (80, 56)  # any crop size: the critic resizes to its input (IMG, the stand-in for 1024 x 768) and back


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("critics")
    depth, normal = official_model("depth", seed=11), official_model("normal", seed=12)
    return {
        "depth": depth,
        "normal": normal,
        "depth.pth": save_official(depth, root / "sapiens_depth.pth"),
        "normal.pth": save_official(normal, root / "sapiens_normal.pth"),
        "depth.pt2": save_official(depth, root / "sapiens_depth_torchscript.pt2", "torchscript"),
        "normal.pt2": save_official(normal, root / "sapiens_normal_torchscript.pt2", "torchscript"),
        "pose.pth": save_official(official_model("pose"), root / "pose.pth"),
        "root": root,
    }


def crops(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, *CROP, generator=torch.Generator().manual_seed(7))


def reference_maps(official, x: torch.Tensor, valid: torch.Tensor | None = None):
    """sapiens.md §4-§5 written out: whole-image resize, predict, bilinear back, L2 after upsampling;
    depth: (d - median) / mean absolute deviation per image over the valid pixels (lower median, as
    torch's), 0 outside them."""
    with torch.no_grad():
        inp = F.interpolate(x, size=IMG, mode="bilinear", align_corners=False)
        depth = F.interpolate(official["depth"](inp), size=CROP, mode="bilinear", align_corners=False)
        normals = F.interpolate(official["normal"](inp), size=CROP, mode="bilinear", align_corners=False)
    normals = normals / normals.norm(dim=1, keepdim=True).clamp_min(1e-5)
    out = np.zeros(depth.shape, np.float32)
    for b in range(depth.shape[0]):
        d = depth[b, 0].numpy()
        vals = d[valid[b, 0].numpy()] if valid is not None else d.ravel()
        med = np.quantile(vals, 0.5, method="lower")
        out[b, 0] = (d - med) / (np.abs(vals - med).mean() + 1e-6)
        if valid is not None:
            out[b, 0][~valid[b, 0].numpy()] = 0.0
    return torch.from_numpy(out), normals


@pytest.mark.parametrize("source", ["pth", "pt2"])
def test_sapiens_critic_runs_the_reference_pipeline(official, source):
    critic = SapiensCritic(official[f"depth.{source}"], official[f"normal.{source}"], input_size=IMG)
    assert critic.depth_model[0].patch_padding == 0 and critic.normal_model[0].patch_padding == 2
    x = crops()
    maps = critic(x)
    depth, normals = reference_maps(official, x)
    assert isinstance(maps, GeometryMaps) and maps.valid is None
    assert maps.depth.shape == (2, 1, *CROP) and maps.normals.shape == (2, 3, *CROP)
    assert rel_err(maps.normals, normals) < 1e-5
    assert rel_err(maps.depth, depth) < 1e-5
    torch.testing.assert_close(maps.normals.norm(dim=1), torch.ones(2, *CROP))


def test_valid_mask_sets_the_depth_statistics(official):
    critic = SapiensCritic(official["depth.pth"], official["normal.pth"], input_size=IMG)
    x = crops()
    valid = torch.zeros(2, 1, *CROP, dtype=torch.bool)
    valid[:, :, 20:60, 10:40] = True
    maps = critic(x, valid=valid)
    assert maps.valid is valid
    depth, _ = reference_maps(official, x, valid)
    assert rel_err(maps.depth, depth) < 1e-5
    inside = maps.depth[valid].reshape(2, -1)
    assert torch.equal(inside.median(dim=1).values, torch.zeros(2))
    torch.testing.assert_close(inside.abs().mean(dim=1), torch.ones(2), rtol=1e-4, atol=1e-4)


def test_torchscript_critic_reads_official_traced_files(official):
    ts = TorchScriptCritic([official["depth.pt2"], official["normal.pt2"]], input_size=IMG)
    ref = SapiensCritic(official["depth.pth"], official["normal.pth"], input_size=IMG)
    x = crops()
    a, b = ts(x), ref(x)
    assert rel_err(a.depth, b.depth) < 1e-5 and rel_err(a.normals, b.normals) < 1e-5


class _Both(nn.Module):
    def __init__(self, depth: nn.Module, normal: nn.Module) -> None:
        super().__init__()
        self.depth, self.normal = depth, normal

    def forward(self, x):
        return self.normal(x), self.depth(x)


class _Channels(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 1)

    def forward(self, x):
        return self.conv(x)


def test_torchscript_outputs_are_read_by_channel_count(official, tmp_path):
    both = tmp_path / "both.pt"
    torch.jit.trace(_Both(official["depth"], official["normal"]), torch.randn(1, 3, *IMG)).save(str(both))
    x = crops()
    one_file, two_files = (
        TorchScriptCritic(both, IMG)(x),
        TorchScriptCritic([official["depth.pt2"], official["normal.pt2"]], IMG)(x),
    )
    assert torch.equal(one_file.depth, two_files.depth) and torch.equal(one_file.normals, two_files.normals)

    with pytest.raises(CheckpointError, match="no file predicts normals"):
        TorchScriptCritic(official["depth.pt2"], IMG)(x)
    two = tmp_path / "two.pt"
    torch.jit.trace(_Channels(2), torch.randn(1, 3, 8, 8)).save(str(two))
    with pytest.raises(CheckpointError, match=r"two.pt: outputs \[\(2, 2, 128, 96\)\]"):
        TorchScriptCritic(two, IMG)(x)
    with pytest.raises(CheckpointError, match="no such TorchScript"):
        TorchScriptCritic(tmp_path / "missing.pt2", IMG)
    with pytest.raises(CheckpointError, match="cannot load the TorchScript"):
        TorchScriptCritic(official["depth.pth"], IMG)


def test_critics_need_the_right_families(official):
    with pytest.raises(CheckpointError, match="wrong family"):
        SapiensCritic(official["pose.pth"], official["normal.pth"], input_size=IMG)
    with pytest.raises(CheckpointError, match="expected a normal checkpoint"):
        SapiensCritic(official["depth.pth"], official["depth.pth"], input_size=IMG)


class _Student(nn.Module):
    def __init__(self, critic: nn.Module) -> None:
        super().__init__()
        self.decoder = nn.Linear(4, 4)
        self.critic = critic


def test_critic_is_frozen_always_eval_and_never_in_training_checkpoints(official):
    critic = SapiensCritic(official["depth.pth"], official["normal.pth"], input_size=IMG)
    student = _Student(critic).train()
    assert not critic.training and not any(m.training for m in critic.modules())
    assert all(not p.requires_grad for p in critic.parameters())
    state = student.state_dict()
    assert set(state) == {"decoder.weight", "decoder.bias"}
    assert any(k.startswith("depth_model.0.blocks.") for k in critic.weights())

    # resuming a training checkpoint (strict) works and leaves the critic's own weights untouched
    before = {k: v.clone() for k, v in critic.weights().items()}
    fresh = _Student(SapiensCritic(official["depth.pth"], official["normal.pth"], input_size=IMG))
    fresh.load_state_dict(state, strict=True)
    assert all(torch.equal(before[k], v) for k, v in fresh.critic.weights().items())
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict(state | {"decoder.extra": torch.ones(1)}, strict=True)
    with pytest.raises(RuntimeError, match="decoder.weight"):
        fresh.load_state_dict({"decoder.bias": state["decoder.bias"]}, strict=True)

    x = crops(1).requires_grad_(True)
    maps = critic(x)
    assert not maps.depth.requires_grad and not maps.normals.requires_grad
