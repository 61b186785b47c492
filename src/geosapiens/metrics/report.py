"""``geosapiens report``: finished runs -> one comparison over seeds (markdown + CSV) and plots.

Each ``RUN_DIR`` is one method. It either holds one folder per training seed, ``seed<k>/`` (the layout
``geosapiens demo`` and ``geosapiens seeds`` write: ``<out>/<run>/seed<k>/``), or it is one run of one seed
(its seed is the one its results file recorded). Each run is searched recursively for its newest
``test_metrics.json`` (written by :class:`~geosapiens.callbacks.results.TestResultsWriter`; newest: e.g.
after re-testing), or is that file itself. The method's name is ``--names`` or the folder's name (the parent's
for a ``seed<k>`` folder); RUN_DIRs may share a name when their seeds differ (``runs/a/seed0 runs/a/seed1``).
Lightning suffixes ``/dataloader_idx_<i>`` when a test has several dataloaders: each is its own row.

Per method and metric (``pck@0.05/0.1/0.2``, ``ap``, ``ap50``, ``g_error`` when logged, and per-joint
``pck@0.1/<joint>``): every seed's value, the mean and the standard deviation over seeds, and the paired
difference to the method's baseline (``--baseline``, ``--baseline-of PATTERN=NAME``) with a 95% CI from a
bootstrap over seeds and test samples (:mod:`geosapiens.metrics.compare`); with ``--source-only A --oracle B``
also the sim-to-real gap reduction of the means. With several seeds the seed noise is measured
(``seed_noise.csv``); a single-seed table marks the differences inside a given seed noise (``--seed-noise``,
e.g. the protocol's ``seed_noise.csv``).

Outputs in ``--out`` (written atomically; the markdown is printed):

- ``results.md``: the headline table (mean +- std, seeds per row), paired differences with CIs, every seed's
  values, the seed noise, per-joint PCK@0.1; values in %;
- ``results.csv``: one row per (method, data, metric), fractions: ``method, data, metric, n_seeds, seeds,
  values, mean, std, baseline, diff, ci_low, ci_high, ci_over, resolved, seed_noise, inside_seed_noise, gap,
  results_files``;
- ``seed_noise.csv`` (several seeds): ``metric, n_methods, n_seeds, seed_std, diff_std, threshold``;
- ``pck_curves.png`` (mean PCK-vs-threshold per method, band = range over seeds), ``paired_differences.png``
  (each method's difference to its baseline on PCK@0.1: CI, mean, seeds), ``per_joint_pck.png``,
  ``overlays.png`` (each method's newest validation sheet ``images/epoch_*.png``).
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geosapiens.errors import DataError
from geosapiens.metrics.compare import (
    PairedDifference,
    SeedNoise,
    SeedRun,
    paired_difference,
    parse_pck_metric,
    pck_from_errors,
    seed_noise,
    seed_stats,
)
from geosapiens.metrics.gap import gap_reduction
from geosapiens.skeleton import COCO17

__all__ = [
    "RunResult",
    "Comparison",
    "seed_folders",
    "find_results",
    "load_results",
    "compare",
    "format_markdown",
    "write_report",
    "read_seed_noise",
]

# (column, metric key after "test/", lower-case)
HEADLINE: tuple[tuple[str, str], ...] = (
    ("AP", "ap"),
    ("AP50", "ap50"),
    ("PCK@0.05", "pck@0.05"),
    ("PCK@0.1", "pck@0.1"),
    ("PCK@0.2", "pck@0.2"),
    ("G-Error", "g_error"),
)
PRIMARY = "pck@0.1"  # the metric of model selection, the gap plot and the per-joint table
PERCENT = {"ap", "ap50"}  # with pck@*: shown in %
CSV_COLUMNS = (
    "method", "data", "metric", "n_seeds", "seeds", "values", "mean", "std", "baseline", "diff", "ci_low",
    "ci_high", "ci_over", "resolved", "seed_noise", "inside_seed_noise", "gap", "results_files",
)  # fmt: skip
NOISE_COLUMNS = ("metric", "n_methods", "n_seeds", "seed_std", "diff_std", "threshold")
_DATALOADER = re.compile(r"^(.*)/(dataloader_idx_\d+)$")
SEED_FOLDER = re.compile(r"^seed(\d+)$")
_MAX_OVERLAY_WIDTH = 960
_CURVE_THRESHOLDS = tuple(round(0.01 * i, 2) for i in range(51))


@dataclass
class RunResult:
    """One run (one seed) of one method on one test dataloader."""

    name: str
    source: Path
    data: str
    group: str
    seed: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    pck_curve: dict | None = None
    index: np.ndarray | None = None
    errors: np.ndarray | None = None
    keypoints: tuple[str, ...] = ()

    def value(self, key: str) -> float:
        v = self.metrics.get(key)
        return math.nan if v is None else v

    def seed_run(self) -> SeedRun:
        return SeedRun(self.seed, self.metrics, self.index, self.errors, self.keypoints)

    def curve(self) -> tuple[list[float], list[float]] | None:
        """PCK vs threshold: from the per-sample errors, else the saved ``pck_curve``."""
        if self.errors is not None:
            return list(_CURVE_THRESHOLDS), [pck_from_errors(self.errors, t) for t in _CURVE_THRESHOLDS]
        if self.pck_curve:
            return self.pck_curve["thresholds"], [math.nan if v is None else v for v in self.pck_curve["pck"]]
        return None


def seed_folders(run_dir: str | Path) -> list[tuple[int | None, Path]]:
    """``[(seed, folder)]``: the ``seed<k>/`` folders of ``run_dir`` by seed, else ``[(None, run_dir)]``."""
    path = Path(run_dir)
    if path.is_dir():
        seeds = sorted(
            (int(m.group(1)), child)
            for child in path.iterdir()
            if child.is_dir() and (m := SEED_FOLDER.match(child.name))
        )
        if seeds:
            return seeds  # type: ignore[return-value]
    match = SEED_FOLDER.match(path.name)
    return [(int(match.group(1)) if match else None, path)]


def find_results(run_dir: str | Path) -> Path:
    from geosapiens.metrics.results import RESULTS_FILENAME

    """``run_dir`` itself when it is a results file, else the newest ``test_metrics.json`` under it."""
    path = Path(run_dir)
    if path.is_file():
        return path
    if not path.is_dir():
        raise DataError(path, "run folder not found")
    found = sorted(path.rglob(RESULTS_FILENAME), key=lambda p: (p.stat().st_mtime_ns, str(p)))
    if not found:
        raise DataError(
            path, f"no {RESULTS_FILENAME} under it: test the run with the TestResultsWriter callback first"
        )
    return found[-1]


def _per_sample(path: Path, doc: Any) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]] | None:
    if doc is None:
        return None
    try:
        index = np.asarray(doc["index"], dtype=np.int64)
        errors = np.asarray([[math.nan if e is None else e for e in row] for row in doc["errors"]], float)
        keypoints = tuple(str(k) for k in doc["keypoints"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(path, f"'per_sample' is malformed ({e!r})") from None
    if errors.ndim != 2 or len(errors) != len(index) or errors.shape[1] != len(keypoints):
        raise DataError(
            path,
            f"'per_sample' errors {errors.shape} do not match {len(index)} indices x {len(keypoints)} joints",
        )
    return index, errors, keypoints


def _check_per_sample(path: Path, row: RunResult) -> None:
    """The per-sample errors must reproduce the logged PCK (else a bootstrap would resample other numbers)."""
    for key, logged in row.metrics.items():
        parsed = parse_pck_metric(key)
        if parsed is None or logged is None or (parsed[1] is not None and parsed[1] not in row.keypoints):
            continue
        again = pck_from_errors(row.errors, parsed[0], row.keypoints, parsed[1])
        if not (math.isclose(again, logged, abs_tol=1e-6) or (math.isnan(again) and math.isnan(logged))):
            raise DataError(
                path, f"'per_sample' errors give {key} = {again:.6f}, the logged value is {logged:.6f}"
            )


def load_results(path: str | Path, name: str, seed: int | None = None) -> list[RunResult]:
    """The rows of one results file (one per test dataloader), named ``name``; ``seed`` defaults to the
    file's ``run.seed``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"not readable JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise DataError(path, "not a test results file: no 'metrics' object")
    groups: dict[str, dict[str, float]] = {}
    for key, value in data["metrics"].items():
        if not key.startswith("test/"):
            continue
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise DataError(path, f"metric {key!r} is not a number: {value!r}")
        metric, group = key[len("test/") :], ""
        match = _DATALOADER.match(metric)
        if match:
            metric, group = match.groups()
        groups.setdefault(group, {})[metric.lower()] = math.nan if value is None else float(value)
    if not groups:
        raise DataError(path, "no 'test/...' metrics in it")
    run = data.get("run") or {}
    data_name = (run.get("datamodule") or "").rsplit(".", 1)[-1]
    if seed is None and isinstance(run.get("seed"), int):
        seed = run["seed"]
    curve = data.get("pck_curve") if isinstance(data.get("pck_curve"), dict) else None
    samples = _per_sample(path, data.get("per_sample")) if len(groups) == 1 else None
    rows = []
    for group, metrics in sorted(groups.items()):
        row = RunResult(
            name=name,
            source=path,
            data=f"{data_name} [{group}]".strip() if group else data_name,
            group=group,
            seed=seed,
            metrics=metrics,
            pck_curve=curve,
        )
        if samples is not None:
            row.index, row.errors, row.keypoints = samples
            _check_per_sample(path, row)
        rows.append(row)
    return rows


