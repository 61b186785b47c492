"""Decoder heads: a light SimpleBaseline deconv head and the official Sapiens heads.

The Sapiens heads reproduce the official module trees so that ``state_dict`` names and indices are those of the
released checkpoints (``../shared/reference/sapiens.md`` §3-§4, prefix ``head.`` / ``decode_head.`` removed):
stacks of [ConvTranspose2d(k4, s2, p1, no bias) -> InstanceNorm2d (no affine, no keys) -> SiLU] and
[Conv2d(1x1) -> InstanceNorm2d -> SiLU], hence parameter indices 0, 3, 6, 9.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

__all__ = ["DeconvHead", "SapiensDepthHead", "SapiensHeatmapHead", "SapiensNormalHead"]


def _sapiens_stack(in_channels: int, channels: Sequence[int], deconv: bool) -> nn.Sequential:
    """[layer -> InstanceNorm2d(affine=False) -> SiLU] per entry of ``channels``."""
    layers: list[nn.Module] = []
    for c in channels:
        if deconv:
            layers.append(nn.ConvTranspose2d(in_channels, c, kernel_size=4, stride=2, padding=1, bias=False))
        else:
            layers.append(nn.Conv2d(in_channels, c, kernel_size=1, bias=True))
        layers += [nn.InstanceNorm2d(c), nn.SiLU()]
        in_channels = c
    return nn.Sequential(*layers)


def _stack_channels(state_dict: Mapping[str, torch.Tensor], name: str, deconv: bool) -> tuple[list[int], int | None]:
    """(output channels per layer, input channels) of a ``name.{0,3,6..}.weight`` stack in a state dict."""
    weights = {int(m.group(1)): v for k, v in state_dict.items() if (m := re.fullmatch(rf"{name}\.(\d+)\.weight", k))}
    ordered = [weights[i] for i in sorted(weights)]
    if deconv:  # ConvTranspose2d weight: (in, out, k, k)
        return [int(w.shape[1]) for w in ordered], (int(ordered[0].shape[0]) if ordered else None)
    return [int(w.shape[0]) for w in ordered], (int(ordered[0].shape[1]) if ordered else None)


def _init_small(module: nn.Module) -> None:
    """SimpleBaseline / mmpose init: N(0, 0.001) weights, zero biases, unit BN."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, std=0.001)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class DeconvHead(nn.Module):
    """SimpleBaseline head (Xiao et al., 2018): deconvolutions from the backbone stride to the heatmap stride.

    log2(in_stride / out_stride) x [ConvTranspose2d(k4, s2, p1, no bias) -> BatchNorm2d -> ReLU], then a 1x1
    convolution to K heatmaps.

    Args:
        in_channels: backbone channels. num_keypoints: K.
        in_stride: the backbone's stride (16 for ViT-16, 32 for most CNNs). out_stride: heatmap stride (4).
        channels: deconvolution width, one int for all layers or one per layer.

    Shapes: (B, in_channels, H/in_stride, W/in_stride) -> (B, K, H/out_stride, W/out_stride).
    """

    def __init__(
        self,
        in_channels: int,
        num_keypoints: int,
        in_stride: int,
        out_stride: int = 4,
        channels: int | Sequence[int] = 256,
    ) -> None:
        super().__init__()
        ratio = in_stride // out_stride
        if ratio < 1 or in_stride % out_stride or ratio & (ratio - 1):
            raise ValueError(f"in_stride / out_stride must be a power of two, got {in_stride} / {out_stride}")
        num_layers = int(math.log2(ratio))
        widths = [channels] * num_layers if isinstance(channels, int) else list(channels)
        if len(widths) != num_layers:
            raise ValueError(f"{num_layers} deconvolutions from stride {in_stride} to {out_stride}, got {len(widths)} widths")
        layers: list[nn.Module] = []
        c_in = in_channels
        for c in widths:
            layers += [
                nn.ConvTranspose2d(c_in, c, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            c_in = c
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(c_in, num_keypoints, kernel_size=1)
        self.in_stride, self.out_stride, self.upsample = in_stride, out_stride, ratio
        self.num_keypoints = num_keypoints
        _init_small(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(x))


class SapiensHeatmapHead(nn.Module):
    """The official Sapiens pose head (mmpose ``HeatmapHead`` with ``use_silu``), key-compatible with ``head.*``.

    Args:
        in_channels: backbone width D. num_keypoints: K (308 Goliath, 133 COCO-WholeBody, 17 COCO).
        deconv_channels: one x2 upsampling per entry (official: 768, 768 -> stride 16 to 4).
        conv_channels: 1x1 convolutions after them (official: 768, 768).

    Shapes: (B, D, h, w) -> (B, K, h * 2^len(deconv_channels), w * 2^len(deconv_channels)).
    """

    def __init__(
        self,
        in_channels: int,
        num_keypoints: int,
        deconv_channels: Sequence[int] = (768, 768),
        conv_channels: Sequence[int] = (768, 768),
    ) -> None:
        super().__init__()
        self.deconv_layers = _sapiens_stack(in_channels, deconv_channels, deconv=True)
        width = deconv_channels[-1] if deconv_channels else in_channels
        self.conv_layers = _sapiens_stack(width, conv_channels, deconv=False)
        width = conv_channels[-1] if conv_channels else width
        self.final_layer = nn.Conv2d(width, num_keypoints, kernel_size=1)
        self.num_keypoints = num_keypoints
        self.upsample = 2 ** len(deconv_channels)
        _init_small(self)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]) -> SapiensHeatmapHead:
        """A head shaped like the weights (head-local names); the caller loads them (``load_head_state``)."""
        deconvs, d_in = _stack_channels(state_dict, "deconv_layers", deconv=True)
        convs, c_in = _stack_channels(state_dict, "conv_layers", deconv=False)
        if "final_layer.weight" not in state_dict:
            raise ValueError(f"not a pose heatmap head: no final_layer.weight among {sorted(state_dict)[:6]}")
        final = state_dict["final_layer.weight"]
        in_channels = d_in or c_in or int(final.shape[1])
        return cls(in_channels, int(final.shape[0]), deconvs, convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.conv_layers(self.deconv_layers(x)))


