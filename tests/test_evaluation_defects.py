"""Evaluation and data defects of issue 15, on the real SyRIP sample (32 images of 200R): id renumbering
stated with the raw pycocotools AP beside it, unknown categories, one duplicate rule, persons without
keypoints, the head-neck PCK name, matching results by file name, and the loader's image-size check."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
import torch

from geosapiens.cli.evaluate import main
from geosapiens.data.datasets import PoseDataset
from geosapiens.data.formats.syrip import read_syrip
from geosapiens.data.robust import SKIPPED_ERROR_KEY, SKIPPED_KEY, SkipBadSamples
from geosapiens.errors import DataError
from geosapiens.metrics.coco import COCOKeypointAP
from geosapiens.metrics.evaluate import evaluate_files, format_report
from test_formats_syrip import copy_sample

GT_FILE = "annotations/200R/person_keypoints_train_infant.json"


def _perfect(gt: dict) -> list[dict]:
    """One result per ground-truth person: its own keypoints (score 1 per joint)."""
    out = []
    for ann in gt["annotations"]:
        kp = [v for i in range(17) for v in (ann["keypoints"][3 * i], ann["keypoints"][3 * i + 1], 1.0)]
        out.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": kp, "score": 0.9})
    return out


@pytest.fixture
def gt(syrip_sample: Path) -> dict:
    return json.loads((syrip_sample / GT_FILE).read_text())


def _write(tmp_path: Path, name: str, doc) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_renumbering_is_stated_with_the_raw_pycocotools_ap(gt, tmp_path):
    gt["annotations"][0]["id"] = 0  # as in SyRIP's validate100/validate500
    gt_path = _write(tmp_path, "gt.json", gt)
    report = evaluate_files(gt_path, _write(tmp_path, "pred.json", _perfect(gt)))
    assert report["coco"]["AP"] == pytest.approx(1.0)
    raw = report["coco"]["raw_pycocotools"]["AP"]
    # pycocotools' bug: the id-0 person's perfect detection counts as a false positive
    assert raw < 0.99
    text = format_report(report)
    assert "renumbered 1..N" in text and "#331" in text and f"AP {100 * raw:.1f}" in text
    print(f"perfect results, one GT id 0: AP {report['coco']['AP']:.4f} renumbered, {raw:.4f} raw")


def test_a_gt_category_not_in_categories_is_an_error(gt, tmp_path, capsys):
    gt["annotations"][3]["category_id"] = 7
    gt_path = _write(tmp_path, "gt.json", gt)
    pred = _write(tmp_path, "pred.json", _perfect({**gt, "annotations": gt["annotations"][:1]}))
    with pytest.raises(DataError, match="category_id 7 is not in 'categories'"):
        evaluate_files(gt_path, pred)
    assert main(["--gt", str(gt_path), "--pred", str(pred)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(gt_path) in err[0] and "category_id 7" in err[0]


def test_exact_duplicates_count_once_in_the_command_and_the_metric(gt, tmp_path):
    results = _perfect(gt)
    # a lower-score, wrong second result per image, then every result twice (a file concatenated with itself)
    for r in list(results):
        wrong = dict(r, keypoints=[v + 40.0 if i % 3 < 2 else v for i, v in enumerate(r["keypoints"])],
                     score=0.5)
        results.append(wrong)
    once = evaluate_files(_write(tmp_path, "gt.json", gt), _write(tmp_path, "once.json", results))
    twice = evaluate_files(tmp_path / "gt.json", _write(tmp_path, "twice.json", results + results))
    assert twice["num_duplicates_dropped"] == len(results) and twice["num_results"] == len(results)
    assert twice["coco"]["AP"] == pytest.approx(once["coco"]["AP"])
    metric = COCOKeypointAP(gt)
    for r in results + results:
        kp = torch.tensor(r["keypoints"], dtype=torch.float64).reshape(1, 17, 3)
        metric.update(torch.tensor([r["image_id"]]), kp[..., :2], torch.tensor([r["score"]]).double())
    assert metric.compute()["AP"].item() == pytest.approx(twice["coco"]["AP"])
    assert "exact duplicates kept once" in format_report(twice)


def test_persons_without_a_labelled_keypoint_are_not_counted(gt, tmp_path):
    ann = gt["annotations"][5]
    ann["keypoints"] = [0.0] * 51
    report = evaluate_files(_write(tmp_path, "gt.json", gt), _write(tmp_path, "pred.json", _perfect(gt)))
    assert report["num_gt_persons"] == len(gt["annotations"]) - 1
    assert report["num_gt_without_keypoints"] == 1
    assert "1 more without a labelled keypoint" in format_report(report)


def test_head_neck_norm_is_not_called_pckh(gt, tmp_path, capsys):
    gt_path = _write(tmp_path, "gt.json", gt)
    pred = _write(tmp_path, "pred.json", _perfect(gt))
    assert main(["--gt", str(gt_path), "--pred", str(pred), "--pck_norm", "head_neck"]) == 0
    out = capsys.readouterr().out
    assert "not MPII PCKh" in out and "(PCKh)" not in out
    with pytest.raises(SystemExit):
        main(["--gt", str(gt_path), "--pred", str(pred), "--pck-norm", "head"])  # the old name is gone


def test_results_of_another_numbering_match_by_file_name(gt, tmp_path, capsys):
    """FiDIP's 700-image file numbers Test100's image k as k+200: matched by file name, they score as their
    own; taken by image_id where those ids exist, they score against the wrong images, with a warning."""
    gt_path = _write(tmp_path, "gt.json", gt)
    shifted = [dict(r, image_id=r["image_id"] + 200) for r in _perfect(gt)]
    names = {img["id"]: img["file_name"] for img in gt["images"]}
    images = _write(tmp_path, "images.json", {"images": [{"id": i + 200, "file_name": f"some/dir/{n}"}
                                                         for i, n in names.items()]})
    pred = _write(tmp_path, "shifted.json", shifted)
    assert main(["--gt", str(gt_path), "--pred", str(pred)]) == 2  # ids not in the ground truth: refused
    report = evaluate_files(gt_path, pred, images=images)
    assert report["coco"]["AP"] == pytest.approx(1.0) and report["matched_by"].startswith("file name")
    # results carrying their file name need no --images
    named = [dict(r, image_id=-1, file_name=names[r["image_id"]]) for r in _perfect(gt)]
    assert evaluate_files(gt_path, _write(tmp_path, "named.json", named))["coco"]["AP"] == pytest.approx(1.0)
    # ids that exist but belong to other images: scored, and the disagreement is counted and warned about
    ids = sorted(names)
    rotated = [dict(r, image_id=ids[(ids.index(r["image_id"]) + 1) % len(ids)]) for r in _perfect(gt)]
    wrong = evaluate_files(gt_path, _write(tmp_path, "rotated.json", rotated))
    print(f"rotated ids: AP {wrong['coco']['AP']:.3f}, {wrong['results_outside_their_gt_box']} of "
          f"{len(rotated)} results outside their GT box")
    assert wrong["results_outside_their_gt_box"] >= len(rotated) // 2
    assert "warning:" in format_report(wrong)
    assert report["results_outside_their_gt_box"] == 0


def test_loader_refuses_an_image_whose_size_differs_from_its_annotation(syrip_sample, tmp_path):
    root = copy_sample(syrip_sample, tmp_path / "SyRIP")
    records = read_syrip(root, GT_FILE)
    victim = records[2]
    image = cv2.imread(str(victim.image_path))
    cv2.imwrite(str(victim.image_path), cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2)))
    dataset = PoseDataset(records, (64, 64), 1.25)
    dataset[0]  # the others load
    with pytest.raises(DataError) as err:
        dataset[2]
    message = str(err.value)
    assert str(victim.image_path) in message and f"{victim.width}x{victim.height}" in message
    assert f"{image.shape[1] // 2}x{image.shape[0] // 2}" in message
    skipped = SkipBadSamples(dataset, enabled=True)[2]  # skip_bad_samples: replaced, and said so
    assert int(skipped[SKIPPED_KEY]) == 1 and str(victim.image_path) in skipped[SKIPPED_ERROR_KEY]
