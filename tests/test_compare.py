"""Seed statistics and the paired two-level bootstrap against hand-computed cases, and the per-sample errors
the stages save for it (they reproduce PCK exactly, under any resampling)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geosapiens.metrics.compare import (
    NOISE_Z,
    SeedRun,
    paired_difference,
    parse_pck_metric,
    pck_from_errors,
    seed_noise,
    seed_stats,
)
from geosapiens.metrics.pck import PCK, SampleErrors, normalised_errors

JOINTS = ("a", "b")


def _errors(hits: list[tuple[bool, bool]]) -> np.ndarray:
    """(N, 2) errors: 0.05 where the joint is a hit at 0.1, 0.5 where it is a miss."""
    return np.asarray([[0.05 if h else 0.5 for h in row] for row in hits], float)


def _run(seed: int, hits: list[tuple[bool, bool]]) -> SeedRun:
    errors = _errors(hits)
    return SeedRun(seed, {"pck@0.1": pck_from_errors(errors, 0.1)}, np.arange(len(errors)), errors, JOINTS)


# 2 methods x 3 seeds x 4 images x 2 joints. Within each seed, every image has the SAME paired hit difference
# (method - baseline = 1, 1, 2 joints of 2 in seeds 0, 1, 2), so resampling images never changes a seed's
# difference: the bootstrap only moves through the seeds, and its extremes are analytic.
BASELINE = {
    0: [(False, False)] * 4,  # PCK 0
    1: [(True, False)] * 2 + [(False, False)] * 2,  # PCK 2/8 = 0.25
    2: [(False, False)] * 4,  # PCK 0
}
METHOD = {
    0: [(True, False)] * 4,  # PCK 0.5, diff +1 joint per image = +0.5
    1: [(True, True)] * 2 + [(True, False)] * 2,  # PCK 6/8 = 0.75, diff +0.5
    2: [(True, True)] * 4,  # PCK 1.0, diff +1.0
}


def test_mean_std_paired_difference_and_seed_bootstrap_by_hand():
    method = {s: _run(s, h) for s, h in METHOD.items()}
    baseline = {s: _run(s, h) for s, h in BASELINE.items()}
    values = [method[s].metrics["pck@0.1"] for s in (0, 1, 2)]
    assert values == [0.5, 0.75, 1.0]
    mean, std = seed_stats(values)
    assert mean == pytest.approx(0.75) and std == pytest.approx(0.25)  # sqrt(((-.25)^2 + 0 + .25^2) / 2)
    d = paired_difference(method, baseline, "pck@0.1", n_boot=4000, rng=0)
    assert d.seeds == [0, 1, 2] and d.per_seed == pytest.approx([0.5, 0.5, 1.0])
    assert d.diff == pytest.approx(2 / 3)
    # A replicate averages 3 seed draws from {0.5, 0.5, 1.0}: its minimum 0.5 has probability (2/3)^3 = 30%,
    # its maximum 1.0 probability (1/3)^3 = 3.7% > 2.5%: the 95% CI is exactly [0.5, 1.0].
    assert (d.ci_low, d.ci_high) == pytest.approx((0.5, 1.0))
    assert d.ci_over == "seeds x samples" and d.resolved
    again = paired_difference(method, baseline, "pck@0.1", n_boot=4000, rng=0)
    assert (again.ci_low, again.ci_high) == (d.ci_low, d.ci_high)  # a fixed generator: the same CI
    noise = seed_noise({"M": dict(zip((0, 1, 2), values, strict=True))}, {"M": d}, "pck@0.1")
    assert noise.seed_std == pytest.approx(0.25)
    assert noise.diff_std == pytest.approx(np.std([0.5, 0.5, 1.0], ddof=1))
    assert noise.threshold == pytest.approx(NOISE_Z * noise.diff_std)


def test_one_seed_two_images_ci_spans_the_image_differences():
    # one seed, two images of 2 joints: image 0 gains 2 joints (+1.0), image 1 loses one (-0.5); a replicate
    # is (x + y) / 2 over two image draws, so it takes -0.5 and +1.0 with probability 1/4 each:
    # CI = [-0.5, 1.0]
    method = {0: _run(0, [(True, True), (False, False)])}
    baseline = {0: _run(0, [(False, False), (True, False)])}
    d = paired_difference(method, baseline, "pck@0.1", n_boot=2000, rng=1)
    assert d.diff == pytest.approx(0.5 - 0.25)
    assert (d.ci_low, d.ci_high) == pytest.approx((-0.5, 1.0))
    assert d.ci_over == "samples" and not d.resolved


def test_constant_difference_gives_a_zero_width_ci_and_per_joint_metrics():
    method = {s: _run(s, [(True, False)] * 5) for s in (3, 7)}
    baseline = {s: _run(s, [(False, False)] * 5) for s in (3, 7)}
    d = paired_difference(method, baseline, "pck@0.1", n_boot=500, rng=0)
    assert d.diff == d.ci_low == d.ci_high == pytest.approx(0.5)
    for run in (*method.values(), *baseline.values()):
        run.metrics["pck@0.1/a"] = pck_from_errors(run.errors, 0.1, JOINTS, "a")
    joint = paired_difference(method, baseline, "pck@0.1/a", n_boot=500, rng=0)
    assert joint.diff == joint.ci_low == joint.ci_high == pytest.approx(1.0)


def test_without_samples_the_ci_is_over_seeds_only_and_one_seed_has_none():
    method = {s: SeedRun(s, {"ap": v}) for s, v in zip((0, 1), (0.6, 0.8), strict=True)}
    baseline = {s: SeedRun(s, {"ap": v}) for s, v in zip((0, 1), (0.5, 0.5), strict=True)}
    d = paired_difference(method, baseline, "ap", n_boot=1000, rng=0)
    assert d.per_seed == pytest.approx([0.1, 0.3]) and d.ci_over == "seeds"
    assert (d.ci_low, d.ci_high) == pytest.approx((0.1, 0.3))  # each extreme has probability 1/4
    single = paired_difference({0: method[0]}, {0: baseline[0]}, "ap")
    assert single.diff == pytest.approx(0.1) and math.isnan(single.ci_low) and single.ci_over == ""
    assert paired_difference(method, {5: baseline[0]}, "ap").seeds == []  # no common seed, no difference


def test_different_test_samples_are_refused():
    method = {0: _run(0, [(True, True)] * 3)}
    other = _run(0, [(True, True)] * 3)
    other.index = np.array([0, 1, 5])
    with pytest.raises(ValueError, match="different samples"):
        paired_difference(method, {0: other}, "pck@0.1")


def test_parse_and_pck_from_errors():
    assert parse_pck_metric("pck@0.05") == (0.05, None)
    assert parse_pck_metric("pck@0.1/left_knee") == (0.1, "left_knee")
    assert parse_pck_metric("ap") is None
    errors = np.array([[0.05, np.nan], [0.2, 0.1]])
    assert pck_from_errors(errors, 0.1) == pytest.approx(1 / 3)  # 0.1 is not < 0.1 (strict, as PCK)
    assert math.isnan(pck_from_errors(np.full((2, 2), np.nan), 0.1))


def test_sample_errors_reproduce_pck_and_drop_repeated_samples():
    torch.manual_seed(0)
    preds, target = 100 * torch.rand(6, 17, 2), 100 * torch.rand(6, 17, 2)
    preds[1, 3] = float("nan")  # no prediction: scored, wrong
    labelled = torch.rand(6, 17) > 0.2
    bbox = torch.tensor([[0.0, 0.0, 90.0 + i, 70.0] for i in range(6)])
    pck, samples = PCK(thresholds=(0.05, 0.1, 0.2, 0.5)), SampleErrors()
    pck.update(preds, target, labelled, bbox=bbox)
    samples.update(preds[3:], target[3:], labelled[3:], index=torch.arange(3, 6), bbox=bbox[3:])
    samples.update(preds[:4], target[:4], labelled[:4], index=torch.arange(4), bbox=bbox[:4])  # 3 twice
    index, errors = samples.compute()
    assert index.tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.isinf(errors[1, 3]) and torch.isnan(errors[~labelled]).all()
    logged = pck.compute()
    for t in (0.05, 0.1, 0.2, 0.5):
        assert pck_from_errors(errors.numpy(), t) == pytest.approx(logged[f"pck@{t:g}"].item(), abs=1e-12)
    norm = bbox[:, 2:].amax(-1)
    torch.testing.assert_close(
        normalised_errors(preds, target, labelled, norm), errors, rtol=0, atol=0, equal_nan=True
    )
