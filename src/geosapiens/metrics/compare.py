"""Comparing methods across training seeds: mean and spread over seeds, and the paired difference to a
baseline with a 95% confidence interval from a two-level bootstrap over seeds and test samples.

A method's score on a metric depends on its training seed (initialisation, batch order, augmentation draws)
and on which test samples happen to be in the test split. For a method M and its baseline B, both run under
the same seeds and tested on the same samples:

- ``mean``/``std``: over M's seeds (sample standard deviation, ``ddof=1``; NaN with one seed);
- ``diff``: the mean over their common seeds of ``M_s - B_s`` (paired by seed);
- the 95% CI of ``diff``: each bootstrap replicate draws the seeds with replacement and, within each drawn
  seed, the test samples with replacement, the SAME samples for M and B (paired); it recomputes both metrics
  on those samples and averages ``M - B`` over the drawn seeds; the CI is the 2.5th and 97.5th percentiles of
  the replicates. PCK metrics are recomputed from per-sample errors (``per_sample`` in ``test_metrics.json``);
  a metric without them is bootstrapped over seeds only, and with one seed and no samples it has no CI.

A single-seed table cannot see seed noise in its CI (the bootstrap over samples only sees the test split's).
:func:`seed_noise` measures it where several seeds exist: the spread over seeds of the paired differences,
pooled over methods; a single-seed difference smaller than ``NOISE_Z`` times that spread is "inside seed
noise".

Note:
    S: seeds, N: test samples, K: joints, R: bootstrap replicates.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "NOISE_Z",
    "SeedRun",
    "PairedDifference",
    "SeedNoise",
    "parse_pck_metric",
    "pck_from_errors",
    "seed_stats",
    "paired_difference",
    "seed_noise",
]

NOISE_Z = 1.96  # two-sided 95% of a normal: |diff| below NOISE_Z * sigma_seed is inside seed noise
_PCK = re.compile(r"^pck@([0-9.eE+-]+)(?:/(.+))?$")


@dataclass
class SeedRun:
    """One seed of one method on one test split.

    Attributes:
        seed: the training seed (None when the results file did not record one).
        metrics: logged metrics, lower-case keys without the ``test/`` prefix (``pck@0.1``, ``pck@0.1/nose``).
        index: ``(N,)`` test sample indices, or None when the run saved no per-sample errors.
        errors: ``(N, K)`` normalised joint errors (NaN = not scored), rows matching ``index``.
        keypoints: joint names of the ``errors`` columns.
    """

    seed: int | None
    metrics: dict[str, float]
    index: np.ndarray | None = None
    errors: np.ndarray | None = None
    keypoints: tuple[str, ...] = ()


@dataclass
class PairedDifference:
    """``method - baseline`` on one metric, paired by seed (and by test sample inside the bootstrap)."""

    seeds: list[int | None] = field(default_factory=list)
    per_seed: list[float] = field(default_factory=list)
    diff: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    ci_over: str = ""  # "seeds x samples", "samples", "seeds" or "" (no CI)

    @property
    def resolved(self) -> bool:
        """The 95% CI excludes 0."""
        return math.isfinite(self.ci_low) and (self.ci_low > 0 or self.ci_high < 0)


@dataclass(frozen=True)
class SeedNoise:
    """Measured seed noise of one metric (see :func:`seed_noise`)."""

    metric: str
    n_methods: int
    n_seeds: int
    seed_std: float  # pooled std over seeds of a method's value
    diff_std: float  # pooled std over seeds of a method's paired difference to its baseline
    threshold: float  # NOISE_Z * diff_std


def parse_pck_metric(metric: str) -> tuple[float, str | None] | None:
    """``"pck@0.1"`` -> ``(0.1, None)``, ``"pck@0.1/nose"`` -> ``(0.1, "nose")``, anything else -> None."""
    match = _PCK.match(metric)
    if match is None:
        return None
    try:
        return float(match.group(1)), match.group(2)
    except ValueError:
        return None


def _hits_counts(
    errors: np.ndarray, keypoints: Sequence[str], threshold: float, joint: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: correct joints ``(N,)`` and scored joints ``(N,)`` (one joint, or all pooled)."""
    if joint is not None:
        errors = errors[:, [list(keypoints).index(joint)]]
    scored = ~np.isnan(errors)
    return (scored & (errors < threshold)).sum(axis=1), scored.sum(axis=1)


def pck_from_errors(
    errors: np.ndarray, threshold: float, keypoints: Sequence[str] = (), joint: str | None = None
) -> float:
    """PCK at ``threshold`` from ``(N, K)`` normalised errors: correct over scored joints, pooled (as
    :func:`~geosapiens.metrics.pck.pck_compute`), or of one ``joint``; NaN when nothing is scored.

    Example:
        >>> pck_from_errors(np.array([[0.05, np.nan], [0.2, 0.01]]), 0.1)
        0.6666666666666666
    """
    hits, counts = _hits_counts(np.asarray(errors, float), keypoints, threshold, joint)
    total = counts.sum()
    return float(hits.sum() / total) if total else math.nan


