"""``geosapiens fit|validate|test|predict --help`` at once: LightningCLI's help, rendered ahead and shipped.

Building LightningCLI's parser imports Lightning and every stage class (about 10 s on 2 cores), only to
print a page that is the same for every user of a release. The page of each verb is rendered once, by the
parser itself at a fixed width, and shipped as package data (``cli/help/<verb>.txt``); a test renders it
again and fails when the shipped page differs. Help that depends on the arguments (``--config F --help``,
``--model.help CLASS``) still comes from the parser.

Re-render after changing the CLI or a pin: ``python -m geosapiens.cli.trainer_help``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

WIDTH = 100  # columns the shipped pages are rendered at


def render_help(verb: str) -> str:
    """The help page LightningCLI's parser prints for ``geosapiens <verb> --help``, at :data:`WIDTH`."""
    from geosapiens.cli.main import trainer_cli

    columns, argv0 = os.environ.get("COLUMNS"), sys.argv[0]
    os.environ["COLUMNS"], sys.argv[0] = str(WIDTH), "geosapiens"  # the page's width and program name
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            trainer_cli([verb, "--help"])
    finally:
        sys.argv[0] = argv0
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Write every verb's page into the source tree's ``cli/help/`` (a development step)."""
    from geosapiens.cli.main import TRAINER_VERBS

    folder = Path(__file__).with_name("help")
    folder.mkdir(exist_ok=True)
    for verb in TRAINER_VERBS:
        (folder / f"{verb}.txt").write_text(render_help(verb), encoding="utf-8")
        print(f"wrote {folder / f'{verb}.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
