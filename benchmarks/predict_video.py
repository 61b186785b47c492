"""Video prediction on generated sequences: video vs image mode, box modes, TTA and smoothing.

Takes the demo's trained Geo-Sapiens model (``geosapiens demo`` first), writes each real-like MINI-RGBD-style
sequence of the demo data as an mp4 (mp4v, lossy: what a phone or camera gives) and as a lossless FFV1 avi,
predicts every variant through :class:`geosapiens.deploy.predict.Predictor` (with one box per video around the
infant's whole motion, as a clinician would draw it, unless the variant says otherwise) and prints, per
variant and
averaged over the sequences, PCK@0.1/0.2 (bbox max side) against the generator's ground truth, G-Error
(bone-length CV; ground truth's own value alongside), jitter (px/frame^2) and frames/s.

    python benchmarks/predict_video.py                         # runs/demo, demo_data
    python benchmarks/predict_video.py --runs /tmp/demo/runs --data /tmp/demo/data --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from geosapiens.data.formats.mini_rgbd import read_mini_rgbd
from geosapiens.data.synth.presets import PRESETS
from geosapiens.deploy.boxes import FixedBox, TrackedBox, WholeFrame
from geosapiens.deploy.predict import Predictor
from geosapiens.deploy.runtime import open_runner
from geosapiens.deploy.sources import open_clips
from geosapiens.metrics.pck import PCK
from geosapiens.metrics.temporal import g_error, jitter
from geosapiens.stages.tta import HeadAdaptation


def write_video(frames: list[Path], path: Path, fourcc: str, fps: float = 25.0) -> Path:
    first = cv2.imread(str(frames[0]))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, first.shape[1::-1])
    for f in frames:
        writer.write(cv2.imread(str(f)))
    writer.release()
    return path


def scores(keypoints: np.ndarray, truth) -> dict[str, float]:
    metric = PCK(thresholds=(0.1, 0.2), norm="bbox")
    gt = torch.as_tensor(np.stack([r.keypoints for r in truth])).double()
    labelled = torch.as_tensor(np.stack([r.labelled for r in truth]))
    metric.update(
        torch.as_tensor(keypoints), gt, labelled, bbox=torch.as_tensor(np.stack([r.bbox for r in truth]))
    )
    pck = metric.compute()
    return {
        "pck@0.1": 100 * float(pck["pck@0.1"]),
        "pck@0.2": 100 * float(pck["pck@0.2"]),
        "g_error": float(g_error(torch.as_tensor(keypoints), labelled)),
        "g_error_gt": float(g_error(gt, labelled)),
        "jitter": float(jitter(torch.as_tensor(keypoints), labelled)),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=Path, default=Path("runs/demo"), help="the demo's --out")
    p.add_argument("--data", type=Path, default=Path("demo_data"), help="the demo's --data")
    p.add_argument("--model", type=Path, default=None, help="default: <runs>/uda/seed0/checkpoints/best.ckpt")
    p.add_argument("--pose_prior", type=Path, default=None, help="default: <runs>/pose_vae/.../last.ckpt")
    p.add_argument("--tta_steps", type=int, default=5)
    p.add_argument("--tta_lr", type=float, default=1e-4)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = args.model or args.runs / "uda" / "seed0" / "checkpoints" / "best.ckpt"
    prior = args.pose_prior or args.runs / "pose_vae" / "checkpoints" / "last.ckpt"
    mini = args.data / "MINI-RGBD_web"
    for path in (model, prior, mini):
        if not path.exists():
            print(f"{path}: not found; run `geosapiens demo --out {args.runs} --data {args.data}` first")
            return 2
    styles = PRESETS["demo"].sequence_styles
    sequences = [f"{i + 1:02d}" for i, style in enumerate(styles) if style == "real-like"]
    runner = open_runner(model, runtime="torch")

    def variants(box: FixedBox) -> dict[str, tuple[str, Predictor]]:
        """Every variant with a clinician's one box per video (``box``), plus whole-frame and tracking."""
        b = args.batch_size

        def tta() -> HeadAdaptation:
            return HeadAdaptation(steps=args.tta_steps, lr=args.tta_lr, pose_prior=str(prior))

        k = args.tta_steps
        return {
            "images, given box": ("images", Predictor(runner, box, batch_size=b)),
            "ffv1 video, given box": ("ffv1", Predictor(runner, box, batch_size=b)),
            "mp4 video, given box": ("mp4", Predictor(runner, box, batch_size=b)),
            "mp4 video, whole frame": ("mp4", Predictor(runner, WholeFrame(), batch_size=b)),
            "mp4 video, tracked from the box (batch 1)": (
                "mp4",
                Predictor(runner, TrackedBox(box), batch_size=1),
            ),
            "mp4 video, given box, One-Euro": ("mp4", Predictor(runner, box, batch_size=b, smoothing={})),
            f"mp4 video, given box, TTA k={k}": (
                "mp4",
                Predictor(runner, box, batch_size=b, adaptation=tta()),
            ),
            f"mp4 video, given box, TTA k={k} + One-Euro": (
                "mp4",
                Predictor(runner, box, batch_size=b, adaptation=tta(), smoothing={}),
            ),
        }

    rows: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seq in sequences:
            frames = sorted((mini / seq / "rgb").glob("*.png"))
            truth = read_mini_rgbd(mini, [seq])
            inputs = {
                "images": open_clips([mini / seq / "rgb"], as_sequence=True, fps=25.0)[0],
                "ffv1": open_clips([write_video(frames, Path(tmp) / f"{seq}.avi", "FFV1")])[0],
                "mp4": open_clips([write_video(frames, Path(tmp) / f"{seq}.mp4", "mp4v")])[0],
            }
            boxes = np.stack([r.bbox for r in truth]).astype(np.float64)
            lo, hi = boxes[:, :2].min(0), (boxes[:, :2] + boxes[:, 2:]).max(0)
            box = FixedBox((*lo, *(hi - lo)))  # one box around the infant's whole motion, drawn once
            for name, (source, predictor) in variants(box).items():
                start = time.perf_counter()
                pred = predictor.predict_clip(inputs[source])
                fps = len(frames) / (time.perf_counter() - start)
                rows.setdefault(name, []).append(scores(pred.keypoints, truth) | {"fps": fps})
    print(f"model {model}, prior {prior}, sequences {sequences} ({len(frames)} frames each)")
    print(f"{args.threads} torch threads, batch {args.batch_size}, metrics averaged over the sequences")
    header = (
        f"{'variant':<48} {'PCK@0.1':>8} {'PCK@0.2':>8} {'G-Error':>8} {'G(gt)':>7} {'jitter':>7} {'fps':>7}"
    )
    print(header)
    print("-" * len(header))
    for name, values in rows.items():
        m = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
        print(
            f"{name:<48} {m['pck@0.1']:8.1f} {m['pck@0.2']:8.1f} {m['g_error']:8.4f} {m['g_error_gt']:7.4f} "
            f"{m['jitter']:7.2f} {m['fps']:7.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
