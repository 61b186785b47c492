"""``geosapiens export CKPT --out MODEL.onnx``: the command over :func:`~.deploy.export.export_onnx`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from geosapiens.cli.style import both_styles
from geosapiens.deploy.export import DEFAULT_OPSET, TOLERANCE, check_onnx, export_onnx
from geosapiens.errors import GeoSapiensError

if TYPE_CHECKING:
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geosapiens export",
        description="Export a stage checkpoint's pose network to ONNX (dynamic batch) and check that ONNX "
        "Runtime's heatmaps equal PyTorch's on random crops at batch 1 and 3.",
    )
    p.add_argument("checkpoint", type=Path, help="a Lightning checkpoint of a pose stage (best.ckpt...)")
    p.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    p.add_argument(
        "--weights",
        choices=("model", "teacher"),
        default=None,
        help="which network: the trained model or a mean teacher's EMA teacher (default: the one the stage "
        "evaluated, i.e. the EMA teacher of a mean-teacher run)",
    )
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default: {DEFAULT_OPSET})")
    p.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime vs PyTorch comparison")
    p.add_argument("--seed", type=int, default=0, help="seed of the random check inputs (default: 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = both_styles(_parser()).parse_args(argv)
    import numpy as np
    import torch

    from geosapiens.models.stage_checkpoint import evaluated_weights, pose_model_from_checkpoint

    if args.out.suffix != ".onnx":
        print(f"geosapiens export: --out {args.out} must end in .onnx", file=sys.stderr)
        return 2
    try:
        model, input_size, hparams = pose_model_from_checkpoint(args.checkpoint, args.weights)
    except GeoSapiensError as err:
        print(f"geosapiens export: {err}", file=sys.stderr)
        return 2
    weights = args.weights or evaluated_weights(hparams)
    meta = {"source_checkpoint": str(args.checkpoint.resolve()), "weights": weights}
    export_onnx(model, input_size, args.out, opset=args.opset, metadata=meta)
    h, w = input_size
    size = args.out.stat().st_size / 2**20
    k = model.num_keypoints
    print(f"wrote {args.out} ({size:.1f} MiB, input {h}x{w}, {k} keypoints, opset {args.opset})")
    if args.no_check:
        return 0
    generator = torch.Generator().manual_seed(args.seed)
    worst = 0.0
    for batch in (1, 3):
        images = torch.randn(batch, 3, *input_size, generator=generator)
        diff = check_onnx(model, args.out, images)
        worst = max(worst, diff)
        print(f"batch {batch}: max abs difference ONNX Runtime vs PyTorch {diff:.3g}")
    if not np.isfinite(worst) or worst > TOLERANCE:
        message = f"geosapiens export: {args.out} differs from PyTorch by {worst:.3g} > {TOLERANCE:g}"
        print(message, file=sys.stderr)
        return 1
    return 0
