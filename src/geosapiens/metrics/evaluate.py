"""``geosapiens evaluate``: score any COCO-keypoints results file against a COCO-keypoints ground truth.

Reports COCO OKS AP/AR (pycocotools, with the stated ``area`` choice) and PCK. PCK matching follows SyRIP
(one infant per image): each image's ground-truth person is compared with the image's highest-score result;
an image without any result counts every labelled joint as a miss (the output says how many). PCK needs one
ground-truth person per image; with crowded ground truth it is skipped with the reason, AP is still given.

Text output is in percent; ``--json`` prints one JSON object with fractions (``null`` where pycocotools gives
-1, i.e. no ground truth in that area range, or where a value is undefined).

Stated in every report: annotation ids are renumbered 1..N for pycocotools (a GT id 0 is "unmatched" there,
cocoapi PR #331/#332), with the raw pycocotools AP on the file's own ids beside it; exact duplicate results
are kept once (:mod:`.coco`); ground-truth persons without a labelled keypoint are not counted (pycocotools
ignores them). Results are matched to images by ``image_id``, or by file name when every result carries a
``file_name`` or ``--images images.json`` (what ``geosapiens infer`` writes) names them: a results file
numbered for another image set (FiDIP's 700-image file: Test100's id k is its k+200) then scores against the
right images. Results whose keypoints mostly fall outside their image's ground-truth box are counted and
warned about: the usual sign of ids from another numbering.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from geosapiens.errors import DataError
from geosapiens.metrics.coco import (
    AP_KEYS,
    COCO17_SIGMAS,
    keypoint_stats,
    load_keypoint_gt,
    load_keypoint_results,
    raw_ids,
    read_json,
)
from geosapiens.metrics.pck import PCK
from geosapiens.metrics.protocol import AREA_MEANING, DEFAULT_THRESHOLDS
from geosapiens.skeleton import COCO17

__all__ = ["evaluate_files", "format_report"]

NORM_MEANING: dict[str, str] = {
    "bbox": "bbox max side",
    "bbox_diag": "bbox diagonal",
    "torso": "GT shoulder midpoint to hip midpoint",
    "head_neck": "GT nose to shoulder midpoint (head-neck length; not MPII PCKh)",
    "image": "max(image width, height)",
}
MATCHING = (
    "one GT person per image; the highest-score result per image is scored; "
    "images without a result count as misses"
)
RENUMBERING = (
    "annotation ids renumbered 1..N for pycocotools (it treats a GT id 0 as unmatched: cocoapi PR #331/#332)"
)
BOX_GROWTH = 1.25  # a result "agrees" with its image's GT box when most of its keypoints lie in it, grown so
OUTSIDE_FRACTION = 0.5


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


def _by_file_name(
    data: Any, gt: dict, gt_source: str, pred_source: str, images: str | Path | None
) -> tuple[Any, str]:
    """Results re-keyed to the ground truth's image ids by file name (base name); how they were matched."""
    if not isinstance(data, list):
        return data, "image_id"
    if images is not None:
        doc = read_json(Path(images))
        listed = doc.get("images") if isinstance(doc, dict) else doc
        if not isinstance(listed, list) or not all(
            isinstance(i, dict) and "id" in i and "file_name" in i for i in listed
        ):
            raise DataError(images, "not a COCO 'images' list: every entry needs 'id' and 'file_name'")
        names = {i["id"]: Path(i["file_name"]).name for i in listed}
        how = f"file name, through {images}"
    elif data and all(isinstance(r, dict) and isinstance(r.get("file_name"), str) for r in data):
        names, how = None, "file name, the results' own"
    else:
        return data, "image_id"
    ids = {Path(i["file_name"]).name: i["id"] for i in gt["images"] if "file_name" in i}
    if len(ids) != len(gt["images"]):
        raise DataError(gt_source, "images without a 'file_name': results cannot be matched by file name")
    out = []
    for n, res in enumerate(data):
        if not isinstance(res, dict):
            raise DataError(pred_source, "result is not an object", record=f"results[{n}]")
        name = Path(res["file_name"]).name if names is None else names.get(res.get("image_id"))
        if name is None:
            raise DataError(images, f"image_id {res.get('image_id')!r} of results[{n}] is not listed")
        if name not in ids:
            raise DataError(pred_source, f"{name} is not an image of {gt_source}", record=f"results[{n}]")
        out.append({**res, "image_id": ids[name]})
    return out, how


