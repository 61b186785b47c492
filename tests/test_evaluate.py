"""``geosapiens evaluate`` end to end on the real SyRIP sample: numbers, matching rules, JSON, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geosapiens.cli.evaluate import main
from geosapiens.cli.main import main as cli_main
from geosapiens.metrics.coco import coco_keypoint_ap
from geosapiens.metrics.evaluate import evaluate_files

GT_FILE = "annotations/200R/person_keypoints_train_infant.json"


@pytest.fixture(scope="module")
def gt_path(syrip_sample: Path) -> Path:
    return syrip_sample / GT_FILE


@pytest.fixture(scope="module")
def case(gt_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Results made from the GT: every keypoint moved by 0.07 x bbox max side (wrong at PCK@0.05, right at
    0.1 and 0.2), the first image left without a result (all its joints are misses), and a far-off decoy
    with a lower score on the second image (ignored: the highest-score result is scored)."""
    gt = json.loads(gt_path.read_text())
    anns = gt["annotations"]
    results = []
    for i, ann in enumerate(anns):
        kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
        kp[:, 0] += 0.07 * max(ann["bbox"][2:])
        if i == 0:
            continue
        results.append(
            {"image_id": ann["image_id"], "category_id": 1, "keypoints": kp.ravel().tolist(), "score": 0.9}
        )
        if i == 1:
            far = kp.copy()
            far[:, :2] += 500.0
            results.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": 1,
                    "keypoints": far.ravel().tolist(),
                    "score": 0.1,
                }
            )
    path = tmp_path_factory.mktemp("evaluate") / "results.json"
    path.write_text(json.dumps(results))
    labelled = np.array([np.asarray(a["keypoints"]).reshape(-1, 3)[:, 2] > 0 for a in anns])
    return {
        "pred": path,
        "results": results,
        "expected_pck": labelled[1:].sum() / labelled.sum(),
    }


def test_text_report_prints_ap_pck_area_and_misses(gt_path: Path, case: dict, capsys) -> None:
    assert main(["--gt", str(gt_path), "--pred", str(case["pred"])]) == 0
    out = capsys.readouterr().out
    ap = coco_keypoint_ap(gt_path, case["results"], area="bbox")
    assert f"AP {100 * ap['AP']:.1f}" in out and f"AR {100 * ap['AR']:.1f}" in out
    assert "area = bbox w*h (--area bbox)" in out
    assert "1 of 32 images had no result" in out and "count as misses" in out
    assert "PCK@0.05 0.0" in out
    assert f"PCK@0.1 {100 * case['expected_pck']:.1f}" in out
    assert f"PCK@0.2 {100 * case['expected_pck']:.1f}" in out


def test_json_round_trips_and_matches_the_functions(gt_path: Path, case: dict, capsys) -> None:
    assert (
        cli_main(["evaluate", "--gt", str(gt_path), "--pred", str(case["pred"]), "--area", "file", "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(json.dumps(evaluate_files(gt_path, case["pred"], area="file")))
    ap = coco_keypoint_ap(gt_path, case["results"], area="file")
    assert report["coco"]["area_used"] == "file" and report["coco"]["AP"] == pytest.approx(ap["AP"])
    assert report["coco"]["APm"] is None  # pycocotools' -1: no GT in that range
    pck = report["pck"]
    assert pck["values"]["pck@0.05"] == 0.0
    assert pck["values"]["pck@0.1"] == pytest.approx(case["expected_pck"])
    assert (pck["images_scored"], pck["images_without_result"], pck["excluded_samples"]) == (32, 1, 0)
    assert set(pck["per_joint"]["pck@0.2"]) >= {"nose", "left_ankle"}


def test_area_file_is_stricter_on_this_sample(gt_path: Path, case: dict) -> None:
    by_bbox = evaluate_files(gt_path, case["pred"], area="bbox")["coco"]["AP"]
    by_file = evaluate_files(gt_path, case["pred"], area="file")["coco"]["AP"]
    assert by_file < by_bbox


def test_pck_options(gt_path: Path, case: dict, capsys) -> None:
    assert (
        main(
            [
                "--gt",
                str(gt_path),
                "--pred",
                str(case["pred"]),
                "--pck-norm",
                "torso",
                "--thresholds",
                "0.5",
                "1.0",
                "--json",
            ]
        )
        == 0
    )
    pck = json.loads(capsys.readouterr().out)["pck"]
    assert pck["norm"] == "torso" and pck["thresholds"] == [0.5, 1.0]
    assert set(pck["values"]) == {"pck@0.5", "pck@1"}


def test_crowded_ground_truth_keeps_ap_and_skips_pck_with_the_reason(
    gt_path: Path, tmp_path: Path, capsys
) -> None:
    gt = json.loads(gt_path.read_text())
    gt["annotations"].append(dict(gt["annotations"][0], id=999999))  # a second person on one image
    crowded = tmp_path / "two_people.json"
    crowded.write_text(json.dumps(gt))
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps(
            [
                {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
                for a in gt["annotations"][:-1]
            ]
        )
    )
    assert main(["--gt", str(crowded), "--pred", str(results)]) == 0
    out = capsys.readouterr().out
    ap = coco_keypoint_ap(crowded, results)["AP"]
    assert 0.9 < ap < 1.0  # one GT person of 33 is never detected
    assert f"AP {100 * ap:.1f}" in out
    assert "PCK: skipped: 1 images have more than one GT person" in out


def test_not_coco_files_give_a_clear_error_naming_the_file(gt_path: Path, tmp_path: Path, capsys) -> None:
    bad_gt = tmp_path / "bad_gt.json"
    bad_gt.write_text(json.dumps({"images": [], "categories": []}))
    short = tmp_path / "short_keypoints.json"
    short.write_text(json.dumps([{"image_id": 33, "category_id": 1, "keypoints": [1.0] * 34, "score": 1.0}]))
    stranger = tmp_path / "unknown_image.json"
    stranger.write_text(
        json.dumps([{"image_id": -5, "category_id": 1, "keypoints": [1.0] * 51, "score": 1.0}])
    )
    cases = [
        (bad_gt, gt_path, "bad_gt.json", "missing or non-list ['annotations']"),
        (gt_path, short, "short_keypoints.json", "must be 51 finite numbers"),
        (gt_path, stranger, "unknown_image.json", "image_id -5 is not in the ground truth"),
    ]
    for gt, pred, name, problem in cases:
        assert main(["--gt", str(gt), "--pred", str(pred)]) == 2
        err = capsys.readouterr().err
        assert name in err and problem in err
