"""Speed of the procedural infant renderer (one core, 640x480) and wall time of the demo preset.

    python benchmarks/synth_render.py              # renderer fps per style, then the demo preset (2 workers)
    python benchmarks/synth_render.py --no-demo

Frames/s are reported from wall time and from this process's CPU time: on a shared machine the wall
figure drops with the load, the CPU figure is what one free core delivers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from geosapiens.data.synth.generate import generate  # noqa: E402
from geosapiens.data.synth.presets import PRESETS  # noqa: E402
from geosapiens.data.synth.scene import render_frame, sample_sequence, sample_still, stream  # noqa: E402
from geosapiens.data.synth.writers import write_mini_rgbd_frame  # noqa: E402


def _timed(fn, items) -> tuple[float, float]:
    """(wall fps, cpu fps) of ``fn`` over ``items``."""
    w0, c0 = time.perf_counter(), time.process_time()
    for item in items:
        fn(item)
    return len(items) / (time.perf_counter() - w0), len(items) / (time.process_time() - c0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=40, help="frames per measurement")
    p.add_argument("--no-demo", action="store_true", help="skip timing the demo preset")
    p.add_argument("--workers", type=int, default=2, help="workers for the demo preset")
    args = p.parse_args(argv)
    cv2.setNumThreads(1)

    print(f"renderer at 640x480, one thread, {args.frames} frames each")
    print(f"{'what':<44}{'wall fps':>9}{'cpu fps':>9}")
    for style in ("synthetic", "real-like"):
        seeds = [np.random.SeedSequence([0, i]) for i in range(args.frames)]
        scenes = [(sample_still(ss, style, (640, 480)), stream(ss, "noise")) for ss in seeds]
        wall, cpu = _timed(lambda s: render_frame(*s), scenes)
        print(f"{'still, ' + style + ' (render only)':<44}{wall:9.1f}{cpu:9.1f}")
    for style in ("synthetic", "real-like"):
        scenes = sample_sequence(np.random.SeedSequence([0, 1]), style, args.frames)
        with tempfile.TemporaryDirectory() as tmp:
            items = list(enumerate(scenes))
            wall, cpu = _timed(
                lambda item: write_mini_rgbd_frame(
                    Path(tmp), "01", item[0], render_frame(item[1], np.random.default_rng(item[0]))
                ),
                items,
            )
        print(f"{'sequence frame, ' + style + ' (render + write)':<44}{wall:9.1f}{cpu:9.1f}")

    if not args.no_demo:
        preset = PRESETS["demo"]
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            generate(Path(tmp) / "demo", preset, seed=0, workers=args.workers, progress=False)
            wall = time.perf_counter() - t0
            size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file()) / 2**20
        print(
            f"demo preset ({preset.num_stills} stills at {preset.still_size[0]}x{preset.still_size[1]}, "
            f"{len(preset.sequence_styles)}x{preset.sequence_frames} frames at 640x480, maps included): "
            f"{wall:.1f} s wall with {args.workers} workers, {size:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
