"""``geosapiens priors fit``: per-keypoint normal priors from a critic's maps at ground-truth keypoints.

The critic's normals at labelled synthetic keypoints (read from a critic cache of those images, in the
canonical crop frame the adaptation stage also samples in) are fitted per joint with a von Mises-Fisher
distribution; ``L_geo-norm`` then pulls predicted keypoints towards surfaces facing the way that joint's
surface usually faces.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from geosapiens.cli.style import both_styles, progress_switch
from geosapiens.errors import GeoSapiensError

if TYPE_CHECKING:
    from geosapiens.data.critic_cache import CriticCache


def sample_keypoint_normals(
    cache: CriticCache, records, padding: float = 1.25, batch_size: int = 64, progress: bool = True
):
    """(N, K, 3) cached normals at each record's keypoints and (N, K) validity (labelled and on the body)."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from geosapiens.affine import apply_affine
    from geosapiens.data.crop import canonical_affine
    from geosapiens.losses.functional import sample_maps

    h, w = cache.input_size
    normals, valid = [], []
    for start in tqdm(range(0, len(records), batch_size), desc="priors", unit="batch", disable=not progress):
        batch = records[start : start + batch_size]
        maps = cache.load([r.image_path for r in batch])
        points = np.stack([r.keypoints for r in batch]).astype(np.float64)
        crop = apply_affine(points, np.stack([canonical_affine(r.bbox, (h, w), padding) for r in batch]))
        uv = torch.from_numpy(crop / np.array([w - 1, h - 1])).float()
        inside = ((uv >= 0) & (uv <= 1)).all(-1)
        on_body = sample_maps(maps.valid.float(), uv)[..., 0] > 0.5
        labelled = torch.from_numpy(np.stack([r.labelled for r in batch]))
        normals.append(sample_maps(maps.normals.float(), uv))
        valid.append(labelled & inside & on_body)
    return torch.cat(normals).numpy(), torch.cat(valid).numpy()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geosapiens priors fit", description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", required=True, help="critic cache of the labelled synthetic images")
    p.add_argument("--data", required=True, help="dataset root (SyRIP layout or MINI-RGBD)")
    p.add_argument("--annotation", help="SyRIP annotation file, relative to --data (omit for MINI-RGBD)")
    p.add_argument("--domain", default="synthetic", choices=("all", "real", "synthetic"))
    p.add_argument("--padding", type=float, default=1.25)
    p.add_argument("--min-count", type=int, default=10, help="joints with fewer samples get no prior")
    p.add_argument("--out", required=True, help="priors file to write (JSON)")
    progress_switch(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = both_styles(_parser()).parse_args(argv)
    # The work's imports (torch, the cache) only now: --help answers at once.
    from geosapiens.data.critic_cache import CriticCache
    from geosapiens.data.formats.mini_rgbd import read_mini_rgbd
    from geosapiens.data.formats.syrip import read_syrip
    from geosapiens.models.normal_prior import fit_keypoint_normal_priors, save_normal_priors

    try:
        records = (
            read_syrip(args.data, args.annotation, domain=args.domain)
            if args.annotation
            else read_mini_rgbd(args.data)
        )
        cache = CriticCache(args.cache)
        normals, valid = sample_keypoint_normals(cache, records, args.padding, progress=args.progress)
        critic = json.dumps(cache.manifest["critic"], sort_keys=True)
        priors = fit_keypoint_normal_priors(
            normals,
            valid,
            min_count=args.min_count,
            critic=critic,
            extra={"data": str(args.data), "annotation": args.annotation, "cache": str(args.cache)},
        )
        save_normal_priors(args.out, priors)
    except GeoSapiensError as err:
        print(f"geosapiens priors fit: {err}", file=sys.stderr)
        return 2
    for name, kappa, count in zip(priors.keypoints, priors.kappa, priors.count, strict=True):
        print(f"{name:>15}: kappa {kappa:7.2f} from {count} samples")
    print(f"wrote {Path(args.out)}")
    return 0
