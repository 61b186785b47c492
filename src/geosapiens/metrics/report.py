"""``geosapiens report``: finished runs -> one results table (markdown + CSV) and plots.

Each ``RUN_DIR`` is searched recursively for ``test_metrics.json`` (written by
:class:`~geosapiens.callbacks.results.TestResultsWriter`; the newest one when there are several, e.g. after
re-testing) or is that file itself. A run becomes one row per test dataloader (Lightning suffixes
``/dataloader_idx_<i>`` when there are several) with:

- ``method`` (the run's name: ``--names`` or the folder name) and ``data`` (its DataModule class);
- ``AP``, ``AP50`` (logged as ``test/AP``, ``test/AP50``), ``PCK@0.05/0.1/0.2`` (``test/pck@<t>``) and,
  when present, ``G-Error`` (``test/g_error``); names are matched case-insensitively;
- with ``--source-only A --oracle B``: the sim-to-real gap reduction
  (:func:`~geosapiens.metrics.gap.gap_reduction`) of every headline metric, relative to those two runs on
  the same dataloader;
- per-joint ``PCK@0.1`` (``test/pck@0.1/<joint>``).

Outputs in ``--out``: ``results.md`` (a headline table and a per-joint table, values in %), ``results.csv``
(every column in one table, fractions), ``pck_curves.png`` (runs that saved a ``pck_curve``),
``per_joint_pck.png``, and ``overlays.png`` (each run's newest validation sheet ``images/epoch_*.png``).
The markdown is printed. Every file is written atomically.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from geosapiens import viz
from geosapiens.callbacks.results import RESULTS_FILENAME
from geosapiens.errors import DataError
from geosapiens.io import atomic_write_file
from geosapiens.metrics.gap import GapReduction, gap_reduction
from geosapiens.skeleton import COCO17

__all__ = [
    "RunResult",
    "find_results",
    "load_results",
    "build_table",
    "format_markdown",
    "write_report",
    "main",
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
PER_JOINT_METRIC = "pck@0.1"
PERCENT_COLUMNS = {"AP", "AP50", "PCK@0.05", "PCK@0.1", "PCK@0.2"}
_DATALOADER = re.compile(r"^(.*)/(dataloader_idx_\d+)$")
_MAX_OVERLAY_WIDTH = 960


@dataclass
class RunResult:
    """One row of the table: a run's metrics on one test dataloader."""

    name: str
    source: Path
    data: str
    group: str
    metrics: dict[str, float] = field(default_factory=dict)
    pck_curve: dict | None = None

    def value(self, key: str) -> float:
        v = self.metrics.get(key)
        return float("nan") if v is None else v


def find_results(run_dir: str | Path) -> Path:
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


