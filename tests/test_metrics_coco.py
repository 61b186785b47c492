"""COCO OKS AP on the real SyRIP sample: self-scoring, agreement with pycocotools called directly, the area
choice, robustness to extra fields and negative origins, clear errors, and the accumulating Metric."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from geosapiens.errors import DataError
from geosapiens.metrics.coco import AP_KEYS, COCOKeypointAP, coco_keypoint_ap, load_keypoint_gt

GT_FILE = "annotations/200R/person_keypoints_train_infant.json"


@pytest.fixture(scope="module")
def gt_path(syrip_sample: Path) -> Path:
    return syrip_sample / GT_FILE


@pytest.fixture(scope="module")
def gt(gt_path: Path) -> dict:
    return json.loads(gt_path.read_text())


def results_from_gt(gt: dict, shift: tuple[float, float] = (0.0, 0.0), score: float = 1.0) -> list[dict]:
    """One result per GT person, every keypoint moved by ``shift`` x the bbox max side."""
    out = []
    for ann in gt["annotations"]:
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        side = max(ann["bbox"][2], ann["bbox"][3])
        kp[:, 0] += shift[0] * side
        kp[:, 1] += shift[1] * side
        out.append(
            {"image_id": ann["image_id"], "category_id": 1, "keypoints": kp.ravel().tolist(), "score": score}
        )
    return out


def pycocotools_directly(gt: dict, results: list[dict]) -> list[float]:
    """The reference: pycocotools exactly as its README uses it, on the dict as given."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def test_sample_scored_against_itself_is_perfect(gt_path: Path, gt: dict) -> None:
    for area in ("bbox", "file"):
        out = coco_keypoint_ap(gt_path, results_from_gt(gt), area=area)
        assert out["AP"] == 1.0 and out["AR"] == 1.0 and out["AP50"] == 1.0
        assert out["area_used"] == area and out["num_results"] == 32


def test_perturbation_matches_pycocotools_called_directly(gt_path: Path, gt: dict) -> None:
    results = results_from_gt(gt, shift=(0.03, -0.02))
    ours_file = coco_keypoint_ap(gt_path, results, area="file")
    assert [ours_file[k] for k in AP_KEYS] == pytest.approx(pycocotools_directly(gt, results), abs=1e-12)
    gt_bbox_area = copy.deepcopy(gt)
    for ann in gt_bbox_area["annotations"]:
        ann["area"] = ann["bbox"][2] * ann["bbox"][3]
    ours_bbox = coco_keypoint_ap(gt_path, results, area="bbox")
    assert [ours_bbox[k] for k in AP_KEYS] == pytest.approx(
        pycocotools_directly(gt_bbox_area, results), abs=1e-12
    )
    assert 0.5 < ours_bbox["AP"] < 0.95  # a real, non-saturated value


def test_area_choice_changes_the_result_as_expected(gt_path: Path, gt: dict) -> None:
    """The sample's area field is ~0.05x bbox w*h, so the file's area makes OKS much stricter."""
    ratios = [a["area"] / (a["bbox"][2] * a["bbox"][3]) for a in gt["annotations"]]
    assert np.median(ratios) == pytest.approx(0.052, abs=0.01)
    results = results_from_gt(gt, shift=(0.03, -0.02))
    by_bbox = coco_keypoint_ap(gt_path, results, area="bbox")
    by_file = coco_keypoint_ap(gt_path, results, area="file")
    assert by_file["AP"] < by_bbox["AP"] - 0.3
    assert (by_bbox["area_used"], by_file["area_used"]) == ("bbox", "file")


def test_negative_origins_and_extra_fields_do_not_matter(gt: dict) -> None:
    results = results_from_gt(gt, shift=(0.03, -0.02))
    reference = coco_keypoint_ap(gt, results)
    moved = copy.deepcopy(gt)
    for ann in moved["annotations"]:
        ann["bbox"][0] -= 5000.0
        ann["bbox"][1] -= 5000.0
        ann["keypoints"] = [v - 5000.0 if i % 3 < 2 else v for i, v in enumerate(ann["keypoints"])]
        ann["bbox_head"] = [1, 2, 3]
        ann["something_new"] = {"nested": True}
        del ann["num_keypoints"], ann["iscrowd"], ann["id"]
    moved_results = [
        dict(r, keypoints=[v - 5000.0 if i % 3 < 2 else v for i, v in enumerate(r["keypoints"])])
        for r in results
    ]
    assert min(a["bbox"][0] for a in moved["annotations"]) < 0
    out = coco_keypoint_ap(moved, moved_results)
    assert [out[k] for k in AP_KEYS] == pytest.approx([reference[k] for k in AP_KEYS], abs=1e-9)