def _box_disagreements(gt: dict, results: list[dict]) -> int:
    """Results with more than half of their keypoints outside their image's GT box (grown by 25%)."""
    boxes = {}
    for ann in gt["annotations"]:
        if not ann["iscrowd"]:
            boxes.setdefault(ann["image_id"], []).append(ann["bbox"])
    count = 0
    for res in results:
        kp = torch.tensor(res["keypoints"], dtype=torch.float64).reshape(-1, 3)[:, :2]
        inside = torch.zeros(len(kp), dtype=torch.bool)
        for x, y, w, h in boxes.get(res["image_id"], []):
            cx, cy, hw, hh = x + w / 2, y + h / 2, BOX_GROWTH * w / 2, BOX_GROWTH * h / 2
            inside |= ((kp[:, 0] - cx).abs() <= hw) & ((kp[:, 1] - cy).abs() <= hh)
        count += int(inside.double().mean() < OUTSIDE_FRACTION)
    return count


def evaluate_files(
    gt_path: str | Path,
    pred_path: str | Path,
    *,
    area: str = "bbox",
    pck_norm: str = "bbox",
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
    images: str | Path | None = None,
) -> dict[str, Any]:
    """Score ``pred_path`` (COCO keypoint results) against ``gt_path``; raise :class:`DataError` on bad files.

    ``images``: a COCO ``images`` file naming the results' image ids (``geosapiens infer``'s
    ``images.json``): results are then matched to the ground truth by file name.

    Returns the JSON-ready report (fractions; ``None`` for not applicable).
    """
    gt, gt_source = load_keypoint_gt(gt_path, area=area, num_keypoints=COCO17.num_keypoints)
    pred_source = str(pred_path)
    data, matched_by = _by_file_name(read_json(Path(pred_path)), gt, gt_source, pred_source, images)
    results, _ = load_keypoint_results(data, gt, num_keypoints=COCO17.num_keypoints, source=pred_source)
    stats = keypoint_stats(gt, results, COCO17_SIGMAS)
    raw_gt = raw_ids(gt)
    raw = keypoint_stats(raw_gt, results, COCO17_SIGMAS) if raw_gt is not None else None
    persons = [a for a in gt["annotations"] if not a["iscrowd"]]
    return {
        "gt": gt_source,
        "pred": pred_source,
        "num_images": len(gt["images"]),
        "num_gt_persons": sum(a["num_keypoints"] > 0 for a in persons),
        "num_gt_without_keypoints": sum(a["num_keypoints"] == 0 for a in persons),
        "num_results": len(results),
        "num_duplicates_dropped": len(data) - len(results),
        "matched_by": matched_by,
        "results_outside_their_gt_box": _box_disagreements(gt, results),
        "coco": {
            "area_used": area,
            "area_meaning": AREA_MEANING[area],
            "annotation_ids": RENUMBERING,
            **{key: _json_number(stats[key]) for key in AP_KEYS},
            "raw_pycocotools": None if raw is None else {k: _json_number(raw[k]) for k in AP_KEYS},
        },
        "pck": _pck(gt, results, gt_source, pck_norm, tuple(thresholds)),
    }


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report (percent)."""
    coco, pck = report["coco"], report["pck"]
    unlabelled = report["num_gt_without_keypoints"]
    dropped = report["num_duplicates_dropped"]
    raw = coco["raw_pycocotools"]
    lines = [
        f"ground truth: {report['gt']} ({report['num_images']} images, {report['num_gt_persons']} persons"
        + (f"; {unlabelled} more without a labelled keypoint, not scored" if unlabelled else "")
        + ")",
        f"results:      {report['pred']} ({report['num_results']} results"
        + (f"; {dropped} exact duplicates kept once" if dropped else "")
        + f"; matched by {report['matched_by']})",
    ]
    if report["results_outside_their_gt_box"]:
        lines.append(
            f"warning: {report['results_outside_their_gt_box']} results have most keypoints outside their "
            "image's GT box: image ids of another numbering? (--images images.json matches by file name)"
        )
    lines += [
        "",
        f"COCO OKS keypoints (pycocotools, COCO-17 sigmas), area = {coco['area_meaning']} "
        f"(--area {coco['area_used']}):",
        "  " + "  ".join(f"{k} {_pct(coco[k])}" for k in AP_KEYS[:5]),
        "  " + "  ".join(f"{k} {_pct(coco[k])}" for k in AP_KEYS[5:]),
        f"  {coco['annotation_ids']}; raw pycocotools on the file's ids: "
        + (f"AP {_pct(raw['AP'])}" if raw else "n/a (ids not unique integers)"),
        "",
    ]
    if "skipped" in pck:
        lines.append(f"PCK: skipped: {pck['skipped']}")
    else:
        keys = list(pck["values"])
        lines += [
            f"PCK, norm = {pck['norm_meaning']} (--pck_norm {pck['norm']}); {pck['matching']}: "
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
