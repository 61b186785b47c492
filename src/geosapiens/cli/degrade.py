"""``geosapiens critics degrade``: a copy of a critic cache with every map corrupted by a known amount.

The sweep of critic error: adapt with the oracle's maps degraded (blur, normal and depth noise, no
silhouette) to see how geometry's gain falls as the critic gets worse
(:mod:`~geosapiens.data.degraded_critic`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geosapiens.cli.style import both_styles
from geosapiens.errors import GeoSapiensError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geosapiens critics degrade",
        description="Copy a critic cache with every image's maps degraded the same way on every run (drawn "
        "from --seed and the image): a critic that errs by a known amount.",
    )
    p.add_argument("--cache", required=True, type=Path, help="the critic cache to degrade (unchanged)")
    p.add_argument("--out", required=True, type=Path, help="new cache directory")
    p.add_argument(
        "--degrade",
        required=True,
        help="blur=PX (crop pixels), normals=DEG, depth=STD (normalised depth), nomask; comma-separated",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = both_styles(_parser()).parse_args(argv)
    from geosapiens.data.degraded_critic import CriticDegradation, degrade_cache

    try:
        degradation = CriticDegradation.parse(args.degrade)
        stats = degrade_cache(args.cache, args.out, degradation, args.seed)
    except (GeoSapiensError, ValueError) as err:
        print(f"geosapiens critics degrade: error: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: {stats.total} images of {args.cache}, degraded ({degradation}, seed {args.seed})")
    return 0
