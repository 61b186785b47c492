"""``geosapiens data check PATH``: the command over :func:`~geosapiens.data.check.run_checks`."""

from __future__ import annotations

import argparse
from pathlib import Path

from geosapiens.cli.style import both_styles
from geosapiens.data.check import FORMATS, run_checks


def main(argv: list[str] | None = None) -> int:
    """``geosapiens data check PATH [--format mini-rgbd|syrip]``; exit 0 when clean, 1 when any problem."""
    parser = argparse.ArgumentParser(
        prog="geosapiens data check",
        description="Validate a MINI-RGBD or SyRIP dataset and list every problem, one per line.",
    )
    parser.add_argument("path", type=Path, help="dataset root, SyRIP annotation JSON or MINI-RGBD sequence")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        dest="fmt",
        help="dataset format (default: detected from the layout)",
    )
    args = both_styles(parser).parse_args(argv)
    result = run_checks(args.path, args.fmt)
    for problem in result.problems:
        print(problem)
    print(result.summary())
    return 1 if result.problems else 0
