"""``geosapiens data synth``: write procedural infant data in the MINI-RGBD and SyRIP formats."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from geosapiens.cli.style import both_styles, progress_switch
from geosapiens.data.records import MAPS_DIRNAME
from geosapiens.data.synth.generate import LEGACY_DIRNAMES, MINI_RGBD_DIRNAME, SYRIP_DIRNAME, generate
from geosapiens.data.synth.presets import PRESETS
from geosapiens.data.synth.preview import write_contact_sheet

# What ``--overwrite`` may delete: only what this command writes.
_OUTPUTS = (MINI_RGBD_DIRNAME, SYRIP_DIRNAME, "manifest.json", "preview.png")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geosapiens data synth",
        description="Render procedural infant stills and sequences with exact labels, in two styles "
        "(synthetic / real-like), written as a MINI-RGBD tree and SyRIP-style COCO JSON.",
        epilog="Presets: " + "; ".join(f"{n}: {p.description}" for n, p in PRESETS.items()),
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS), help="data set size (default: demo)")
    p.add_argument("--seed", type=int, default=0, help="master seed; same seed -> same bytes (default: 0)")
    p.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="rendering processes; the output does not depend on it (default: min(2, cores))",
    )
    p.add_argument(
        "--preview", action="store_true", help="also write OUT/preview.png, a contact sheet of both styles"
    )
    p.add_argument("--preview-only", action="store_true", help="write only the contact sheet")
    p.add_argument("--overwrite", action="store_true", help="replace earlier generator output in OUT")
    progress_switch(p, "--quiet")
    return p


def main(argv: list[str] | None = None) -> int:
    args = both_styles(_parser()).parse_args(argv)
    out: Path = args.out
    if args.seed < 0:
        print(f"geosapiens data synth: --seed must be >= 0, got {args.seed}", file=sys.stderr)
        return 2
    if args.preview_only:
        path = write_contact_sheet(out / "preview.png", args.seed)
        print(f"wrote {path}")
        return 0
    existing = [out / name for name in _OUTPUTS if (out / name).exists()]
    if (out / "manifest.json").is_file():  # our output: an older format's folders go with it
        existing += [out / name for name in LEGACY_DIRNAMES if (out / name).is_dir()]
    if existing and not args.overwrite:
        print(
            f"geosapiens data synth: {out} already holds generator output "
            f"({', '.join(p.name for p in existing)}); "
            "pass --overwrite to replace it",
            file=sys.stderr,
        )
        return 1
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    start = time.perf_counter()
    preset = PRESETS[args.preset]
    generate(out, preset, seed=args.seed, workers=args.workers, progress=args.progress)
    if args.preview:
        write_contact_sheet(out / "preview.png", args.seed)
    print(
        f"wrote {preset.num_stills} stills to {out / SYRIP_DIRNAME} and {len(preset.sequence_styles)} "
        f"sequences x {preset.sequence_frames} frames to {out / MINI_RGBD_DIRNAME} (maps in {MAPS_DIRNAME}/) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