def load_results(path: str | Path, name: str) -> list[RunResult]:
    """The rows of one results file (one per test dataloader), named ``name``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(path, f"not readable JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), dict):
        raise DataError(path, "not a test results file: no 'metrics' object")
    groups: dict[str, dict[str, float | None]] = {}
    for key, value in data["metrics"].items():
        if not key.startswith("test/"):
            continue
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise DataError(path, f"metric {key!r} is not a number: {value!r}")
        metric, group = key[len("test/") :], ""
        match = _DATALOADER.match(metric)
        if match:
            metric, group = match.groups()
        groups.setdefault(group, {})[metric.lower()] = None if value is None else float(value)
    if not groups:
        raise DataError(path, "no 'test/...' metrics in it")
    datamodule = (data.get("run") or {}).get("datamodule") or ""
    data_name = datamodule.rsplit(".", 1)[-1]
    curve = data.get("pck_curve") if isinstance(data.get("pck_curve"), dict) else None
    return [
        RunResult(
            name=name,
            source=path,
            data=f"{data_name} [{group}]".strip() if group else data_name,
            group=group,
            metrics=metrics,
            pck_curve=curve,
        )
        for group, metrics in sorted(groups.items())
    ]


def _gaps(
    rows: list[RunResult], source_only: str | None, oracle: str | None
) -> list[dict[str, GapReduction]]:
    """Per row, the gap reduction of each headline metric against the named runs on the same dataloader."""
    if source_only is None or oracle is None:
        return [{} for _ in rows]
    by_key = {(r.name, r.group): r for r in rows}
    out = []
    for r in rows:
        src, orc = by_key.get((source_only, r.group)), by_key.get((oracle, r.group))
        gaps = {}
        if src is not None and orc is not None:
            for column, key in HEADLINE:
                if key in r.metrics and key in src.metrics and key in orc.metrics:
                    gaps[column] = gap_reduction(r.value(key), src.value(key), orc.value(key))
        out.append(gaps)
    return out


def build_table(
    rows: list[RunResult], source_only: str | None = None, oracle: str | None = None
) -> tuple[list[str], list[str], list[dict[str, Any]], list[str]]:
    """The table as data.

    Returns:
        ``(headline columns, per-joint columns, records, notes)``; each record maps every column (and
        ``method``, ``data``, ``results_file``) to a float (fractions, NaN = not available) or a string;
        ``notes`` explain NaN gap values.
    """
    present = {key for r in rows for key in r.metrics}
    headline = [col for col, key in HEADLINE if key in present]
    gaps = _gaps(rows, source_only, oracle)
    gap_columns = [f"gap {col}" for col, _ in HEADLINE if any(col in g for g in gaps)]
    joint_columns = [name for name in COCO17.names if f"{PER_JOINT_METRIC}/{name}" in present]
    records, notes = [], []
    for r, g in zip(rows, gaps, strict=True):
        rec: dict[str, Any] = {"method": r.name, "data": r.data}
        rec |= {col: r.value(key) for col, key in HEADLINE if col in headline}
        for col in gap_columns:
            gap = g.get(col.removeprefix("gap "))
            rec[col] = float("nan") if gap is None else gap.value
            if gap is not None and gap.reason:
                notes.append(f"{r.name} {col}: {gap.reason}")
        rec |= {f"{PER_JOINT_METRIC.upper()} {n}": r.value(f"{PER_JOINT_METRIC}/{n}") for n in joint_columns}
        rec["results_file"] = str(r.source)
        records.append(rec)
    return headline + gap_columns, [f"{PER_JOINT_METRIC.upper()} {n}" for n in joint_columns], records, notes


def _cell(column: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None or not math.isfinite(value):
        return "n/a"
    value += 0.0  # no "-0.000"
    if column in PERCENT_COLUMNS or column.startswith("PCK@"):
        return f"{100 * value:.1f}"
    if column == "G-Error":
        return f"{value:.4f}"
    return f"{value:.3f}"


def _markdown_table(
    columns: list[str], records: list[dict[str, Any]], headers: list[str] | None = None
) -> list[str]:
    """A markdown table of ``records[columns]``, with display ``headers`` (default: the column names)."""
    lines = [
        "| " + " | ".join(headers or columns) + " |",
        "|" + "|".join("---" if c in ("method", "data") else "---:" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(c, rec[c]) for c in columns) + " |" for rec in records]
    return lines


def format_markdown(
    headline: list[str],
    joints: list[str],
    records: list[dict[str, Any]],
    notes: list[str],
    source_only: str | None = None,
    oracle: str | None = None,
) -> str:
    """``results.md``: headline table, gap legend and notes, per-joint table."""
    lines = ["## Results", "", *_markdown_table(["method", "data", *headline], records), ""]
    lines.append("AP, AP50 and PCK in %; G-Error is a coefficient of variation (lower is better).")
    if source_only is not None and oracle is not None:
        lines.append(
            f"gap X = (X - X[{source_only}]) / (X[{oracle}] - X[{source_only}]): 0 = source-only, 1 = oracle."
        )
    lines += [f"- {n}" for n in dict.fromkeys(notes)]
    if joints:
        lines += ["", f"## Per-joint {PER_JOINT_METRIC.upper()} (%)", ""]
        headers = ["method", "data", *[j.split(" ", 1)[1] for j in joints]]
        lines += _markdown_table(["method", "data", *joints], records, headers)
    return "\n".join(lines) + "\n"


def _csv_text(columns: list[str], records: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for rec in records:
        writer.writerow(
            ["" if isinstance(v, float) and not math.isfinite(v) else v for v in (rec[c] for c in columns)]
        )
    return buf.getvalue()


def _newest_sheet(run_dir: Path) -> Path | None:
    sheets = sorted(run_dir.rglob("images/epoch_*.png"), key=lambda p: (p.stat().st_mtime_ns, str(p)))
    return sheets[-1] if sheets else None


def write_report(
    rows: list[RunResult],
    run_dirs: list[Path],
    out: Path,
    source_only: str | None = None,
    oracle: str | None = None,
) -> tuple[str, list[Path]]:
    """Write every output into ``out``; returns ``(markdown, paths written)``."""
    headline, joints, records, notes = build_table(rows, source_only, oracle)
    markdown = format_markdown(headline, joints, records, notes, source_only, oracle)
    written = [
        atomic_write_file(out / "results.md", markdown),
        atomic_write_file(
            out / "results.csv", _csv_text(["method", "data", *headline, *joints, "results_file"], records)
        ),
    ]
    curves = {}
    for r in rows:
        if r.pck_curve and r.name not in curves:
            curves[r.name] = (
                r.pck_curve["thresholds"],
                [np.nan if v is None else v for v in r.pck_curve["pck"]],
            )
    if curves:
        fig = viz.plot_pck_curves(curves, title="PCK vs threshold")
        written.append(atomic_write_file(out / "pck_curves.png", viz.figure_to_png_bytes(fig)))
    if joints:
        several_data = len({rec["data"] for rec in records}) > 1
        bars = {
            f"{rec['method']} {rec['data']}" if several_data else rec["method"]: [rec[j] for j in joints]
            for rec in records
        }
        fig = viz.plot_per_joint_bars(
            bars, [j.split(" ", 1)[1] for j in joints], title=PER_JOINT_METRIC.upper()
        )
        written.append(atomic_write_file(out / "per_joint_pck.png", viz.figure_to_png_bytes(fig)))
    sheets, labels = [], []
    names = dict.fromkeys(r.name for r in rows)
    for name, run_dir in zip(names, run_dirs, strict=True):
        sheet = _newest_sheet(run_dir) if run_dir.is_dir() else None
        if sheet is not None:
            img = viz.read_png(sheet)
            if img.shape[1] > _MAX_OVERLAY_WIDTH:
                scale = _MAX_OVERLAY_WIDTH / img.shape[1]
                img = cv2.resize(
                    img, (_MAX_OVERLAY_WIDTH, round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA
                )
            sheets.append(img)
            labels.append(f"{name}: {sheet.name}")
    if sheets:
        written.append(
            atomic_write_file(out / "overlays.png", viz.encode_png(viz.contact_sheet(sheets, 1, labels)))
        )
    return markdown, written


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geosapiens report",
        description="Turn finished runs (folders holding test_metrics.json) into one results table "
        "(markdown + CSV) and plots.",
    )
    p.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="run folder (searched recursively)"
    )
    p.add_argument("--out", type=Path, default=Path("report"), help="output folder (default: ./report)")
    p.add_argument("--names", nargs="+", help="one method name per RUN_DIR (default: the folder names)")
    p.add_argument("--source-only", metavar="NAME", help="the run trained on synthetic data only")
    p.add_argument("--oracle", metavar="NAME", help="the run trained on labelled real data")
    return p


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    names = args.names or [d.resolve().name if d.is_dir() else d.resolve().parent.name for d in args.run_dirs]
    if len(names) != len(args.run_dirs):
        parser.error(f"--names gives {len(names)} names for {len(args.run_dirs)} run folders")
    if len(set(names)) != len(names):
        parser.error(f"method names must be unique, got {names}: pass --names")
    if (args.source_only is None) != (args.oracle is None):
        parser.error("--source-only and --oracle go together")
    for flag, value in (("--source-only", args.source_only), ("--oracle", args.oracle)):
        if value is not None and value not in names:
            parser.error(f"{flag} {value!r} is not one of the runs {names}")
    try:
        rows = [
            row for d, n in zip(args.run_dirs, names, strict=True) for row in load_results(find_results(d), n)
        ]
        markdown, _ = write_report(rows, list(args.run_dirs), args.out, args.source_only, args.oracle)
    except DataError as e:
        print(f"geosapiens report: {e}", file=sys.stderr)
        return 2
    print(markdown, end="")
    return 0