# -- the comparison ------------------------------------------------------------------------------------------


@dataclass
class MethodRows:
    """One method on one dataloader: its runs by seed and, per metric, the statistics."""

    name: str
    data: str
    group: str
    runs: dict[int | None, RunResult]
    baseline: str | None = None
    diffs: dict[str, PairedDifference] = field(default_factory=dict)
    gaps: dict[str, float] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int | None]:
        return list(self.runs)

    def values(self, metric: str) -> dict[int | None, float]:
        return {s: r.metrics[metric] for s, r in self.runs.items() if metric in r.metrics}

    def stats(self, metric: str) -> tuple[float, float]:
        return seed_stats(list(self.values(metric).values()))


@dataclass
class Comparison:
    """Everything the report writes, as data."""

    methods: list[MethodRows]
    metrics: list[str]  # headline metrics present
    joints: list[str]  # per-joint PRIMARY metrics present (pck@0.1/<joint>)
    noise: dict[str, SeedNoise]  # measured here (several seeds)
    given_noise: dict[str, float]  # thresholds given (--seed-noise)
    source_only: str | None = None
    oracle: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def seed_counts(self) -> list[int]:
        return sorted({len(m.runs) for m in self.methods})

    def label(self, m: MethodRows) -> str:
        """A method's row label: its name, with its dataloader when the tests had several."""
        return f"{m.name} {m.data}" if len({x.group for x in self.methods}) > 1 else m.name

    def threshold(self, metric: str) -> float | None:
        """The seed-noise threshold of ``metric``: measured here when possible, else the one given."""
        if metric in self.noise and math.isfinite(self.noise[metric].threshold):
            return self.noise[metric].threshold
        return self.given_noise.get(metric)


