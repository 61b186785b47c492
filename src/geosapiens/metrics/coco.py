"""COCO OKS keypoint AP/AR through pycocotools' ``COCOeval`` (never re-implemented), with the ``area`` choice.

OKS scales each keypoint error by the ground-truth ``area``. SyRIP's ``area`` fields are inconsistent across
its files (``reference/datasets.md`` §0.4: ``train200`` is ~0.05x bbox w*h, ``validate500`` ~15x), so the
scale is a choice that is always stated in the output:

- ``area="bbox"`` (default): ``area := bbox w * h`` for every ground-truth person;
- ``area="file"``: the ``area`` stored in the file.

Ground truth is read into a clean minimal copy (ids, keypoints, bbox, area, iscrowd, num_keypoints), so
extra fields (SyRIP's ``bbox_head``, ``scores``, ``track_id``...) and negative box origins do not matter;
results are checked against it and every problem is a :class:`~geosapiens.errors.DataError` naming the file.
Annotation ids are renumbered 1..N because pycocotools' ``evaluateImg`` stores matched GT ids in arrays where
0 means "unmatched": a GT annotation with id 0 (SyRIP's ``validate100`` and ``validate500`` both have one)
turns its correct detection into a false positive (cocoapi PR #331/#332). On the released FiDIP predictions
for Test100 that bug gives AP 91.0 (``datasets.md`` §2.6); without it, AP 92.8 (AP50 98.5, AR 94.1).
``geosapiens evaluate`` says so and prints the raw pycocotools AP (the file's own ids) beside it.

One rule for duplicates, in :func:`load_keypoint_results` and so everywhere: exact duplicate results (same
image, category, keypoints and score: a ``DistributedSampler``'s padding, a file concatenated twice) are kept
once; pycocotools would count every copy after the first as a false positive. A ground-truth ``category_id``
that is not in ``categories`` is an error (pycocotools would drop that person silently).
pycocotools' progress prints are captured and dropped.

Note:
    N: detections, K: keypoints (17 for COCO-17; set by ``len(sigmas)``).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import numbers
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from geosapiens.errors import DataError
from geosapiens.metrics.protocol import AREA_CHOICES
from geosapiens.skeleton import COCO17

__all__ = [
    "AP_KEYS",
    "AREA_CHOICES",
    "COCO17_SIGMAS",
    "load_keypoint_gt",
    "load_keypoint_results",
    "raw_ids",
    "keypoint_stats",
    "coco_keypoint_ap",
    "COCOKeypointAP",
]

AP_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
COCO17_SIGMAS: tuple[float, ...] = COCO17.sigmas  # type: ignore[assignment]

GT_SOURCE = "<ground-truth dict>"
RESULTS_SOURCE = "<results list>"


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(path, "file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"not readable JSON ({e})") from None


def _finite_numbers(values: Any, n: int) -> bool:
    return (
        isinstance(values, list)
        and len(values) == n
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    )


def load_keypoint_gt(
    gt: str | Path | dict, *, area: str = "bbox", num_keypoints: int = COCO17.num_keypoints
) -> tuple[dict, str]:
    """Read and check a COCO-keypoints ground truth; return ``(clean dict, source name)``.

    The clean dict keeps, per image, ``id`` (and ``width``/``height``/``file_name`` when present), and per
    annotation ``id`` (renumbered 1..N), ``source_id`` (the file's id), ``image_id``, ``category_id``,
    ``keypoints``, ``num_keypoints`` (recounted from v > 0), ``bbox``, ``iscrowd`` (0 when absent) and
    ``area`` (per the ``area`` choice).
    """
    if area not in AREA_CHOICES:
        raise ValueError(f"area must be one of {AREA_CHOICES}, got {area!r}")
    source = GT_SOURCE if isinstance(gt, dict) else str(gt)
    data = gt if isinstance(gt, dict) else read_json(Path(gt))
    if not isinstance(data, dict):
        raise DataError(source, "not COCO ground truth: the top level must be an object")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise DataError(source, f"not COCO ground truth: missing or non-list {missing}")

    images = []
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int):
            raise DataError(source, "image without an integer 'id'", record=f"images[{i}]")
        images.append({k: img[k] for k in ("id", "width", "height", "file_name") if k in img})
    image_ids = {img["id"] for img in images}
    categories = [dict(c) for c in data["categories"]]
    if not all(isinstance(c.get("id"), int) for c in categories):
        raise DataError(source, "every category needs an integer 'id'")
    category_ids = {c["id"] for c in categories}

    annotations = []
    for i, ann in enumerate(data["annotations"]):
        record = f"annotations[{i}] (id {ann.get('id')})" if isinstance(ann, dict) else f"annotations[{i}]"
        if not isinstance(ann, dict):
            raise DataError(source, "annotation is not an object", record=record)
        for key in ("image_id", "category_id", "keypoints", "bbox"):
            if key not in ann:
                raise DataError(source, f"annotation has no '{key}'", record=record)
        if not _finite_numbers(ann["keypoints"], 3 * num_keypoints):
            n = len(ann["keypoints"]) if isinstance(ann["keypoints"], list) else "?"
            raise DataError(
                source,
                f"'keypoints' must be {3 * num_keypoints} finite numbers ({num_keypoints} x [x, y, v]), "
                f"got {n}",
                record=record,
            )
        if not _finite_numbers(ann["bbox"], 4) or ann["bbox"][2] <= 0 or ann["bbox"][3] <= 0:
            raise DataError(
                source, f"'bbox' must be [x, y, w, h] with w, h > 0, got {ann['bbox']}", record=record
            )
        if ann["image_id"] not in image_ids:
            raise DataError(source, f"image_id {ann['image_id']} is not in 'images'", record=record)
        if ann["category_id"] not in category_ids:
            raise DataError(
                source,
                f"category_id {ann['category_id']!r} is not in 'categories' (ids "
                f"{sorted(category_ids)}): pycocotools would drop this person",
                record=record,
            )
        if area == "file":
            if not _finite_numbers([ann.get("area")], 1) or ann["area"] <= 0:
                raise DataError(
                    source, f"area='file' needs a positive 'area', got {ann.get('area')!r}", record=record
                )
            area_value = float(ann["area"])
        else:
            area_value = float(ann["bbox"][2]) * float(ann["bbox"][3])
        annotations.append(
            {
                "id": i + 1,
                "source_id": ann.get("id"),
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "keypoints": [float(v) for v in ann["keypoints"]],
                "num_keypoints": int(sum(v > 0 for v in ann["keypoints"][2::3])),
                "bbox": [float(v) for v in ann["bbox"]],
                "area": area_value,
                "iscrowd": int(ann.get("iscrowd", 0) or 0),
            }
        )
    return {"images": images, "annotations": annotations, "categories": categories}, source


def load_keypoint_results(
    results: str | Path | Sequence[dict],
    gt: dict,
    *,
    num_keypoints: int = COCO17.num_keypoints,
    source: str | None = None,
) -> tuple[list[dict], str]:
    """Read and check COCO keypoint results against a clean ground truth (:func:`load_keypoint_gt`).

    Returns ``(clean results, source name)``; each clean result holds only ``image_id``, ``category_id``,
    ``keypoints`` and ``score`` (so pycocotools takes its keypoint path, and the caller's dicts stay
    untouched). Exact duplicates are kept once (module docstring).
    """
    source = source or (str(results) if isinstance(results, str | Path) else RESULTS_SOURCE)
    data = read_json(Path(results)) if isinstance(results, str | Path) else results
    if not isinstance(data, list):
        raise DataError(source, "not COCO keypoint results: the top level must be a list of objects")
    image_ids = {img["id"] for img in gt["images"]}
    category_ids = {c["id"] for c in gt["categories"]}
    clean, seen = [], set()
    for i, res in enumerate(data):
        record = f"results[{i}]"
        if not isinstance(res, dict):
            raise DataError(source, "result is not an object", record=record)
        missing = [k for k in ("image_id", "category_id", "keypoints", "score") if k not in res]
        if missing:
            raise DataError(source, f"not a COCO keypoint result: missing {missing}", record=record)
        if not _finite_numbers(res["keypoints"], 3 * num_keypoints):
            n = len(res["keypoints"]) if isinstance(res["keypoints"], list) else "?"
            raise DataError(
                source,
                f"'keypoints' must be {3 * num_keypoints} finite numbers ({num_keypoints} x [x, y, score]), "
                f"got {n}",
                record=record,
            )
        if not _finite_numbers([res["score"]], 1):
            raise DataError(source, f"'score' must be a finite number, got {res['score']!r}", record=record)
        if res["image_id"] not in image_ids:
            raise DataError(source, f"image_id {res['image_id']!r} is not in the ground truth", record=record)
        if res["category_id"] not in category_ids:
            raise DataError(
                source, f"category_id {res['category_id']!r} is not in the ground truth", record=record
            )
        result = {
            "image_id": res["image_id"],
            "category_id": res["category_id"],
            "keypoints": [float(v) for v in res["keypoints"]],
            "score": float(res["score"]),
        }
        key = (result["image_id"], result["category_id"], result["score"], tuple(result["keypoints"]))
        if key not in seen:
            seen.add(key)
            clean.append(result)
    return clean, source


def raw_ids(gt: dict) -> dict | None:
    """``gt`` (clean) with the file's own annotation ids, as raw pycocotools would see them; None when they
    are not unique integers (pycocotools could not index them at all)."""
    ids = [a["source_id"] for a in gt["annotations"]]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids) or len(set(ids)) != len(ids):
        return None
    return {**gt, "annotations": [{**a, "id": a["source_id"]} for a in gt["annotations"]]}


def keypoint_stats(gt: dict, results: list[dict], sigmas: Sequence[float]) -> dict[str, float]:
    """COCOeval (keypoints) on already checked ground truth and results (:func:`load_keypoint_gt`,
    :func:`load_keypoint_results`): ``{AP_KEYS: value}``. pycocotools' prints are dropped."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes([dict(r) for r in results])
        else:  # loadRes cannot take an empty list; an empty detection set scores 0
            coco_dt = COCO()
            coco_dt.dataset = {"images": gt["images"], "categories": gt["categories"], "annotations": []}
            coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {k: float(v) for k, v in zip(AP_KEYS, evaluator.stats, strict=True)}


def coco_keypoint_ap(
    gt: str | Path | dict,
    results: str | Path | Sequence[dict],
    *,
    area: str = "bbox",
    sigmas: Sequence[float] = COCO17_SIGMAS,
) -> dict[str, Any]:
    """COCO OKS AP/AR of keypoint ``results`` against ``gt``.

    Args:
        gt: COCO-keypoints ground truth (path or dict).
        results: COCO keypoint results (path or list of ``{image_id, category_id, keypoints, score}``).
        area: ``"bbox"`` (area := bbox w*h, default) or ``"file"`` (as stored); see the module docstring.
        sigmas: per-keypoint OKS sigmas (COCO-17 by default); their number fixes K.

    Returns:
        ``AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl`` as fractions (pycocotools' ``-1`` where a
        range holds no ground truth), ``area_used`` and ``num_results``.
    """
    clean_gt, _ = load_keypoint_gt(gt, area=area, num_keypoints=len(sigmas))
    clean_results, _ = load_keypoint_results(results, clean_gt, num_keypoints=len(sigmas))
    out: dict[str, Any] = dict(keypoint_stats(clean_gt, clean_results, sigmas))
    out["area_used"] = area
    out["num_results"] = len(clean_results)
    return out


class COCOKeypointAP(Metric):
    """COCO OKS AP/AR over accumulated detections, against a ground truth fixed at construction.

    States are ``cat`` lists of image ids ``(N,)``, keypoints ``(N, K, 3)`` (x, y, keypoint score) and
    instance scores ``(N,)``, so DDP gathers every rank's detections. Exact duplicate detections (same image,
    keypoints and score, as produced by ``DistributedSampler`` padding) are kept once, the rule of
    :func:`load_keypoint_results` (and of ``geosapiens evaluate``). ``compute()`` returns
    the :data:`AP_KEYS` as tensors; the OKS scale used is :attr:`area` (``"bbox"`` or ``"file"``).

    Args:
        gt: COCO-keypoints ground truth (path or dict); checked once here.
        area: ``"bbox"`` or ``"file"``, see :func:`coco_keypoint_ap`.
        sigmas: per-keypoint OKS sigmas.
        category_id: category of every detection.
        kwargs: :class:`torchmetrics.Metric` keyword arguments.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    image_ids: list[Tensor]
    keypoints: list[Tensor]
    scores: list[Tensor]

    def __init__(
        self,
        gt: str | Path | dict,
        *,
        area: str = "bbox",
        sigmas: Sequence[float] = COCO17_SIGMAS,
        category_id: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.area = area
        self.sigmas = tuple(float(s) for s in sigmas)
        self.category_id = category_id
        self._gt, self._gt_source = load_keypoint_gt(gt, area=area, num_keypoints=len(self.sigmas))
        if category_id not in {c["id"] for c in self._gt["categories"]}:
            raise ValueError(f"COCOKeypointAP: category_id {category_id} is not in {self._gt_source}")
        self.add_state("image_ids", [], dist_reduce_fx="cat")
        self.add_state("keypoints", [], dist_reduce_fx="cat")
        self.add_state("scores", [], dist_reduce_fx="cat")

    def update(
        self, image_ids: Tensor, keypoints: Tensor, scores: Tensor, keypoint_scores: Tensor | None = None
    ) -> None:
        """Add detections: ``image_ids`` ``(N,)``, ``keypoints`` ``(N, K, 2)`` image px, ``scores`` ``(N,)``,
        optional ``keypoint_scores`` ``(N, K)`` (1 when absent; COCOeval does not use them)."""
        n, k = keypoints.shape[:2]
        if keypoints.shape != (n, len(self.sigmas), 2) or image_ids.shape != (n,) or scores.shape != (n,):
            raise ValueError(
                f"COCOKeypointAP: expected image_ids (N,), keypoints (N, {len(self.sigmas)}, 2), "
                f"scores (N,); got {tuple(image_ids.shape)}, {tuple(keypoints.shape)}, {tuple(scores.shape)}"
            )
        if keypoint_scores is None:
            keypoint_scores = torch.ones(n, k, dtype=keypoints.dtype, device=keypoints.device)
        self.image_ids.append(image_ids.long())
        self.keypoints.append(torch.cat([keypoints, keypoint_scores[..., None].to(keypoints.dtype)], dim=-1))
        self.scores.append(scores.to(keypoints.dtype))

    def compute(self) -> dict[str, Tensor]:
        results: list[dict] = []
        if len(self.image_ids):
            ids = dim_zero_cat(self.image_ids).tolist()
            kpts = dim_zero_cat(self.keypoints).reshape(len(ids), -1).tolist()
            scores = dim_zero_cat(self.scores).tolist()
            results = [
                {"image_id": i, "category_id": self.category_id, "keypoints": kp, "score": s}
                for i, kp, s in zip(ids, kpts, scores, strict=True)
            ]
        clean, _ = load_keypoint_results(results, self._gt, num_keypoints=len(self.sigmas))
        stats = keypoint_stats(self._gt, clean, self.sigmas)
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in stats.items()}
