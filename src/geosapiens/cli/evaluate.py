"""``geosapiens evaluate``, the command: options, then :func:`~.evaluate.evaluate_files` and its report.

Apart from :mod:`.evaluate` (torch, pycocotools) so that ``--help`` answers at once. Exit codes: 0 scored,
2 a file that is missing or not COCO keypoints (one line naming it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from geosapiens.cli.style import both_styles
from geosapiens.errors import DataError
from geosapiens.metrics.protocol import AREA_CHOICES, DEFAULT_THRESHOLDS, NORM_KINDS

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geosapiens evaluate",
        description="Score a COCO-keypoints results file (ours or another method's) against COCO-keypoints "
        "ground truth: COCO OKS AP/AR (pycocotools) and PCK.",
    )
    p.add_argument("--gt", required=True, type=Path, help="COCO-keypoints ground-truth JSON")
    p.add_argument("--pred", required=True, type=Path, help="COCO keypoint results JSON (a list of results)")
    p.add_argument(
        "--area",
        choices=AREA_CHOICES,
        default="bbox",
        help="OKS scale: 'bbox' = GT bbox w*h (default; SyRIP's area fields are unreliable), "
        "'file' = the GT file's area field",
    )
    p.add_argument(
        "--pck_norm",
        choices=NORM_KINDS,
        default="bbox",
        help="PCK normaliser (default: bbox max side; head_neck: nose to shoulder midpoint, not MPII PCKh)",
    )
    p.add_argument(
        "--images",
        type=Path,
        default=None,
        help="COCO images file naming the results' image ids (geosapiens infer's images.json): match results "
        "to the ground truth by file name",
    )
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=list(DEFAULT_THRESHOLDS),
        help="PCK thresholds as fractions of the normaliser (default: 0.05 0.1 0.2)",
    )
    p.add_argument(
        "--json", action="store_true", help="print one JSON object (fractions) instead of the text report"
    )
    return p


def main(argv: list[str]) -> int:
    parser = _parser()
    args = both_styles(parser).parse_args(argv)
    from geosapiens.metrics.evaluate import evaluate_files, format_report  # torch, pycocotools: now

    if any(not math.isfinite(t) or t < 0 for t in args.thresholds):
        parser.error(f"--thresholds must be finite and >= 0, got {args.thresholds}")
    try:
        report = evaluate_files(
            args.gt,
            args.pred,
            area=args.area,
            pck_norm=args.pck_norm,
            thresholds=tuple(args.thresholds),
            images=args.images,
        )
    except DataError as e:
        print(f"geosapiens evaluate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