class _SapiensDenseHead(nn.Module):
    """mmseg-style Sapiens decode head: deconvs, 1x1 convs, Dropout2d(0.1) and ``conv_seg``."""

    default_deconvs: tuple[int, ...] = ()
    default_convs: tuple[int, ...] = ()
    default_out: int = 1

    def __init__(
        self,
        in_channels: int,
        deconv_channels: Sequence[int] | None = None,
        conv_channels: Sequence[int] | None = None,
        out_channels: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        deconv_channels = self.default_deconvs if deconv_channels is None else tuple(deconv_channels)
        conv_channels = self.default_convs if conv_channels is None else tuple(conv_channels)
        out_channels = self.default_out if out_channels is None else out_channels
        self.deconv_layers = _sapiens_stack(in_channels, deconv_channels, deconv=True)
        width = deconv_channels[-1] if deconv_channels else in_channels
        self.conv_layers = _sapiens_stack(width, conv_channels, deconv=False)
        width = conv_channels[-1] if conv_channels else width
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(width, out_channels, kernel_size=1)
        self.out_channels = out_channels
        self.upsample = 2 ** len(deconv_channels)
        _init_small(self)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor]):
        """A head shaped like the weights (head-local names); the caller loads them (``load_head_state``)."""
        deconvs, d_in = _stack_channels(state_dict, "deconv_layers", deconv=True)
        convs, c_in = _stack_channels(state_dict, "conv_layers", deconv=False)
        if "conv_seg.weight" not in state_dict:
            raise ValueError(f"not a dense head: no conv_seg.weight among {sorted(state_dict)[:6]}")
        seg = state_dict["conv_seg.weight"]
        return cls(d_in or c_in or int(seg.shape[1]), deconvs, convs, int(seg.shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.conv_layers(self.deconv_layers(x))))


class SapiensDepthHead(_SapiensDenseHead):
    """Official ``VitDepthHead``: 4 x 384 deconvs (x16, full input resolution), 2 x 384 convs, 1 channel.

    Output: (B, 1, 16h, 16w) relative depth (scale-ambiguous, larger = farther, unbounded).
    """

    default_deconvs = (384, 384, 384, 384)
    default_convs = (384, 384)
    default_out = 1


class SapiensNormalHead(_SapiensDenseHead):
    """Official ``VitNormalHead``: 3 x 768 deconvs (x8, half input resolution), 3 x 768 convs, 3 channels.

    Output: (B, 3, 8h, 8w) unnormalised camera-frame normals (L2-normalise after upsampling).
    """

    default_deconvs = (768, 768, 768)
    default_convs = (768, 768, 768)
    default_out = 3
