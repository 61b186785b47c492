"""Heads: official key tables at full size, upsampling factors, and the PoseModel contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geosapiens.models.backbone import create_backbone
from geosapiens.models.heads import DeconvHead, SapiensDepthHead, SapiensHeatmapHead, SapiensNormalHead
from geosapiens.models.pose_model import PoseModel


def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("k", [17, 133, 308])
def test_heatmap_head_keys_are_the_official_ones(k):
    """sapiens.md §3 (prefix head.), for the 1B width D = 1536."""
    with torch.device("meta"):
        head = SapiensHeatmapHead(1536, k)
    assert shapes(head) == {
        "deconv_layers.0.weight": (1536, 768, 4, 4),
        "deconv_layers.3.weight": (768, 768, 4, 4),
        "conv_layers.0.weight": (768, 768, 1, 1),
        "conv_layers.0.bias": (768,),
        "conv_layers.3.weight": (768, 768, 1, 1),
        "conv_layers.3.bias": (768,),
        "final_layer.weight": (k, 768, 1, 1),
        "final_layer.bias": (k,),
    }
    norms = [m for m in head.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 4 and not any(m.affine or m.track_running_stats for m in norms)
    assert sum(isinstance(m, nn.SiLU) for m in head.modules()) == 4
    if k == 308:  # "head ≈ 29.7 M params for 1B/308"
        assert abs(sum(p.numel() for p in head.parameters()) - 29.7e6) < 0.1e6


def test_dense_head_keys_are_the_official_ones():
    """sapiens.md §4 (prefix decode_head.)."""
    with torch.device("meta"):
        depth, normal = SapiensDepthHead(1024), SapiensNormalHead(1024)
    assert shapes(depth) == {
        "deconv_layers.0.weight": (1024, 384, 4, 4),
        "deconv_layers.3.weight": (384, 384, 4, 4),
        "deconv_layers.6.weight": (384, 384, 4, 4),
        "deconv_layers.9.weight": (384, 384, 4, 4),
        "conv_layers.0.weight": (384, 384, 1, 1),
        "conv_layers.0.bias": (384,),
        "conv_layers.3.weight": (384, 384, 1, 1),
        "conv_layers.3.bias": (384,),
        "conv_seg.weight": (1, 384, 1, 1),
        "conv_seg.bias": (1,),
    }
    expected = {"deconv_layers.0.weight": (1024, 768, 4, 4)}
    expected |= {f"deconv_layers.{i}.weight": (768, 768, 4, 4) for i in (3, 6)}
    for i in (0, 3, 6):
        expected |= {f"conv_layers.{i}.weight": (768, 768, 1, 1), f"conv_layers.{i}.bias": (768,)}
    expected |= {"conv_seg.weight": (3, 768, 1, 1), "conv_seg.bias": (3,)}
    assert shapes(normal) == expected
    assert (depth.upsample, normal.upsample) == (16, 8)


def test_heads_upsample_stride16_features_to_their_native_resolution():
    x = torch.randn(2, 64, 4, 3)
    assert SapiensHeatmapHead(64, 17, (16, 16), (16, 16))(x).shape == (2, 17, 16, 12)
    assert SapiensDepthHead(64, (8,) * 4, (8, 8)).eval()(x).shape == (2, 1, 64, 48)
    assert SapiensNormalHead(64, (8,) * 3, (8,) * 3).eval()(x).shape == (2, 3, 32, 24)


def test_from_state_dict_rebuilds_any_width():
    for head in (
        SapiensHeatmapHead(48, 5, (24, 12), (12,)),
        SapiensDepthHead(48, (8,) * 4, (8, 8)),
        SapiensNormalHead(48, (8,) * 3, (4,) * 3),
    ):
        again = type(head).from_state_dict(head.state_dict())
        assert shapes(again) == shapes(head)
    with pytest.raises(ValueError, match="no final_layer"):
        SapiensHeatmapHead.from_state_dict(SapiensDepthHead(48, (8,), (8,)).state_dict())


@pytest.mark.parametrize(("in_stride", "layers"), [(16, 2), (32, 3), (4, 0)])
def test_deconv_head_layers_follow_the_stride_ratio(in_stride, layers):
    head = DeconvHead(32, 17, in_stride=in_stride, channels=16)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in head.modules()) == layers
    assert all(
        m.bias is None and m.kernel_size == (4, 4)
        for m in head.modules()
        if isinstance(m, nn.ConvTranspose2d)
    )
    assert sum(isinstance(m, nn.BatchNorm2d) for m in head.modules()) == layers
    h, w = 256 // in_stride, 192 // in_stride
    assert head(torch.randn(2, 32, h, w)).shape == (2, 17, 64, 48)


def test_deconv_head_rejects_bad_strides_and_widths():
    with pytest.raises(ValueError, match="power of two"):
        DeconvHead(32, 17, in_stride=24)
    with pytest.raises(ValueError, match="2 deconvolutions"):
        DeconvHead(32, 17, in_stride=16, channels=(8, 8, 8))
    assert [
        m.out_channels
        for m in DeconvHead(32, 17, 16, channels=(24, 8)).modules()
        if isinstance(m, nn.ConvTranspose2d)
    ] == [24, 8]


def test_pose_model_heatmaps_at_a_quarter_and_learns():
    model = PoseModel(
        create_backbone("sapiens_nano", img_size=(64, 48)), DeconvHead(64, 17, in_stride=16, channels=16)
    )
    x = torch.randn(2, 3, 64, 48)
    assert model.forward_features(x).shape == (2, 64, 4, 3)
    heatmaps = model(x)
    assert heatmaps.shape == (2, 17, 16, 12) and model.num_keypoints == 17
    heatmaps.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_pose_model_rejects_a_head_that_does_not_reach_stride_4():
    with pytest.raises(ValueError, match="heatmap stride 8"):
        PoseModel(
            create_backbone("sapiens_nano", img_size=(64, 48)), DeconvHead(64, 17, in_stride=16, out_stride=8)
        )
    cnn = create_backbone("timm:resnet18")
    assert PoseModel(cnn, DeconvHead(cnn.out_channels, 17, in_stride=cnn.stride))(
        torch.randn(1, 3, 64, 64)
    ).shape == (1, 17, 16, 16)
