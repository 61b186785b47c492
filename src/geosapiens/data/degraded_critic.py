"""A critic that errs, made from a better one: fixed corruption of a critic cache, to sweep critic error.

Geometry's gain is measured with the oracle critic, which a real critic never equals. Degrading the oracle's
maps by a known amount (blur, normal and depth noise, no body silhouette) and adapting with them says how the
gain falls as the critic gets worse (``geosapiens critics degrade``; ``benchmarks/geometry_signal.py
--degrade`` measures the signal the same way). Each image's error is drawn once, from the seed and the image,
as a real critic errs the same way on the same image every epoch; :class:`~geosapiens.data.geometry_inputs.
MapDegradation` is the other kind: fresh random corruption per sample, to train the geometry teacher.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from geosapiens.data.critic_cache import (
    ENTRIES,
    MANIFEST,
    CacheStats,
    CriticCache,
    _units_path,
    maps_from_entries,
)
from geosapiens.errors import DataError
from geosapiens.io import atomic_write, atomic_write_json
from geosapiens.models.critics import GeometryMaps
from geosapiens.models.geometry import body_distance

__all__ = ["CriticDegradation", "degrade_cache"]


@dataclass(frozen=True)
class CriticDegradation:
    """A fixed corruption of critic maps; written and parsed as ``blur=PX,normals=DEG,depth=STD,nomask``.

    Attributes:
        blur_px: std of a Gaussian blur of depth, normals and silhouette, in crop pixels (masked: depth and
            normals are averaged over the body only; a pixel stays body where over half its footprint was).
        normal_noise_deg: per-pixel noise of the normals, about this many degrees (each component gets
            ``tan(deg) / sqrt(3)`` std, then the normal is renormalised).
        depth_noise: std of per-pixel noise added to the normalised depth.
        no_mask: the critic gives no silhouette: every pixel valid (depth and normals stay 0 off the body,
            and the distance to the body is 0 everywhere).
    """

    blur_px: float = 0.0
    normal_noise_deg: float = 0.0
    depth_noise: float = 0.0
    no_mask: bool = False

    @classmethod
    def parse(cls, spec: str) -> CriticDegradation:
        """``"blur=8,normals=15,depth=0.3,nomask"`` (any subset; ``""`` = no corruption)."""
        kw: dict[str, float | bool] = {}
        names = {"blur": "blur_px", "normals": "normal_noise_deg", "depth": "depth_noise"}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            name, eq, value = item.partition("=")
            try:
                if name == "nomask" and not eq:
                    kw["no_mask"] = True
                elif name in names and eq and float(value) >= 0:
                    kw[names[name]] = float(value)
                else:
                    raise ValueError
            except ValueError:
                raise ValueError(
                    f"critic degradation {spec!r}: bad item {item!r} (use blur=PX, normals=DEG, depth=STD, "
                    "nomask; values >= 0)"
                ) from None
        return cls(**kw)  # type: ignore[arg-type]

    def __str__(self) -> str:
        items = [
            f"{name}={value:g}"
            for name, value in (
                ("blur", self.blur_px),
                ("normals", self.normal_noise_deg),
                ("depth", self.depth_noise),
            )
            if value > 0
        ]
        return ",".join(items + (["nomask"] if self.no_mask else [])) or "none"

    def __call__(self, maps: GeometryMaps, rng: np.random.Generator, crop_px: float = 1.0) -> GeometryMaps:
        """Degraded copy of (B, ., h, w) maps, float32 (the body distance recomputed where the silhouette
        changed); ``crop_px``: crop pixels per map pixel (the cache's stride), so ``blur_px`` means the same
        at any stored resolution."""
        depth = maps.depth.float().numpy().copy()
        normals = maps.normals.float().numpy().copy()
        valid = (np.ones_like(depth, bool) if maps.valid is None else maps.valid.numpy()).astype(np.float32)
        if self.blur_px > 0:
            sigma = self.blur_px / crop_px
            for i in range(len(depth)):
                weight = cv2.GaussianBlur(valid[i, 0], (0, 0), sigma)
                depth[i, 0] = cv2.GaussianBlur(depth[i, 0] * valid[i, 0], (0, 0), sigma) / np.maximum(
                    weight, 1e-3
                )
                for c in range(3):
                    normals[i, c] = cv2.GaussianBlur(normals[i, c] * valid[i, 0], (0, 0), sigma)
                valid[i, 0] = weight > 0.5
        if self.normal_noise_deg > 0:
            std = math.tan(math.radians(self.normal_noise_deg)) / math.sqrt(3)
            normals = normals + rng.normal(0.0, std, normals.shape).astype(np.float32)
        if self.depth_noise > 0:
            depth = depth + rng.normal(0.0, self.depth_noise, depth.shape).astype(np.float32)
        body = torch.from_numpy(valid > 0.5)
        n = torch.from_numpy(normals)
        n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-6) * body
        d = torch.from_numpy(depth) * body
        if self.no_mask:
            return GeometryMaps(d, n, torch.ones_like(body), torch.zeros_like(d))
        if self.blur_px == 0 and maps.body_distance is not None:  # the silhouette is unchanged
            return GeometryMaps(d, n, body, maps.body_distance.float())
        return GeometryMaps(d, n, body, body_distance(body))


def _entry_rng(seed: int, key: str) -> np.random.Generator:
    """One generator per (seed, image): the same image is degraded the same way on every run."""
    return np.random.default_rng([seed, int(hashlib.sha1(key.encode()).hexdigest()[:8], 16)])


def degrade_cache(
    source_dir: str | Path, out_dir: str | Path, degradation: CriticDegradation, seed: int = 0
) -> CacheStats:
    """Write a copy of a complete critic cache with every entry degraded (same layout, keys and crop).

    The manifest names the critic ``degraded`` (of the source's critic, with the degradation and seed), so
    the copy is never mistaken for its source; the source's metric units (``lambda_z``) are kept.

    Raises:
        DataError: the source is not a complete cache, or ``out_dir`` already holds a cache.
    """
    source = CriticCache(source_dir)
    out = Path(out_dir)
    if (out / MANIFEST).exists():
        raise DataError(out, "already holds a critic cache: degrade into a new --out")
    stride = float(source.manifest["crop"]["stride"])
    entries = sorted((source.cache_dir / ENTRIES).glob("*/*.npy"))
    if len(entries) != len(source):
        raise DataError(
            source.cache_dir, f"manifest counts {len(source)} images, {ENTRIES}/ holds {len(entries)}"
        )
    for entry in entries:
        stored = maps_from_entries(torch.from_numpy(np.load(entry))[None])
        maps = degradation(stored, _entry_rng(seed, entry.stem), crop_px=stride)
        stacked = torch.cat([maps.depth, maps.normals, maps.valid.float(), maps.body_distance], dim=1)
        target = out / entry.relative_to(source.cache_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if _units_path(entry).is_file():
            shutil.copyfile(_units_path(entry), _units_path(target))
        with atomic_write(target) as f:
            np.save(f, stacked[0].numpy().astype(np.float16))
    manifest = json.loads((source.cache_dir / MANIFEST).read_text())
    manifest["critic"] = {
        "kind": "degraded",
        "of": manifest["critic"],
        "degradation": str(degradation),
        "seed": int(seed),
        "files": [],
    }
    atomic_write_json(manifest, out / MANIFEST)
    return CacheStats(written=len(entries), skipped=0, total=len(entries))
