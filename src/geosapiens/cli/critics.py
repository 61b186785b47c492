"""``geosapiens critics cache``, the command: options, then :func:`~.critic_cache.build_cache` (resumable).

Apart from :mod:`.critic_cache` (the library, torch at import) so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geosapiens.cli.style import both_styles, progress_switch
from geosapiens.errors import DataError, GeoSapiensError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geosapiens critics cache",
        description="Precompute a frozen critic's depth/normal maps for every image of a dataset, in the "
        "canonical crop frame, for CriticCache. Re-running the same command resumes.",
    )
    p.add_argument(
        "--critic",
        required=True,
        help="oracle | small:PATH | sapiens:DEPTH.pth,NORMAL.pth | torchscript:PATH[,PATH]",
    )
    p.add_argument("--data", required=True, type=Path, help="dataset root")
    p.add_argument("--annotation", help="SyRIP-format annotation file (relative to --data or absolute)")
    p.add_argument("--format", choices=("syrip", "mini-rgbd"), default="syrip")
    p.add_argument("--sequences", nargs="*", help="MINI-RGBD sequences (default: all found)")
    p.add_argument(
        "--domain", choices=("all", "real", "synthetic"), default="all", help="SyRIP images to keep"
    )
    p.add_argument("--out", required=True, type=Path, help="cache directory")
    p.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        default=(1024, 1024),
        metavar=("H", "W"),
        help="canonical crop size = the training input size (default 1024 1024)",
    )
    p.add_argument("--padding", type=float, default=1.25, help="box padding of the canonical crop")
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="store maps at input size // stride (default: the heatmaps' stride, their resolution)",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers reading images")
    p.add_argument("--device", default="auto", help="auto (default: cuda if there is one), cpu, cuda:1...")
    progress_switch(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = both_styles(_parser())
    args = parser.parse_args(argv)
    import torch  # the critics and the cache: imported when the command runs, so --help is instant

    from geosapiens.data.critic_cache import DEFAULT_STRIDE, build_cache, critic_identity, load_critic

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    intrinsics = None
    try:
        identity = critic_identity(args.critic)
        if args.format == "mini-rgbd":
            from geosapiens.data.formats.mini_rgbd import MINI_RGBD_INTRINSICS, read_mini_rgbd

            records = read_mini_rgbd(args.data, args.sequences)
            intrinsics = MINI_RGBD_INTRINSICS
            annotation = None
        else:
            if not args.annotation:
                parser.error("--annotation is required with --format syrip")
            from geosapiens.data.formats.syrip import read_syrip

            records = read_syrip(args.data, args.annotation, domain=args.domain)
            annotation = str(Path(args.annotation))
        if not records:
            raise DataError(args.data, "no records found")
        critic = load_critic(args.critic, intrinsics)
        stats = build_cache(
            records,
            critic,
            args.out,
            tuple(args.input_size),
            identity,
            {"root": str(args.data), "annotation": annotation, "format": args.format},
            padding=args.padding,
            stride=args.stride or DEFAULT_STRIDE,
            batch_size=args.batch_size,
            num_workers=args.workers,
            device=device,
            progress=args.progress,
        )
    except (GeoSapiensError, ValueError) as err:
        print(f"geosapiens critics cache: error: {err}", file=sys.stderr)
        return 1
    print(f"{args.out}: {stats.total} images ({stats.written} computed, {stats.skipped} already cached)")
    return 0
