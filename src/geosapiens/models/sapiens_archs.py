"""The Sapiens model zoo as data: encoder sizes and checkpoint families (no torch: a command's ``--help``
answers at once). Shapes and facts: ``../shared/reference/sapiens.md`` §1-§2.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FAMILIES", "PATCH_SIZE", "SAPIENS_ARCHS", "Family", "SapiensArch", "preset_for_shape"]


PATCH_SIZE = 16


@dataclass(frozen=True)
class Family:
    """What a checkpoint family needs to run as it was trained.

    Attributes:
        padding: symmetric patch-embed padding in pixels the weights were trained with.
        head_prefix: state-dict prefix of the head in the official container ('' = no head).
        outputs: number of output channels that identifies the family's head (None = any, e.g. keypoints).
    """

    padding: int
    head_prefix: str
    outputs: int | None = None


# The cfg table (timm's default_cfgs in spirit): every family takes 1024 x 768 (H x W) RGB input
# normalised with mean (123.675, 116.28, 103.53) / std (58.395, 57.12, 57.375); the official files are
# listed in sapiens.md §2.3.
FAMILIES: dict[str, Family] = {
    "pretrain": Family(padding=0, head_prefix=""),
    "pose": Family(padding=2, head_prefix="head."),  # K = 308 (Goliath), 133 (COCO-WholeBody), 17 (COCO)
    "depth": Family(padding=0, head_prefix="decode_head.", outputs=1),
    "normal": Family(padding=2, head_prefix="decode_head.", outputs=3),
}


@dataclass(frozen=True)
class SapiensArch:
    """Shape of one Sapiens encoder (head_dim = embed_dim / num_heads: 64; 80 for 0.6b, 60 for 2b)."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


# The preset table. The four official sizes match the released checkpoints; the small ones are for CPU runs.
SAPIENS_ARCHS: dict[str, SapiensArch] = {
    "sapiens_0.3b": SapiensArch(embed_dim=1024, depth=24, num_heads=16),
    "sapiens_0.6b": SapiensArch(embed_dim=1280, depth=32, num_heads=16),
    "sapiens_1b": SapiensArch(embed_dim=1536, depth=40, num_heads=24),
    "sapiens_2b": SapiensArch(embed_dim=1920, depth=48, num_heads=32),
    "sapiens_small": SapiensArch(embed_dim=384, depth=8, num_heads=6),
    "sapiens_tiny": SapiensArch(embed_dim=192, depth=4, num_heads=3),
    "sapiens_nano": SapiensArch(embed_dim=64, depth=2, num_heads=2),
}


def preset_for_shape(embed_dim: int, depth: int) -> str | None:
    """The preset name with this width and depth (how a checkpoint's size is recognised), or None."""
    return next((n for n, a in SAPIENS_ARCHS.items() if (a.embed_dim, a.depth) == (embed_dim, depth)), None)