def test_annotation_id_zero_is_not_scored_as_a_false_positive(gt: dict) -> None:
    """pycocotools reads a matched GT id of 0 as "unmatched"; the clean copy renumbers ids to avoid it."""
    with_zero = copy.deepcopy(gt)
    with_zero["annotations"][0]["id"] = 0
    results = results_from_gt(gt)
    assert pycocotools_directly(with_zero, results)[0] < 0.99  # the raw bug: a perfect result loses AP
    assert coco_keypoint_ap(with_zero, results)["AP"] == 1.0


def test_no_results_scores_zero_and_inputs_are_not_mutated(gt: dict) -> None:
    assert coco_keypoint_ap(gt, [])["AP"] == 0.0
    results = results_from_gt(gt)
    before = copy.deepcopy((gt, results))
    coco_keypoint_ap(gt, results)
    assert (gt, results) == before


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda g, r: g.pop("annotations"), "missing or non-list"),
        (lambda g, r: g["annotations"][0].__setitem__("keypoints", [0.0] * 15), "must be 51 finite numbers"),
        (lambda g, r: r[0].__setitem__("keypoints", [0.0] * 50), "must be 51 finite numbers"),
        (lambda g, r: r[0].__setitem__("image_id", 987654), "image_id 987654 is not in the ground truth"),
        (lambda g, r: r[0].__setitem__("category_id", 7), "category_id 7 is not in the ground truth"),
        (lambda g, r: r[0].pop("score"), r"missing \['score'\]"),
    ],
)
def test_bad_files_raise_data_error_naming_the_problem(gt: dict, mutate, message: str) -> None:
    g, r = copy.deepcopy(gt), results_from_gt(gt)
    mutate(g, r)
    with pytest.raises(DataError, match=message):
        coco_keypoint_ap(g, r)


def test_data_error_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "not_coco.json"
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not_coco.json"):
        coco_keypoint_ap(bad, [])
    with pytest.raises(DataError, match="area='file' needs a positive 'area'"):
        load_keypoint_gt(
            {
                "images": [{"id": 1}],
                "categories": [{"id": 1}],
                "annotations": [
                    {"image_id": 1, "category_id": 1, "keypoints": [1.0, 1.0, 2] * 17, "bbox": [0, 0, 5, 5]}
                ],
            },
            area="file",
        )


def _as_tensors(results: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.tensor([r["image_id"] for r in results])
    kp = torch.tensor([r["keypoints"] for r in results], dtype=torch.float64).reshape(len(results), 17, 3)
    kp = kp[..., :2]
    return ids, kp, torch.tensor([r["score"] for r in results], dtype=torch.float64)


def test_metric_accumulates_merges_and_drops_sampler_duplicates(gt_path: Path, gt: dict) -> None:
    results = results_from_gt(gt, shift=(0.03, -0.02))
    expected = coco_keypoint_ap(gt_path, results, area="file")
    ids, kp, scores = _as_tensors(results)
    rank0 = COCOKeypointAP(gt_path, area="file")
    rank1 = COCOKeypointAP(gt_path, area="file")
    rank0.update(ids[:20], kp[:20], scores[:20])
    rank1.update(ids[20:], kp[20:], scores[20:])
    rank1.update(ids[:2], kp[:2], scores[:2])  # DistributedSampler padding repeats samples on the last rank
    rank0.merge_state(rank1)
    out = rank0.compute()
    assert out.keys() == set(AP_KEYS)
    assert [out[k].item() for k in AP_KEYS] == pytest.approx([expected[k] for k in AP_KEYS], abs=1e-9)
    assert rank0.area == "file" and rank0.full_state_update is False


def test_metric_rejects_bad_shapes(gt: dict) -> None:
    metric = COCOKeypointAP(gt)
    with pytest.raises(ValueError, match="keypoints"):
        metric.update(torch.tensor([33]), torch.zeros(1, 16, 2), torch.ones(1))
