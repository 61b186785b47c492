"""Sapiens ViT backbones on timm's ``VisionTransformer``, plus any timm CNN for CPU demos.

Sapiens (Khirodkar et al., "Sapiens: Foundation for Human Vision Models", ECCV 2024) uses a plain
pre-norm ViT-16: LayerNorm eps 1e-6, qkv bias, exact GELU, MLP ratio 4, no layer scale, a final norm, no
class token in the finetuned task models, and (for the pose and normal families) a symmetric 2-px zero
padding in the patch convolution. Shapes and facts: ``../shared/reference/sapiens.md`` §1-§2; checkpoint
reading: ``official_checkpoint.py``; the size presets: ``sapiens_archs.py``.

Every backbone returns a (B, out_channels, H/stride, W/stride) feature map.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from geosapiens.errors import CheckpointError
from geosapiens.models.official_checkpoint import SapiensCheckpoint, load_backbone_state, load_checkpoint
from geosapiens.models.sapiens_archs import FAMILIES, PATCH_SIZE, SAPIENS_ARCHS

__all__ = ["SapiensViT", "TimmFeatureBackbone", "create_backbone"]








class SapiensViT(VisionTransformer):
    """timm ``VisionTransformer`` configured as the Sapiens encoder, returning a feature map.

    Args:
        img_size: (H, W) the position embeddings are laid out for; other sizes (multiples of 16) work
            through a bicubic resize without antialias, as the official ``resize_pos_embed`` does.
        embed_dim, depth, num_heads, mlp_ratio: the encoder shape (see :data:`SAPIENS_ARCHS`).
        patch_padding: symmetric zero padding of the 16x16 patch convolution: 2 for pose/normal
            weights, else 0.
        **kwargs: forwarded to ``VisionTransformer`` (e.g. ``drop_path_rate``).

    Attributes:
        out_channels: D. stride: 16.
    """

    stride = PATCH_SIZE

    def __init__(
        self,
        img_size: tuple[int, int] = (1024, 768),
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        patch_padding: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(
            img_size=tuple(img_size),
            patch_size=PATCH_SIZE,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=True,
            init_values=None,
            class_token=False,
            global_pool="",
            num_classes=0,
            final_norm=True,
            dynamic_img_size=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            act_layer=nn.GELU,
            **kwargs,
        )
        self.out_channels = embed_dim
        self.patch_padding = int(patch_padding)
        if self.patch_padding:
            # timm's PatchEmbed can only pad right/bottom; Sapiens pads all four sides of the image.
            old = self.patch_embed.proj
            new = nn.Conv2d(old.in_channels, embed_dim, PATCH_SIZE, PATCH_SIZE, padding=self.patch_padding)
            new = new.to(device=old.weight.device, dtype=old.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(old.weight)
                new.bias.copy_(old.bias)
            self.patch_embed.proj = new
        for block in self.blocks:
            block.attn.fused_attn = True  # F.scaled_dot_product_attention, as the official encoder runs

    def feature_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """(h, w) of the token grid for an (H, W) input: the patch convolution's output size."""
        return tuple((s + 2 * self.patch_padding - PATCH_SIZE) // PATCH_SIZE + 1 for s in img_size)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Add position embeddings to (B, h, w, D) patch tokens -> (B, h*w, D); resize without antialias."""
        b, h, w, d = x.shape
        pos = resample_abs_pos_embed(
            self.pos_embed,
            new_size=(h, w),
            old_size=self.patch_embed.grid_size,
            num_prefix_tokens=0,
            antialias=False,
        )
        return self.pos_drop(x.reshape(b, h * w, d) + pos)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, D, H/16, W/16) tokens after the final norm."""
        h, w = self.feature_size(x.shape[-2:])
        tokens = self.forward_features(x)  # (B, h*w, D)
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)


class TimmFeatureBackbone(nn.Module):
    """Any timm CNN's last feature map behind the backbone interface (random init; for the CPU demo).

    Attributes:
        out_channels, stride: from timm's ``feature_info`` of the last stage.
    """

    def __init__(self, model_name: str, **kwargs) -> None:
        super().__init__()
        self.body = timm.create_model(
            model_name, features_only=True, out_indices=(-1,), pretrained=False, **kwargs
        )
        self.out_channels = int(self.body.feature_info.channels()[-1])
        self.stride = int(self.body.feature_info.reduction()[-1])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.body.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, out_channels, H/stride, W/stride)."""
        return self.body(x)[-1]


def create_backbone(
    name: str,
    img_size: tuple[int, int] = (1024, 768),
    patch_padding: int | None = None,
    checkpoint: str | Path | SapiensCheckpoint | None = None,
    family: str | None = None,
    **kwargs,
) -> nn.Module:
    """Build a backbone by name, optionally loading official Sapiens weights.

    Args:
        name: a :data:`SAPIENS_ARCHS` preset (``sapiens_0.3b`` ... ``sapiens_2b``, ``sapiens_tiny`` ...) or
            ``timm:<model>`` for a randomly initialised timm CNN.
        img_size: (H, W) of the position-embedding grid; 1024x768 is native, 1024x1024 the paper configs
            (timm CNNs take any size; use multiples of their stride).
        patch_padding: 0 or 2; None = what the family was trained with (pretrain/depth 0, pose/normal 2).
        checkpoint: an official ``.pth`` / ``*_torchscript.pt2`` / ``.safetensors`` file, or an already read
            :class:`SapiensCheckpoint`; its backbone is loaded strictly (pos_embed resized to ``img_size``).
        family: the checkpoint family expected (checked against the file), or, without a checkpoint,
            the family whose padding to use.
        **kwargs: forwarded to :class:`SapiensViT` / ``timm.create_model``.

    Raises:
        ValueError: unknown name or bad arguments.
        CheckpointError: the weights do not fit (see checkpoint.py).
    """
    if name.startswith("timm:"):
        if checkpoint is not None or patch_padding or family is not None:
            raise ValueError(f"{name}: timm backbones take no Sapiens checkpoint, family or patch padding")
        return TimmFeatureBackbone(name.removeprefix("timm:"), **kwargs)
    if name not in SAPIENS_ARCHS:
        raise ValueError(
            f"unknown backbone {name!r}; choose one of {', '.join(SAPIENS_ARCHS)} or timm:<model>"
        )
    if family is not None and family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if checkpoint is not None and not isinstance(checkpoint, SapiensCheckpoint):
        checkpoint = load_checkpoint(checkpoint, family=family)
    if checkpoint is not None and family is not None and checkpoint.family != family:
        raise CheckpointError(
            f"{checkpoint.path}: wrong family: a {checkpoint.family} checkpoint, not {family}"
        )
    fam = checkpoint.family if checkpoint is not None else family
    if patch_padding is None:
        patch_padding = FAMILIES[fam].padding if fam else 0
    if patch_padding not in (0, 2):
        raise ValueError(f"patch_padding must be 0 or 2, got {patch_padding}")
    arch = SAPIENS_ARCHS[name]
    model = SapiensViT(
        img_size=img_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        mlp_ratio=arch.mlp_ratio,
        patch_padding=patch_padding,
        **kwargs,
    )
    if checkpoint is not None:
        load_backbone_state(model, checkpoint)
    return model
