"""``geosapiens convert SRC OUT.safetensors``: an official Sapiens checkpoint as timm-named safetensors.

The output holds ``backbone.<timm name>`` (class-token free, ``pos_embed`` at the file's own grid) and
the head under its official prefix (``head.*`` for pose, ``decode_head.*`` for depth/normal), plus a json
header entry ``geosapiens`` = {format, preset, family, patch_padding, pos_embed_grid, num_outputs, source}.
Safetensors loads without unpickling, so a converted file is the safe way to ship weights read once from a
pickle.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from geosapiens.cli.style import both_styles
from geosapiens.models.sapiens_archs import FAMILIES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="geosapiens convert", description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="official .pth, *_torchscript.pt2 or .safetensors")
    parser.add_argument("out", type=Path, help="output .safetensors")
    parser.add_argument("--family", choices=sorted(FAMILIES), help="expected family (default: detected)")
    parser.add_argument(
        "--grid", type=int, nargs=2, metavar=("H", "W"), help="pos_embed grid when not inferable"
    )
    args = both_styles(parser).parse_args(argv)
    from geosapiens.errors import CheckpointError
    from geosapiens.models.official_checkpoint import load_checkpoint, save_converted

    if args.out.suffix != ".safetensors":
        parser.error(f"{args.out}: the output must end in .safetensors")
    try:
        meta = save_converted(load_checkpoint(args.src, family=args.family, source_grid=args.grid), args.out)
    except CheckpointError as err:
        print(f"geosapiens convert: {err}", file=sys.stderr)
        return 1
    print(f"{args.src} -> {args.out}: {json.dumps(meta)}")
    return 0
