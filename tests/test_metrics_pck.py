"""PCK against hand-computed cases for every normaliser, exclusions, thresholds, and DDP-style merging."""

from __future__ import annotations

import math

import pytest
import torch

from geosapiens.metrics.pck import PCK, norm_factor, pck, pck_curve, pck_update
from geosapiens.skeleton import COCO17

K = COCO17.num_keypoints


def _person() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One COCO-17 ground truth with round lengths, a prediction whose joint j is off by exactly j px, and
    ``labelled`` with joint 3 (left_ear) unlabelled.

    Shoulders (0, 0), (10, 0) -> midpoint (5, 0); hips (0, 20), (10, 20) -> midpoint (5, 20): torso = 20.
    Nose (5, -8): head segment (nose to shoulder midpoint) = 8.
    """
    target = torch.zeros(1, K, 2, dtype=torch.float64)
    target[0, COCO17.index("left_shoulder")] = torch.tensor([0.0, 0.0])
    target[0, COCO17.index("right_shoulder")] = torch.tensor([10.0, 0.0])
    target[0, COCO17.index("left_hip")] = torch.tensor([0.0, 20.0])
    target[0, COCO17.index("right_hip")] = torch.tensor([10.0, 20.0])
    target[0, COCO17.index("nose")] = torch.tensor([5.0, -8.0])
    preds = target.clone()
    preds[0, :, 0] += torch.arange(K, dtype=torch.float64)  # joint j is j px off
    labelled = torch.ones(1, K, dtype=torch.bool)
    labelled[0, 3] = False
    return preds, target, labelled


BBOX = torch.tensor([[0.0, -10.0, 10.0, 40.0]])  # max side 40, diagonal sqrt(1700) = 41.23
IMAGE_HW = torch.tensor([[100.0, 200.0]])  # max side 200

# Correct joints (out of the 16 labelled; errors are 0..16 px with 3 unlabelled; strict "<"):
# bbox 40:        thresholds 2, 4, 8          -> {0,1}, {0,1,2}, {0,1,2,4,5,6,7}      = 2, 3, 7
# bbox_diag 41.2: thresholds 2.06, 4.12, 8.25 -> {0,1,2}, {0,1,2,4}, {0..8} - {3}    = 3, 4, 8
# torso 20:       thresholds 1, 2, 4          -> {0}, {0,1}, {0,1,2}                 = 1, 2, 3
# head_neck 8:         thresholds 0.4, 0.8, 1.6    -> {0}, {0}, {0,1}                     = 1, 1, 2
# image 200:      thresholds 10, 20, 40       -> {0..9} - {3}, all 16, all 16        = 9, 16, 16
# head_size 30:   thresholds 1.5, 3, 6        -> {0,1}, {0,1,2}, {0,1,2,4,5}         = 2, 3, 5
CASES = {
    "bbox": ({"bbox": BBOX}, 40.0, (2, 3, 7)),
    "bbox_diag": ({"bbox": BBOX}, math.sqrt(1700.0), (3, 4, 8)),
    "torso": ({}, 20.0, (1, 2, 3)),
    "head_neck": ({}, 8.0, (1, 1, 2)),
    "image": ({"image_hw": IMAGE_HW}, 200.0, (9, 16, 16)),
    "head_explicit": ({"head_size": torch.tensor([30.0])}, 30.0, (2, 3, 5)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pck_each_normalisation_by_hand(case: str) -> None:
    preds, target, labelled = _person()
    extra, expected_norm, expected_correct = CASES[case]
    kind = "head_neck" if case == "head_explicit" else case
    norm = norm_factor(kind, target=target, labelled=labelled, **extra)
    assert norm.item() == pytest.approx(expected_norm)
    correct, count = pck_update(preds, target, labelled, norm, (0.05, 0.1, 0.2))
    assert count.sum().item() == 16 and count[3].item() == 0  # the unlabelled joint is not scored
    assert correct.sum(dim=1).tolist() == list(expected_correct)
    assert correct[:, 3].tolist() == [0, 0, 0]
    mean, per_joint = pck(preds, target, labelled, norm, (0.05, 0.1, 0.2))
    assert mean.tolist() == pytest.approx([c / 16 for c in expected_correct])
    assert torch.isnan(per_joint[:, 3]).all()


def test_unlabelled_joint_with_a_huge_error_changes_nothing() -> None:
    preds, target, labelled = _person()
    norm = norm_factor("bbox", bbox=BBOX)
    before = pck(preds, target, labelled, norm)[0]
    preds[0, 3] = torch.tensor([1e6, 1e6])
    assert torch.equal(pck(preds, target, labelled, norm)[0], before)
    labelled[0, 3] = True  # now it counts, and it is wrong
    assert pck(preds, target, labelled, norm)[0][0].item() == pytest.approx(2 / 17)


def test_pooled_mean_is_count_weighted_and_missing_predictions_are_misses() -> None:
    target = torch.zeros(2, K, 2)
    preds = target.clone()
    labelled = torch.zeros(2, K, dtype=torch.bool)
    labelled[0, :2] = True  # sample 0: 2 joints, both right
    labelled[1, :] = True  # sample 1: 17 joints, none predicted (NaN)
    preds[1] = float("nan")
    mean, per_joint = pck(preds, target, labelled, torch.tensor([10.0, 10.0]), (0.1,))
    assert mean.item() == pytest.approx(2 / 19)  # not the per-sample mean (1 + 0) / 2
    assert per_joint[0, 0].item() == pytest.approx(0.5) and per_joint[0, 5].item() == 0.0


def test_samples_without_a_normaliser_are_excluded_and_counted() -> None:
    preds, target, labelled = _person()
    preds2, target2, labelled2 = _person()
    labelled2[0, COCO17.index("left_hip")] = False  # torso cannot be formed for this sample
    preds2[0] += 1000.0  # all wrong: would lower PCK if it were not excluded
    metric = PCK(norm="torso")
    metric.update(torch.cat([preds, preds2]), torch.cat([target, target2]), torch.cat([labelled, labelled2]))
    out = metric.compute()
    assert out["pck_excluded_samples"].item() == 1
    assert out["pck@0.05"].item() == pytest.approx(1 / 16)
    assert out["pck@0.2"].item() == pytest.approx(3 / 16)
    assert metric.count.sum().item() == 16


def test_metric_keys_thresholds_and_per_joint_values() -> None:
    preds, target, labelled = _person()
    metric = PCK(thresholds=(0.05, 0.1, 0.2, 0.5), norm="bbox")
    metric.update(preds, target, labelled, bbox=BBOX)
    out = metric.compute()
    assert metric.higher_is_better and metric.full_state_update is False
    assert [out[f"pck@{t}"].item() for t in ("0.05", "0.1", "0.2", "0.5")] == pytest.approx(
        [2 / 16, 3 / 16, 7 / 16, 16 / 16]
    )  # 0.5 * 40 = 20 px > every error
    assert out["pck@0.1/nose"].item() == 1.0 and out["pck@0.1/left_shoulder"].item() == 0.0
    assert math.isnan(out["pck@0.1/left_ear"].item())
    assert len(out) == 4 * (1 + K) + 1


def test_explicit_norm_overrides_the_kind() -> None:
    preds, target, labelled = _person()
    metric = PCK(norm="bbox")
    metric.update(preds, target, labelled, norm=torch.tensor([200.0]))
    assert metric.compute()["pck@0.05"].item() == pytest.approx(9 / 16)


def test_merged_states_equal_one_metric_over_everything() -> None:
    """DDP sync sums the states: two "ranks" merged must equal one metric that saw all the data."""
    g = torch.Generator().manual_seed(0)
    target = torch.rand(10, K, 2, generator=g) * 100
    preds = target + torch.randn(10, K, 2, generator=g) * 8
    labelled = torch.rand(10, K, generator=g) > 0.2
    bbox = torch.cat([torch.zeros(10, 2), torch.rand(10, 2, generator=g) * 100 + 50], dim=1)
    whole, rank0, rank1 = PCK(), PCK(), PCK()
    whole.update(preds, target, labelled, bbox=bbox)
    rank0.update(preds[:3], target[:3], labelled[:3], bbox=bbox[:3])
    rank1.update(preds[3:], target[3:], labelled[3:], bbox=bbox[3:])
    rank0.merge_state(rank1)
    a, b = whole.compute(), rank0.compute()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], equal_nan=True), key
    assert 0.0 < a["pck@0.1"].item() < 1.0  # not a vacuous all-right / all-wrong case


def test_pck_curve_is_monotone_from_zero_to_all() -> None:
    preds, target, labelled = _person()
    thr, mean, per_joint = pck_curve(preds, target, labelled, torch.tensor([40.0]))
    assert thr[0] == 0.0 and thr[-1] == pytest.approx(0.5) and len(thr) == 51
    assert mean[0] == 0.0 and mean[-1] == 1.0  # strict "<": nothing is within 0; 16 px errors < 0.5 * 40
    assert (mean[1:] >= mean[:-1]).all()
    assert per_joint.shape == (51, K)
    # 0.1 * 40 = 4 px: joints 0, 1, 2 (3 unlabelled) -> 3 / 16; 0.4 * 40 = 16 px: 15 of 16
    assert mean[10].item() == pytest.approx(3 / 16)
    assert mean[40].item() == pytest.approx(15 / 16)


def test_bad_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        norm_factor("elbow")
    with pytest.raises(ValueError, match="needs `bbox`"):
        norm_factor("bbox")
    with pytest.raises(ValueError, match="norm must be one of"):
        PCK(norm="elbow")
    with pytest.raises(ValueError, match="thresholds"):
        PCK(thresholds=(-0.1,))
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        pck_update(
            torch.zeros(2, K, 2), torch.zeros(2, K, 2), torch.ones(2, 3, dtype=torch.bool), torch.ones(2)
        )