def _baseline_of(name: str, default: str | None, rules: list[tuple[str, str]]) -> str | None:
    for pattern, baseline in rules:
        if fnmatch.fnmatchcase(name, pattern):
            return baseline
    return default


def compare(
    rows: list[RunResult],
    baseline: str | None = None,
    baseline_rules: list[tuple[str, str]] | None = None,
    source_only: str | None = None,
    oracle: str | None = None,
    seed_noise_given: dict[str, float] | None = None,
    n_boot: int = 2000,
    rng_seed: int = 0,
) -> Comparison:
    """Group ``rows`` by (method, dataloader) and seed, and compute every statistic of the report.

    Args:
        baseline: every method's baseline (default ``source_only``); a method is not compared to itself.
        baseline_rules: ``(fnmatch pattern, baseline)``; the first pattern matching a method's name wins.
        seed_noise_given: ``{metric: threshold}`` for single-seed tables.
        n_boot, rng_seed: bootstrap replicates and the seed of their generator (reports are reproducible).

    Raises:
        DataError: a (method, seed) twice, or a method and its baseline tested on different samples.
    """
    baseline = baseline if baseline is not None else source_only
    groups: dict[tuple[str, str], MethodRows] = {}
    for r in rows:
        m = groups.setdefault((r.name, r.group), MethodRows(r.name, r.data, r.group, {}))
        if r.seed in m.runs:
            raise DataError(r.source, f"{r.name!r} has seed {r.seed} twice (also {m.runs[r.seed].source})")
        m.runs[r.seed] = r
    for m in groups.values():
        m.runs = dict(sorted(m.runs.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))
    present = {key for r in rows for key in r.metrics}
    metrics = [key for _, key in HEADLINE if key in present]
    joints = [f"{PRIMARY}/{n}" for n in COCO17.names if f"{PRIMARY}/{n}" in present]
    rng = np.random.default_rng(rng_seed)
    for m in groups.values():
        base = _baseline_of(m.name, baseline, baseline_rules or [])
        if base is None or base == m.name:
            continue
        other = groups.get((base, m.group))
        if other is None:
            continue
        m.baseline = base
        for metric in [*metrics, *joints]:
            try:
                m.diffs[metric] = paired_difference(m.runs, other.runs, metric, n_boot, rng)
            except ValueError as e:
                raise DataError(m.runs[next(iter(m.runs))].source, f"{m.name} vs {base}: {e}") from None
    comparison = Comparison(
        list(groups.values()), metrics, joints, {}, dict(seed_noise_given or {}), source_only, oracle
    )
    for metric in metrics:
        by_group = [m for m in groups.values() if m.values(metric)]
        noise = seed_noise(
            {f"{m.name}|{m.group}": m.values(metric) for m in by_group},
            {f"{m.name}|{m.group}": m.diffs[metric] for m in by_group if metric in m.diffs},
            metric,
        )
        if noise is not None:
            comparison.noise[metric] = noise
    if source_only is not None and oracle is not None:
        for m in groups.values():
            src, orc = groups.get((source_only, m.group)), groups.get((oracle, m.group))
            if src is None or orc is None:
                continue
            for metric in metrics:
                gap = gap_reduction(m.stats(metric)[0], src.stats(metric)[0], orc.stats(metric)[0])
                m.gaps[metric] = gap.value
                if gap.reason:
                    comparison.notes.append(f"{m.name} gap {metric}: {gap.reason}")
    return comparison


