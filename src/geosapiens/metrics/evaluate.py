"""``geosapiens evaluate``: score any COCO-keypoints results file against a COCO-keypoints ground truth.

Reports COCO OKS AP/AR (pycocotools, with the stated ``area`` choice) and PCK. PCK matching follows SyRIP
(one infant per image): each image's ground-truth person is compared with the image's highest-score result;
an image without any result counts every labelled joint as a miss (the output says how many). PCK needs one
ground-truth person per image; with crowded ground truth it is skipped with the reason, AP is still given.

Text output is in percent; ``--json`` prints one JSON object with fractions (``null`` where pycocotools gives
-1, i.e. no ground truth in that area range, or where a value is undefined).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from geosapiens.errors import DataError
from geosapiens.metrics.coco import (
    AP_KEYS,
    AREA_CHOICES,
    AREA_MEANING,
    COCO17_SIGMAS,
    keypoint_stats,
    load_keypoint_gt,
    load_keypoint_results,
)
from geosapiens.metrics.pck import DEFAULT_THRESHOLDS, NORM_KINDS, PCK
from geosapiens.skeleton import COCO17

__all__ = ["evaluate_files", "format_report", "main"]

NORM_MEANING: dict[str, str] = {
    "bbox": "bbox max side",
    "bbox_diag": "bbox diagonal",
    "torso": "GT shoulder midpoint to hip midpoint",
    "head": "GT nose to shoulder midpoint (PCKh)",
    "image": "max(image width, height)",
}
MATCHING = (
    "one GT person per image; the highest-score result per image is scored; "
    "images without a result count as misses"
)


def _json_number(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) or value == -1.0 else float(value)


def _pck(
    gt: dict, results: list[dict], gt_path: str, norm: str, thresholds: tuple[float, ...]
) -> dict[str, Any]:
    """PCK over images with one GT person, against each image's highest-score result."""
    persons: dict[int, list[dict]] = defaultdict(list)
    for ann in gt["annotations"]:
        if not ann["iscrowd"]:
            persons[ann["image_id"]].append(ann)
    crowded = sorted(i for i, anns in persons.items() if len(anns) > 1)
    if crowded:
        return {
            "skipped": f"{len(crowded)} images have more than one GT person (e.g. image {crowded[0]}); "
            "PCK here matches one person per image"
        }
    best: dict[int, dict] = {}
    for res in results:
        if res["image_id"] not in best or res["score"] > best[res["image_id"]]["score"]:
            best[res["image_id"]] = res
    images = {img["id"]: img for img in gt["images"]}
    ids = sorted(persons)
    k = COCO17.num_keypoints
    target = torch.tensor([persons[i][0]["keypoints"] for i in ids], dtype=torch.float64).reshape(-1, k, 3)
    preds = torch.full((len(ids), k, 2), float("nan"), dtype=torch.float64)
    for row, i in enumerate(ids):
        if i in best:
            preds[row] = torch.tensor(best[i]["keypoints"], dtype=torch.float64).reshape(k, 3)[:, :2]
    image_hw = None
    if norm == "image":
        for i in ids:
            if not all(isinstance(images[i].get(key), int | float) for key in ("height", "width")):
                raise DataError(
                    gt_path, "--pck-norm image needs 'width' and 'height' on every image", record=f"image {i}"
                )
        image_hw = torch.tensor([[images[i]["height"], images[i]["width"]] for i in ids], dtype=torch.float64)
    metric = PCK(thresholds=thresholds, norm=norm, keypoint_names=COCO17.names)
    metric.update(
        preds,
        target[..., :2],
        target[..., 2] > 0,
        bbox=torch.tensor([persons[i][0]["bbox"] for i in ids], dtype=torch.float64),
        image_hw=image_hw,
    )
    values = metric.compute()
    return {
        "norm": norm,
        "norm_meaning": NORM_MEANING[norm],
        "matching": MATCHING,
        "thresholds": list(metric.thresholds),
        "values": {f"pck@{t:g}": _json_number(values[f"pck@{t:g}"].item()) for t in metric.thresholds},
        "per_joint": {
            f"pck@{t:g}": {n: _json_number(values[f"pck@{t:g}/{n}"].item()) for n in COCO17.names}
            for t in metric.thresholds
        },
        "images_scored": len(ids),
        "images_without_result": sum(i not in best for i in ids),
        "excluded_samples": int(values["pck_excluded_samples"].item()),
    }


