"""Backbone presets, the timm configuration Sapiens needs, feature maps, checkpointing, timm CNNs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from geosapiens.models.backbone import SapiensViT, TimmFeatureBackbone, create_backbone
from geosapiens.models.sapiens_archs import SAPIENS_ARCHS

# sapiens.md §1: (embed, depth, heads, head_dim, encoder params incl. the 4097-row pretrain pos_embed)
OFFICIAL = {
    "sapiens_0.3b": (1024, 24, 16, 64, 0.307e9),
    "sapiens_0.6b": (1280, 32, 16, 80, 0.636e9),
    "sapiens_1b": (1536, 40, 24, 64, 1.141e9),
    "sapiens_2b": (1920, 48, 32, 60, 2.134e9),
}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_presets_have_the_published_shapes_and_parameter_counts(name):
    embed, depth, heads, head_dim, params = OFFICIAL[name]
    with torch.device("meta"):
        model = create_backbone(name)  # 1024 x 768: pos_embed (1, 3072, D), no cls token
    assert (model.out_channels, len(model.blocks), model.blocks[0].attn.num_heads) == (embed, depth, heads)
    assert model.blocks[0].attn.head_dim == head_dim and model.blocks[0].mlp.fc1.out_features == 4 * embed
    assert model.pos_embed.shape == (1, 3072, embed) and model.cls_token is None
    ours = sum(p.numel() for p in model.parameters())
    pretrain_layout = (
        ours + (4097 - 3072) * embed + embed
    )  # the checkpoint also stores the cls token and its row
    assert abs(pretrain_layout - params) / params < 0.001, (ours, pretrain_layout)


def test_modules_are_configured_as_sapiens():
    model = create_backbone("sapiens_nano", img_size=(64, 48))
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and all(m.eps == 1e-6 for m in norms)
    assert all(m.approximate == "none" for m in model.modules() if isinstance(m, nn.GELU))
    block = model.blocks[0]
    assert block.attn.qkv.bias is not None and block.attn.fused_attn
    assert isinstance(block.ls1, nn.Identity) and isinstance(block.drop_path1, nn.Identity)
    assert isinstance(model.norm, nn.LayerNorm) and model.num_prefix_tokens == 0
    assert model.stride == 16 and SAPIENS_ARCHS["sapiens_nano"].embed_dim == model.out_channels


@pytest.mark.parametrize("size", [(64, 48), (96, 128), (48, 48)])
@pytest.mark.parametrize("padding", [0, 2])
def test_feature_map_is_b_d_h16_w16_for_any_multiple_of_16(size, padding):
    model = create_backbone("sapiens_nano", img_size=(64, 48), patch_padding=padding).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 64, size[0] // 16, size[1] // 16) and torch.isfinite(out).all()


def test_patch_padding_two_shifts_the_patch_grid_by_two_pixels():
    """Padded token k sees pixels 16k-2 .. 16k+13: on an image moved 2 px up-left it is plain token k."""
    torch.manual_seed(0)
    plain = create_backbone("sapiens_nano", img_size=(64, 48), patch_padding=0).eval()
    padded = create_backbone("sapiens_nano", img_size=(64, 48), patch_padding=2).eval()
    padded.load_state_dict(plain.state_dict())
    assert padded.patch_embed.proj.padding == (2, 2) and plain.patch_embed.proj.padding == (0, 0)
    x = torch.randn(1, 3, 64, 48)
    shifted = torch.nn.functional.pad(x, (0, 2, 0, 2))[..., 2:, 2:]  # pixel (y, x) now holds (y + 2, x + 2)
    with torch.no_grad():
        torch.testing.assert_close(
            padded.patch_embed.proj(shifted)[..., 1:, 1:], plain.patch_embed.proj(x)[..., 1:, 1:]
        )
        assert not torch.allclose(padded(x), plain(x))


def test_family_sets_the_default_padding():
    assert create_backbone("sapiens_nano", img_size=(32, 32), family="pose").patch_padding == 2
    assert create_backbone("sapiens_nano", img_size=(32, 32), family="normal").patch_padding == 2
    assert create_backbone("sapiens_nano", img_size=(32, 32), family="depth").patch_padding == 0
    assert create_backbone("sapiens_nano", img_size=(32, 32)).patch_padding == 0


def test_grad_checkpointing_keeps_outputs_and_every_parameter_learns():
    torch.manual_seed(0)
    model = create_backbone("sapiens_nano", img_size=(64, 48), family="pose", drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 48)
    plain = model(x)
    plain.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    model.set_grad_checkpointing(True)
    ckpt = model(x)
    ckpt.square().mean().backward()
    torch.testing.assert_close(ckpt, plain)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=1e-6)
    assert model.grad_checkpointing


def test_checkpointing_saves_fewer_activations():
    model = create_backbone("sapiens_nano", img_size=(64, 48))
    x = torch.randn(1, 3, 64, 48)

    def saved_bytes() -> int:
        total = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: total.append(t.numel() * t.element_size()) or t, lambda t: t
        ):
            model(x).sum()
        return sum(total)

    full = saved_bytes()
    model.set_grad_checkpointing(True)
    assert saved_bytes() < full / 2


def test_timm_cnn_backbone_exposes_the_same_interface():
    model = create_backbone("timm:resnet18")
    assert isinstance(model, TimmFeatureBackbone) and (model.out_channels, model.stride) == (512, 32)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 96)).shape == (1, 512, 4, 3)
    with pytest.raises(ValueError, match="timm backbones take no"):
        create_backbone("timm:resnet18", family="pose")


def test_unknown_names_and_bad_padding_are_rejected():
    with pytest.raises(ValueError, match="unknown backbone 'sapiens_3b'"):
        create_backbone("sapiens_3b")
    with pytest.raises(ValueError, match="patch_padding must be 0 or 2"):
        create_backbone("sapiens_nano", img_size=(32, 32), patch_padding=1)
    with pytest.raises(ValueError, match="unknown family"):
        create_backbone("sapiens_nano", img_size=(32, 32), family="seg")
    assert isinstance(create_backbone("sapiens_tiny", img_size=(32, 32)), SapiensViT)