# -- output --------------------------------------------------------------------------------------------------


def _column(metric: str) -> str:
    return next((col for col, key in HEADLINE if key == metric), metric.upper())


def _scale(metric: str) -> float:
    return 100.0 if metric in PERCENT or metric.startswith("pck@") else 1.0


def _number(metric: str, value: float, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    value = _scale(metric) * value + 0.0  # no "-0.0"
    digits = 4 if metric == "g_error" else 1
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return "+0.0" if signed and text in ("-0.0", "+0.0") else text


def _mean_std(metric: str, mean: float, std: float) -> str:
    return _number(metric, mean) + (f" ± {_number(metric, std)}" if math.isfinite(std) else "")


def _seed_label(seed: int | None) -> str:
    return "?" if seed is None else str(seed)


def _diff_cell(c: Comparison, m: MethodRows, metric: str) -> str:
    d = m.diffs.get(metric)
    if d is None or not math.isfinite(d.diff):
        return ""
    text = _number(metric, d.diff, signed=True)
    if d.resolved:
        text = f"**{text}**"
    if math.isfinite(d.ci_low):
        text += f" [{_number(metric, d.ci_low, True)}, {_number(metric, d.ci_high, True)}]"
    threshold = c.threshold(metric)
    if len(d.per_seed) == 1 and threshold is not None and abs(d.diff) < threshold:
        text += " (in seed noise)"
    return text


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|",
    ]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def format_markdown(c: Comparison) -> str:
    """``results.md``: headline table, paired differences, per-seed values, seed noise, per-joint table."""
    label = c.label
    counts = c.seed_counts
    all_seeds = sorted({s for m in c.methods for s in m.seeds}, key=lambda s: (s is None, s or 0))
    seeds_text = ", ".join(_seed_label(s) for s in all_seeds)
    if counts == [1]:
        intro = (
            f"**One seed** ({seeds_text}) per row: the CIs are over test samples only and cannot see seed "
            "noise; "
            "a claim that one method beats another needs >= 3 seeds."
        )
    else:
        intro = f"Seeds per row: {', '.join(map(str, counts))} (seeds {seeds_text}); mean ± std over seeds."
    lines = ["## Results", "", intro, ""]
    gap_metrics = [k for k in c.metrics if any(k in m.gaps for m in c.methods)]
    header = [
        "method",
        "data",
        "seeds",
        *[_column(k) for k in c.metrics],
        *[f"gap {_column(k)}" for k in gap_metrics],
    ]
    rows = []
    for m in c.methods:
        cells = [label(m), m.data, str(len(m.runs))]
        cells += [_mean_std(k, *m.stats(k)) for k in c.metrics]
        cells += [
            f"{m.gaps[k] + 0.0:.3f}" if math.isfinite(m.gaps.get(k, math.nan)) else "n/a" for k in gap_metrics
        ]
        rows.append(cells)
    lines += _table(header, rows, left=2)
    lines += ["", "AP, AP50 and PCK in %; G-Error is a coefficient of variation (lower is better)."]
    if gap_metrics:
        lines.append(
            f"gap X = (X - X[{c.source_only}]) / (X[{c.oracle}] - X[{c.source_only}]) of the means: "
            "0 = source-only, "
            "1 = oracle."
        )
    lines += [f"- {n}" for n in dict.fromkeys(c.notes)]

    compared = [m for m in c.methods if m.baseline is not None]
    if compared:
        lines += ["", "## Paired differences to the baseline", ""]
        header = ["method", "baseline", "seeds", *[f"Δ {_column(k)} [95% CI]" for k in c.metrics], "CI over"]
        rows = []
        for m in compared:
            first = next((m.diffs[k] for k in c.metrics if k in m.diffs), PairedDifference())
            cells = [label(m), m.baseline or "", str(len(first.per_seed))]
            rows.append(cells + [_diff_cell(c, m, k) for k in c.metrics] + [first.ci_over or "-"])
        lines += _table(header, rows, left=2)
        lines += [
            "",
            "Δ = method - baseline, paired by seed (same seed, same test samples); 95% CI: percentile "
            "bootstrap "
            "that resamples seeds and, within each, test samples (the same for both). **Bold**: the CI "
            "excludes 0 (resolved).",
        ]
        if counts == [1]:
            noted = {k: c.threshold(k) for k in c.metrics if c.threshold(k) is not None}
            if noted:
                lines.append(
                    "(in seed noise): |Δ| below the measured seed-noise threshold ("
                    + ", ".join(f"{_column(k)} {_number(k, v)}" for k, v in noted.items())
                    + "): one seed cannot tell these apart."
                )
            else:
                lines.append("No seed-noise threshold was given (--seed-noise): one seed cannot separate it.")

    lines += ["", "## Every seed", ""]
    rows = [
        [label(m), _seed_label(s), *[_number(k, r.value(k)) for k in c.metrics]]
        for m in c.methods
        for s, r in m.runs.items()
    ]
    lines += _table(["method", "seed", *[_column(k) for k in c.metrics]], rows, left=2)

    if c.noise:
        lines += ["", "## Seed noise", ""]
        rows = [
            [
                _column(k),
                str(n.n_methods),
                str(n.n_seeds),
                _number(k, n.seed_std),
                _number(k, n.diff_std),
                _number(k, n.threshold),
            ]
            for k, n in c.noise.items()
        ]
        lines += _table(["metric", "methods", "seeds", "σ over seeds", "σ of paired Δ", "threshold"], rows)
        lines += [
            "",
            "σ pooled over methods with >= 2 seeds (root mean variance). threshold = 1.96 σ of paired Δ: a "
            "single-seed difference below it is inside seed noise "
            "(`geosapiens report --seed-noise seed_noise.csv`).",
        ]

    if c.joints:
        lines += ["", f"## Per-joint {_column(PRIMARY)} (%, mean over seeds)", ""]
        names = [j.split("/", 1)[1] for j in c.joints]
        rows = [[label(m), m.data, *[_number(j, m.stats(j)[0]) for j in c.joints]] for m in c.methods]
        lines += _table(["method", "data", *names], rows, left=2)
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value + 0.0) if math.isfinite(value) else ""  # no "-0.0"
    return value


