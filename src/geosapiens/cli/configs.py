"""``geosapiens configs``: the configs that ship with the package, listed, or copied out to edit and run.

Every config the README and the config headers name is package data (``geosapiens/configs/``; a checkout's
top-level ``configs/`` is a link to it), so an install from a wheel has them too. ``--config`` stays what it
is in every LightningCLI tool, a file path: ``geosapiens configs copy`` writes the shipped files to
``./configs``, after which the documented commands (``geosapiens fit --config configs/uda.yaml``) run as
written, on files the user owns and edits (and a run's saved ``config.yaml`` names a file that still exists).
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
from importlib import resources
from pathlib import Path

from geosapiens.cli.style import both_styles

__all__ = ["SHIPPED", "main", "missing_config", "names"]

# pip unpacks a wheel, so the package (and its data) is a folder on disk, which LightningCLI can read.
SHIPPED = Path(resources.files("geosapiens") / "configs")


def names(folder: Path = SHIPPED) -> list[str]:
    """Every config under ``folder``, as the relative path ``--config`` takes (``demo/uda.yaml``)."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.yaml"))


def missing_config(args: list[str]) -> str | None:
    """One line on the first ``--config`` file of a trainer command's ``args`` that does not exist, saying
    where the shipped configs are (an install from a wheel has no ``./configs`` until ``configs copy``); None
    when every one exists. Values that are not file names (jsonargparse also takes inline YAML) are left to
    the parser."""
    values = [b for a, b in zip(args, args[1:], strict=False) if a == "--config"]
    values += [a.removeprefix("--config=") for a in args if a.startswith("--config=")]
    for value in values:
        if re.fullmatch(r"[^\s{}\[\]]+\.(ya?ml|json)", value) and not Path(value).expanduser().is_file():
            shipped = Path(value).as_posix().removeprefix("configs/") in names()
            return f"--config {value}: no such file" + (
                "; it is a config the package ships: 'geosapiens configs copy' writes them to ./configs"
                if shipped
                else " (the configs the package ships: 'geosapiens configs')"
            )
    return None


def _summary(path: Path) -> str:
    """A config's first header line (what it is), without the comment sign."""
    first = path.read_text(encoding="utf-8").partition("\n")[0]
    return first.lstrip("# ").strip() if first.startswith("#") else ""


def _list() -> int:
    files = names()
    width = max(map(len, files))
    room = 110 - width - 4
    print(f"configs shipped with geosapiens (in {SHIPPED}):")
    for name in files:
        summary = _summary(SHIPPED / name)
        print(f"  {name:<{width}}  {summary if len(summary) <= room else summary[: room - 3] + '...'}")
    print(
        "\n'geosapiens configs copy' writes them to ./configs (to edit; then e.g. "
        "'geosapiens fit --config configs/uda.yaml')."
    )
    return 0


def _copy(dest: Path, overwrite: bool) -> int:
    if dest.exists() and not dest.is_dir():
        print(f"geosapiens configs copy: {dest} is a file, not a folder", file=sys.stderr)
        return 2
    files = names()
    edited = [n for n in files if (dest / n).exists() and not filecmp.cmp(SHIPPED / n, dest / n, False)]
    if edited and not overwrite:
        print(
            f"geosapiens configs copy: {len(edited)} file(s) in {dest} differ from the shipped ones: "
            f"{', '.join(edited)}; nothing copied (--overwrite replaces them)",
            file=sys.stderr,
        )
        return 2
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHIPPED / name, dest / name)
    replaced = f", {len(edited)} replaced" if edited else ""
    print(f"{len(files)} configs in {dest}{replaced}: geosapiens fit --config {dest / 'uda.yaml'} ...")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``geosapiens configs`` (list) and ``geosapiens configs copy [DEST] [--overwrite]``."""
    parser = argparse.ArgumentParser(
        prog="geosapiens configs",
        description="List the configs that ship with the package, or copy them to a folder (default "
        "./configs) to edit and pass to --config.",
    )
    actions = parser.add_subparsers(dest="action", metavar="[copy]")
    copy = actions.add_parser("copy", help="copy every shipped config to DEST, keeping the sub-folders")
    copy.add_argument("dest", nargs="?", type=Path, default=Path("configs"), help="folder (default: configs)")
    copy.add_argument(
        "--overwrite", action="store_true", help="replace files that differ from the shipped ones (edits)"
    )
    both_styles(copy)
    args = parser.parse_args(argv)
    return _copy(args.dest, args.overwrite) if args.action == "copy" else _list()