def seed_stats(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; NaN for fewer than two values) over seeds.

    Example:
        >>> seed_stats([0.5, 0.625, 0.75])
        (0.625, 0.125)
    """
    v = np.asarray(values, float)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan


def _samples_for(metric: str, run: SeedRun) -> bool:
    parsed = parse_pck_metric(metric)
    return parsed is not None and run.errors is not None and (parsed[1] is None or parsed[1] in run.keypoints)


def paired_difference(
    method: Mapping[int | None, SeedRun],
    baseline: Mapping[int | None, SeedRun],
    metric: str,
    n_boot: int = 2000,
    rng: np.random.Generator | int | None = 0,
) -> PairedDifference:
    """``method - baseline`` on ``metric`` over their common seeds, with the two-level bootstrap CI.

    Args:
        method, baseline: ``{seed: SeedRun}``.
        metric: a logged metric key (``pck@0.1``, ``pck@0.1/nose``, ``ap``, ...).
        n_boot: bootstrap replicates R.
        rng: a Generator or its seed (the same seed gives the same CI).

    Raises:
        ValueError: when a seed's method and baseline runs were tested on different samples.
    """
    rng = np.random.default_rng(rng)
    seeds = [
        s for s in method if s in baseline and metric in method[s].metrics and metric in baseline[s].metrics
    ]
    out = PairedDifference(seeds=seeds)
    if not seeds:
        return out
    out.per_seed = [method[s].metrics[metric] - baseline[s].metrics[metric] for s in seeds]
    out.diff = float(np.mean(out.per_seed))
    n_seeds = len(seeds)
    if all(_samples_for(metric, method[s]) and _samples_for(metric, baseline[s]) for s in seeds):
        threshold, joint = parse_pck_metric(metric)  # type: ignore[misc]
        hits_m, hits_b, count_m, count_b = [], [], [], []
        for s in seeds:
            m, b = method[s], baseline[s]
            if not np.array_equal(m.index, b.index):
                raise ValueError(
                    f"seed {s}: the method and its baseline were tested on different samples "
                    f"({len(m.index)} vs {len(b.index)} samples, or other indices)"
                )
            for run, hits, counts in ((m, hits_m, count_m), (b, hits_b, count_b)):
                h, c = _hits_counts(run.errors, run.keypoints, threshold, joint)
                hits.append(h)
                counts.append(c)
        sizes = {len(h) for h in hits_m}
        if len(sizes) != 1:
            raise ValueError(f"the seeds were tested on test splits of different sizes {sorted(sizes)}")
        n = sizes.pop()
        hm, hb, cm, cb = (np.stack(a) for a in (hits_m, hits_b, count_m, count_b))  # (S, N)
        drawn_seeds = rng.integers(0, n_seeds, size=(n_boot, n_seeds))  # (R, S)
        drawn_samples = rng.integers(0, n, size=(n_boot, n_seeds, n))  # (R, S, N)
        rows = drawn_seeds[:, :, None]

        def pck(hits: np.ndarray, counts: np.ndarray) -> np.ndarray:
            with np.errstate(invalid="ignore", divide="ignore"):
                return hits[rows, drawn_samples].sum(-1) / counts[rows, drawn_samples].sum(-1)  # (R, S)

        replicates = np.nanmean(pck(hm, cm) - pck(hb, cb), axis=1)
        out.ci_over = "seeds x samples" if n_seeds > 1 else "samples"
    elif n_seeds > 1:
        per_seed = np.asarray(out.per_seed)
        replicates = per_seed[rng.integers(0, n_seeds, size=(n_boot, n_seeds))].mean(axis=1)
        out.ci_over = "seeds"
    else:
        return out
    finite = replicates[np.isfinite(replicates)]
    if finite.size:
        out.ci_low, out.ci_high = (float(v) for v in np.percentile(finite, [2.5, 97.5]))
    return out


def seed_noise(
    values: Mapping[str, Mapping[int | None, float]], differences: Mapping[str, PairedDifference], metric: str
) -> SeedNoise | None:
    """Seed noise of ``metric`` pooled over methods with at least two seeds (root of the mean variance).

    Args:
        values: ``{method: {seed: value}}``.
        differences: ``{method: its PairedDifference to its baseline}`` (baselines themselves left out).

    Returns:
        None when no method has two seeds. ``threshold`` = ``NOISE_Z * diff_std``: the half-width of the
        95% range of a single-seed paired difference around its seed mean.
    """
    value_vars = [np.var(list(v.values()), ddof=1) for v in values.values() if len(v) > 1]
    diff_vars = [np.var(d.per_seed, ddof=1) for d in differences.values() if len(d.per_seed) > 1]
    if not value_vars:
        return None
    n_seeds = max(len(v) for v in values.values())
    seed_std = float(np.sqrt(np.mean(value_vars)))
    diff_std = float(np.sqrt(np.mean(diff_vars))) if diff_vars else math.nan
    return SeedNoise(metric, len(value_vars), n_seeds, seed_std, diff_std, NOISE_Z * diff_std)
