"""Streaming inference cost on 2 CPU threads, and the distilled student's accuracy gap to its teacher.

For the distilled student and the full (tiny) teacher, each on PyTorch and on ONNX Runtime, it times single
frames (batch 1) end to end, one after the other as a video would arrive, and prints frames/s and the
latency mean, p50 and p95 in ms. One frame's time covers: the box crop warp (UDP affine, OpenCV),
normalisation to a tensor, the network, heatmap decoding (UDP + DARK refinement) and the mapping of the
keypoints back to image pixels. It excludes reading/decoding the image (they are read into memory first, as
a video decoder would hand them over) and finding the box (each frame's ground-truth box is given, the
``predict`` box option (a)). Threads: ``torch.set_num_threads(2)`` and ONNX Runtime
``intra_op_num_threads=2``. On cores shared with other busy processes, two threads of torch's small
per-frame ops (the decoding's blur and argmax, torch's own network) can be many times slower than one:
their OpenMP threads wait for each other; compare ``--threads 1`` before blaming the network.

The ONNX models are exported from the checkpoints into a temporary folder (``--onnx-dir`` keeps them) and
checked against PyTorch first. PCK@0.1 (normalised by the ground-truth box's longer side, no flip test, as
one streaming pass computes it) comes from the same timed pipeline over every person of the real-like test
split (validate100 of the demo data), so the gap is the one a deployment would see.

    python benchmarks/infer.py                          # after `geosapiens demo` (+ the distillation run)
    python benchmarks/infer.py --teacher runs/demo/uda/seed0/checkpoints/best.ckpt --student S.ckpt
        --frames 300

(with the package installed; otherwise prefix ``PYTHONPATH=src``). Targets (issue #8): the student >= 30
frames/s, PCK gap to the teacher <= 3 points.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FPS_TARGET, GAP_TARGET = 30.0, 3.0  # frames/s of the student; PCK@0.1 points student below teacher
VALIDATE100 = "syrip/annotations/validate100/person_keypoints_validate_infant.json"


@dataclass
class Result:
    model: str
    runtime: str
    input_size: tuple[int, int]
    latencies_ms: list[float]
    pck: float

    def row(self) -> str:
        import numpy as np

        lat = np.asarray(self.latencies_ms)
        h, w = self.input_size
        p50, p95 = np.percentile(lat, [50, 95])
        return (
            f"{self.model:<8} {self.runtime:<6} {f'{h}x{w}':>7} {1000.0 / lat.mean():>9.1f} "
            f"{lat.mean():>8.2f} {p50:>7.2f} {p95:>7.2f} {100 * self.pck:>8.1f}"
        )


HEADER = (
    f"{'model':<8} {'engine':<6} {'input':>7} {'frames/s':>9} {'mean ms':>8} {'p50 ms':>7} {'p95 ms':>7} "
    f"{'PCK@0.1':>8}"
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", type=Path, default=Path("runs/demo/uda/seed0/checkpoints/best.ckpt"))
    p.add_argument("--teacher-weights", choices=("model", "teacher"), default=None)
    p.add_argument("--student", type=Path, default=Path("runs/demo/distill/seed0/checkpoints/best.ckpt"))
    p.add_argument("--student-weights", choices=("model", "teacher"), default=None)
    p.add_argument("--data", type=Path, default=Path("demo_data"), help="the demo data (default: demo_data)")
    p.add_argument("--annotation", type=Path, help=f"test annotation file (default: DATA/{VALIDATE100})")
    p.add_argument("--frames", type=int, default=200, help="timed frames per row (default 200)")
    p.add_argument("--warmup", type=int, default=20, help="untimed frames first (default 20)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads of both engines (default 2)")
    p.add_argument("--onnx-dir", type=Path, help="keep the exported ONNX files here (default: a temp folder)")
    return p


def _missing(args: argparse.Namespace) -> list[str]:
    files = {"--teacher": args.teacher, "--student": args.student, "--annotation": args.annotation}
    return [
        f"missing {path}: run `geosapiens demo` (with --out / --data matching these paths) to produce it, "
        f"or pass {option}"
        for option, path in files.items()
        if not path.is_file()
    ]


def _stream(runner, codec, frames, records, warmup: int, count: int):
    """Run the per-frame pipeline over ``count`` frames (cycling through the records) after ``warmup``
    untimed ones; returns the per-frame latencies (ms) and the predictions of the first pass."""
    import numpy as np
    import torch

    from geosapiens.affine import apply_affine, invert_affine
    from geosapiens.data.crop import canonical_affine, warp_image
    from geosapiens.models.preprocess import to_tensor

    def one(index: int) -> np.ndarray:
        record = records[index % len(records)]
        affine = canonical_affine(record.bbox, runner.input_size)
        crop = warp_image(frames[record.image_path], affine, runner.input_size)
        keypoints, _ = codec.decode(runner(to_tensor(crop)[None]))
        back = torch.from_numpy(invert_affine(affine).astype(np.float32))[None]
        return apply_affine(keypoints, back)[0].numpy()

    for i in range(warmup):
        one(i)
    latencies, preds = [], {}
    for i in range(max(count, len(records))):
        start = time.perf_counter()
        keypoints = one(i)
        if i < count:
            latencies.append(1000.0 * (time.perf_counter() - start))
        if i < len(records):
            preds[i] = keypoints
    return latencies, np.stack([preds[i] for i in range(len(records))])


def _pck(preds, records) -> float:
    import numpy as np
    import torch

    from geosapiens.metrics.pck import PCK

    metric = PCK(thresholds=(0.1,), norm="bbox")
    metric.update(
        torch.from_numpy(preds),
        torch.from_numpy(np.stack([r.keypoints for r in records])),
        torch.from_numpy(np.stack([r.labelled for r in records])),
        bbox=torch.from_numpy(np.stack([r.bbox for r in records])),
    )
    return float(metric.compute()["pck@0.1"])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.annotation = args.annotation or args.data / VALIDATE100
    missing = _missing(args)
    if missing:
        print("\n".join(missing), file=sys.stderr)
        return 2

    import torch

    from geosapiens.data.formats.syrip import read_syrip
    from geosapiens.data.images import read_image
    from geosapiens.deploy.export import TOLERANCE, check_onnx, export_onnx
    from geosapiens.deploy.runtime import OnnxRunner, TorchRunner
    from geosapiens.models.codec import UDPHeatmapCodec
    from geosapiens.models.stage_checkpoint import evaluated_weights, pose_model_from_checkpoint

    torch.set_num_threads(args.threads)
    root = args.annotation.parent.parent.parent  # <root>/annotations/<split>/<file>.json
    records = read_syrip(root, args.annotation)
    frames = {r.image_path: read_image(r.image_path) for r in records}
    print(
        f"{len(records)} people in {len(frames)} images of {args.annotation}; {args.frames} timed frames "
        f"(batch 1) per row after {args.warmup} untimed; {args.threads} threads; torch {torch.__version__}"
    )

    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_dir = args.onnx_dir or Path(tmp)
        onnx_dir.mkdir(parents=True, exist_ok=True)
        for name, ckpt, weights in (
            ("student", args.student, args.student_weights),
            ("teacher", args.teacher, args.teacher_weights),
        ):
            model, size, hparams = pose_model_from_checkpoint(ckpt, weights)
            weights = weights or evaluated_weights(hparams)
            path = export_onnx(
                model,
                size,
                onnx_dir / f"{name}.onnx",
                metadata={"source_checkpoint": str(ckpt.resolve()), "weights": weights},
            )
            diff = max(check_onnx(model, path, torch.randn(b, 3, *size)) for b in (1, 3))
            params = sum(p.numel() for p in model.parameters()) / 1e6
            verdict = "ok" if diff <= TOLERANCE else f"ABOVE {TOLERANCE:g}"
            print(
                f"{name}: {ckpt} ({weights}), {hparams['backbone']} {params:.2f} M params, "
                f"{size[0]}x{size[1]}; ONNX vs PyTorch max abs diff {diff:.2g} ({verdict})"
            )
            codec = UDPHeatmapCodec(size, (size[0] // 4, size[1] // 4))
            for runtime, runner in (
                ("torch", TorchRunner(model, size, str(ckpt))),
                ("onnx", OnnxRunner(path, threads=args.threads)),
            ):
                latencies, preds = _stream(runner, codec, frames, records, args.warmup, args.frames)
                results.append(Result(name, runtime, size, latencies, _pck(preds, records)))

    print(f"\n{HEADER}")
    for result in results:
        print(result.row())
    by = {(r.model, r.runtime): r for r in results}
    gap = 100 * (by["teacher", "torch"].pck - by["student", "torch"].pck) + 0.0  # no "-0.0"
    fps = max(1000.0 / (sum(by["student", rt].latencies_ms) / args.frames) for rt in ("torch", "onnx"))
    print(
        f"\nstudent PCK@0.1 gap to the teacher: {gap:.1f} points (target <= {GAP_TARGET:g}: "
        f"{'met' if gap <= GAP_TARGET else 'NOT met'})"
    )
    verdict = "met" if fps >= FPS_TARGET else "NOT met"
    print(f"student best frames/s: {fps:.1f} (target >= {FPS_TARGET:g}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
