"""``geosapiens report RUN ...``: the command over :func:`~geosapiens.metrics.report.write_report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from geosapiens.cli.style import both_styles
from geosapiens.errors import DataError
from geosapiens.metrics.report import (
    SEED_FOLDER,
    compare,
    find_results,
    load_results,
    read_seed_noise,
    seed_folders,
    write_report,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geosapiens report",
        description="Turn finished runs (folders holding test_metrics.json, or seed<k>/ folders of them) "
        "into "
        "one comparison over seeds: mean +- std, paired differences to a baseline with 95% bootstrap CIs "
        "(markdown + CSV) and plots.",
    )
    p.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="a method's run, or its seed<k>/ folders"
    )
    p.add_argument("--out", type=Path, default=Path("report"), help="output folder (default: ./report)")
    p.add_argument("--names", nargs="+", help="one method name per RUN_DIR (default: the folder names)")
    p.add_argument("--source-only", metavar="NAME", help="the run trained on synthetic data only")
    p.add_argument("--oracle", metavar="NAME", help="the run trained on labelled real data")
    p.add_argument("--baseline", metavar="NAME", help="every method's baseline (default: --source-only)")
    p.add_argument(
        "--baseline-of",
        nargs="+",
        default=[],
        metavar="PATTERN=NAME",
        help="baseline of the methods whose name matches PATTERN (fnmatch; the first match wins), e.g. "
        "'Geo-Sapiens*=SHIFT-style'",
    )
    p.add_argument(
        "--seed-noise",
        nargs="+",
        default=[],
        metavar="FILE|METRIC=VALUE",
        help="seed-noise thresholds for a single-seed table: a seed_noise.csv of a multi-seed report, or "
        "pck@0.1=0.03 (fractions)",
    )
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    return p


def main(argv: list[str]) -> int:
    parser = both_styles(_parser())
    args = parser.parse_args(argv)
    expanded = [(d, seed, folder) for d in args.run_dirs for seed, folder in seed_folders(d)]
    default_names = {
        d: (d.resolve().parent.name if SEED_FOLDER.match(d.resolve().name) else d.resolve().name)
        if d.is_dir()
        else d.resolve().parent.name
        for d in args.run_dirs
    }
    names = args.names or [default_names[d] for d in args.run_dirs]
    if len(names) != len(args.run_dirs):
        parser.error(f"--names gives {len(names)} names for {len(args.run_dirs)} run folders")
    name_of = dict(zip(args.run_dirs, names, strict=True))
    if (args.source_only is None) != (args.oracle is None):
        parser.error("--source-only and --oracle go together")
    rules = []
    for item in args.baseline_of:
        pattern, sep, base = item.partition("=")
        if not sep or not pattern or not base:
            parser.error(f"--baseline-of {item!r}: expected PATTERN=NAME")
        rules.append((pattern, base))
    for flag, value in (
        ("--source-only", args.source_only),
        ("--oracle", args.oracle),
        ("--baseline", args.baseline),
        *(("--baseline-of", base) for _, base in rules),
    ):
        if value is not None and value not in names:
            parser.error(f"{flag} {value!r} is not one of the runs {sorted(set(names))}")
    if args.bootstrap < 1:
        parser.error("--bootstrap must be >= 1")
    try:
        rows = [
            row
            for d, seed, folder in expanded
            for row in load_results(find_results(folder), name_of[d], seed)
        ]
        comparison = compare(
            rows,
            args.baseline,
            rules,
            args.source_only,
            args.oracle,
            read_seed_noise(args.seed_noise),
            args.bootstrap,
            args.bootstrap_seed,
        )
        sheet_dirs: dict[str, Path] = {}
        for d, _, folder in expanded:
            sheet_dirs.setdefault(name_of[d], folder)
        markdown, _ = write_report(comparison, args.out, sheet_dirs)
    except DataError as e:
        print(f"geosapiens report: {e}", file=sys.stderr)
        return 2
    print(markdown, end="")
    return 0
