"""The evaluation protocol's names: PCK normalisers and thresholds, COCO OKS area choices.

Kept apart from the torch metrics that use them (:mod:`.pck`, :mod:`.coco`) so that the ``evaluate``
command's options are known without importing torch.
"""

from __future__ import annotations

__all__ = ["AREA_CHOICES", "AREA_MEANING", "DEFAULT_THRESHOLDS", "NORM_KINDS"]

NORM_KINDS: tuple[str, ...] = ("bbox", "bbox_diag", "torso", "head_neck", "image")
DEFAULT_THRESHOLDS: tuple[float, ...] = (0.05, 0.1, 0.2)
AREA_CHOICES: tuple[str, ...] = ("bbox", "file")
AREA_MEANING: dict[str, str] = {"bbox": "bbox w*h", "file": "the file's area field"}
