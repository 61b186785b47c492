"""One flag style across the command tree: LightningCLI's ``--snake_case``, ``--kebab-case`` accepted too.

The tools' parsers are plain ``argparse``; :func:`both_styles` gives every long option its other spelling
as an alias (``--pck_norm`` and ``--pck-norm``, ``--no_progress`` and ``--no-progress``), snake case first in
``--help``. Light on purpose: ``--help`` imports nothing heavy.
"""

from __future__ import annotations

import argparse

__all__ = ["both_styles", "progress_switch"]


def _other(option: str) -> str:
    name = option[2:]
    return "--" + (name.replace("-", "_") if "-" in name else name.replace("_", "-"))


def progress_switch(parser: argparse.ArgumentParser, *aliases: str) -> None:
    """The one progress switch of every tool that draws a bar: ``--no_progress`` (``args.progress`` False),
    what ``--trainer.enable_progress_bar false`` is to the trainer commands."""
    parser.add_argument(
        "--no_progress", *aliases, dest="progress", action="store_false",
        help="no progress bars (the trainer commands: --trainer.enable_progress_bar false)",
    )  # fmt: skip


def both_styles(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` with each ``--long-option`` also accepted in the other style (snake case shown first)."""
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        extra = [o for o in map(_other, longs) if o not in parser._option_string_actions]
        for option in extra:
            parser._option_string_actions[option] = action
        if extra:
            shorts = [o for o in action.option_strings if not o.startswith("--")]
            action.option_strings = shorts + sorted(longs + extra, key=lambda o: "-" in o[2:])
    return parser