def evaluate_files(
    gt_path: str | Path,
    pred_path: str | Path,
    *,
    area: str = "bbox",
    pck_norm: str = "bbox",
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """Score ``pred_path`` (COCO keypoint results) against ``gt_path``; raise :class:`DataError` on bad files.

    Returns the JSON-ready report (fractions; ``None`` for not applicable).
    """
    gt, gt_source = load_keypoint_gt(gt_path, area=area, num_keypoints=COCO17.num_keypoints)
    results, pred_source = load_keypoint_results(pred_path, gt, num_keypoints=COCO17.num_keypoints)
    stats = keypoint_stats(gt, results, COCO17_SIGMAS)
    return {
        "gt": gt_source,
        "pred": pred_source,
        "num_images": len(gt["images"]),
        "num_gt_persons": sum(not a["iscrowd"] for a in gt["annotations"]),
        "num_results": len(results),
        "coco": {
            "area_used": area,
            "area_meaning": AREA_MEANING[area],
            **{key: _json_number(stats[key]) for key in AP_KEYS},
        },
        "pck": _pck(gt, results, gt_source, pck_norm, tuple(thresholds)),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report (percent)."""
    coco, pck = report["coco"], report["pck"]
    lines = [
        f"ground truth: {report['gt']} ({report['num_images']} images, {report['num_gt_persons']} persons)",
        f"results:      {report['pred']} ({report['num_results']} results)",
        "",
        f"COCO OKS keypoints (pycocotools, COCO-17 sigmas), area = {coco['area_meaning']} "
        f"(--area {coco['area_used']}):",
        "  " + "  ".join(f"{k} {_pct(coco[k])}" for k in AP_KEYS[:5]),
        "  " + "  ".join(f"{k} {_pct(coco[k])}" for k in AP_KEYS[5:]),
        "",
    ]
    if "skipped" in pck:
        lines.append(f"PCK: skipped: {pck['skipped']}")
    else:
        keys = list(pck["values"])
        lines += [
            f"PCK, norm = {pck['norm_meaning']} (--pck-norm {pck['norm']}); {pck['matching']}: "
            f"{pck['images_without_result']} of {pck['images_scored']} images had no result",
        ]
        if pck["excluded_samples"]:
            lines.append(
                f"  {pck['excluded_samples']} images excluded: their ground truth cannot form the norm"
            )
        lines.append("  " + "  ".join(f"{k.upper()} {_pct(pck['values'][k])}" for k in keys))
        lines.append(f"  {'joint':<16}" + "".join(f"{'@' + k.split('@')[1]:>8}" for k in keys))
        for name in COCO17.names:
            lines.append(f"  {name:<16}" + "".join(f"{_pct(pck['per_joint'][k][name]):>8}" for k in keys))
    lines.append("(values in %)")
    return "\n".join(lines)


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
        "--pck-norm", choices=NORM_KINDS, default="bbox", help="PCK normaliser (default: bbox max side)"
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
    args = parser.parse_args(argv)
    if any(not math.isfinite(t) or t < 0 for t in args.thresholds):
        parser.error(f"--thresholds must be finite and >= 0, got {args.thresholds}")
    try:
        report = evaluate_files(
            args.gt, args.pred, area=args.area, pck_norm=args.pck_norm, thresholds=tuple(args.thresholds)
        )
    except DataError as e:
        print(f"geosapiens evaluate: {e}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