def _csv_text(columns: tuple[str, ...], records: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for rec in records:
        writer.writerow([_csv_value(rec.get(col, "")) for col in columns])
    return buf.getvalue()


def csv_records(c: Comparison) -> list[dict[str, Any]]:
    """``results.csv`` rows: one per (method, data, metric), fractions."""
    records = []
    for m in c.methods:
        for metric in [*c.metrics, *c.joints]:
            values = m.values(metric)
            if not values:
                continue
            mean, std = seed_stats(list(values.values()))
            d = m.diffs.get(metric)
            threshold = c.threshold(metric)
            inside = ""
            if d is not None and len(d.per_seed) == 1 and threshold is not None and math.isfinite(d.diff):
                inside = "yes" if abs(d.diff) < threshold else "no"
            records.append(
                {
                    "method": m.name,
                    "data": m.data,
                    "metric": metric,
                    "n_seeds": len(values),
                    "seeds": ";".join(_seed_label(s) for s in values),
                    "values": ";".join(_csv_value(v) for v in values.values()),
                    "mean": mean,
                    "std": std,
                    "baseline": m.baseline or "",
                    "diff": d.diff if d else math.nan,
                    "ci_low": d.ci_low if d else math.nan,
                    "ci_high": d.ci_high if d else math.nan,
                    "ci_over": d.ci_over if d else "",
                    "resolved": ("yes" if d.resolved else "no") if d and math.isfinite(d.ci_low) else "",
                    "seed_noise": math.nan if threshold is None else threshold,
                    "inside_seed_noise": inside,
                    "gap": m.gaps.get(metric, math.nan),
                    "results_files": ";".join(str(m.runs[s].source) for s in values),
                }
            )
    return records


def read_seed_noise(spec: list[str]) -> dict[str, float]:
    """``--seed-noise`` items: ``METRIC=VALUE`` (a fraction) or a ``seed_noise.csv`` file (its thresholds)."""
    out: dict[str, float] = {}
    for item in spec:
        if "=" in item and not Path(item).exists():
            metric, _, value = item.partition("=")
            try:
                out[metric.strip().lower()] = float(value)
            except ValueError:
                raise DataError(item, "--seed-noise METRIC=VALUE needs a number") from None
            continue
        path = Path(item)
        try:
            rows = list(csv.DictReader(path.open(encoding="utf-8")))
            out |= {r["metric"]: float(r["threshold"]) for r in rows if r.get("threshold")}
        except (OSError, KeyError, ValueError) as e:
            raise DataError(path, f"not a seed_noise.csv (columns {', '.join(NOISE_COLUMNS)}): {e}") from None
    return out


def _newest_sheet(run_dir: Path) -> Path | None:
    sheets = sorted(run_dir.rglob("images/epoch_*.png"), key=lambda p: (p.stat().st_mtime_ns, str(p)))
    return sheets[-1] if sheets else None


def _plots(c: Comparison, out: Path, sheet_dirs: dict[str, Path]) -> list[Path]:
    import cv2  # cv2, matplotlib and torch (viz) only when plots are drawn

    from geosapiens.io import atomic_write_file
    from geosapiens.viz import draw, plots

    written = []
    curves, bands = {}, {}
    for m in c.methods:
        per_seed = [curve for r in m.runs.values() if (curve := r.curve()) is not None]
        if not per_seed or len({len(t) for t, _ in per_seed}) != 1:
            continue
        values = np.asarray([v for _, v in per_seed], float)
        key = c.label(m)
        curves[key] = (per_seed[0][0], np.nanmean(values, axis=0))
        if len(per_seed) > 1:
            bands[key] = (np.nanmin(values, axis=0), np.nanmax(values, axis=0))
    if curves:
        title = "PCK vs threshold (mean over seeds; band: range over seeds)" if bands else "PCK vs threshold"
        fig = plots.plot_pck_curves(curves, title=title, bands=bands)
        written.append(atomic_write_file(out / "pck_curves.png", plots.figure_to_png_bytes(fig)))
    diffs = [
        (f"{m.name} - {m.baseline}", m.diffs[PRIMARY])
        for m in c.methods
        if PRIMARY in m.diffs and math.isfinite(m.diffs[PRIMARY].diff)
    ]
    if diffs:
        fig = plots.plot_paired_differences(
            {
                name: (100 * d.diff, 100 * d.ci_low, 100 * d.ci_high, [100 * v for v in d.per_seed])
                for name, d in diffs
            },
            noise=None if c.threshold(PRIMARY) is None else 100 * c.threshold(PRIMARY),
            xlabel=f"Δ {_column(PRIMARY)} (points), 95% CI",
        )
        written.append(atomic_write_file(out / "paired_differences.png", plots.figure_to_png_bytes(fig)))
    if c.joints:
        several_data = len({m.data for m in c.methods}) > 1
        bars = {
            f"{m.name} {m.data}" if several_data else m.name: [m.stats(j)[0] for j in c.joints]
            for m in c.methods
        }
        fig = plots.plot_per_joint_bars(bars, [j.split("/", 1)[1] for j in c.joints], title=_column(PRIMARY))
        written.append(atomic_write_file(out / "per_joint_pck.png", plots.figure_to_png_bytes(fig)))
    sheets, labels = [], []
    for name, run_dir in sheet_dirs.items():
        sheet = _newest_sheet(run_dir) if run_dir.is_dir() else None
        if sheet is not None:
            img = draw.read_png(sheet)
            if img.shape[1] > _MAX_OVERLAY_WIDTH:
                scale = _MAX_OVERLAY_WIDTH / img.shape[1]
                img = cv2.resize(
                    img, (_MAX_OVERLAY_WIDTH, round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA
                )
            sheets.append(img)
            labels.append(f"{name}: {sheet.name}")
    if sheets:
        written.append(
            atomic_write_file(out / "overlays.png", draw.encode_png(draw.contact_sheet(sheets, 1, labels)))
        )
    return written


def write_report(
    c: Comparison, out: Path, sheet_dirs: dict[str, Path] | None = None
) -> tuple[str, list[Path]]:
    """Write every output into ``out``; returns ``(markdown, paths written)``. ``sheet_dirs``: per method, the
    run folder whose newest validation sheet goes into ``overlays.png``."""
    from geosapiens.io import atomic_write_file

    markdown = format_markdown(c)
    written = [
        atomic_write_file(out / "results.md", markdown),
        atomic_write_file(out / "results.csv", _csv_text(CSV_COLUMNS, csv_records(c))),
    ]
    if c.noise:
        noise = [n.__dict__ for n in c.noise.values()]
        written.append(atomic_write_file(out / "seed_noise.csv", _csv_text(NOISE_COLUMNS, noise)))
    written += _plots(c, out, sheet_dirs or {})
    return markdown, written
