"""``geosapiens infer``, the command: its options, and the run of :class:`~.predict.Predictor` they describe.

Apart from :mod:`.predict` (the library) so that ``geosapiens infer --help`` imports neither torch nor
OpenCV: they come in when the command runs. Outputs are those listed in :mod:`.predict`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from geosapiens.cli.style import both_styles, progress_switch
from geosapiens.errors import CheckpointError, DataError

if TYPE_CHECKING:
    from geosapiens.deploy.predict import ClipPrediction
    from geosapiens.deploy.runtime import PoseRunner
    from geosapiens.deploy.sources import Clip
    from geosapiens.stages.tta import HeadAdaptation

__all__ = ["build_parser", "main"]


# -- command line --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geosapiens infer",
        description="Predict infant keypoints on images, folders of images and videos "
        "(for dataset-level prediction with a config, use `geosapiens predict --config ...`).",
    )
    p.add_argument("inputs", nargs="+", help="image files, folders of images, video files")
    p.add_argument("--model", required=True, help="a stage checkpoint (.ckpt) or an exported .onnx")
    p.add_argument(
        "--weights",
        default=None,
        choices=("model", "teacher"),
        help="network of a .ckpt (default: the one its stage evaluated, a mean teacher's EMA teacher)",
    )
    p.add_argument("--runtime", default=None, choices=("torch", "onnx"), help="default: by file type")
    p.add_argument("--out", default="predictions", help="output folder (default: predictions)")
    p.add_argument(
        "--box",
        default="whole",
        help="whole (default) | tracked | auto (no detector: coarse whole-frame pass, then the confident "
        "joints' box; tracked over videos) | x,y,w,h | a file of boxes (COCO annotations, JSON or CSV)",
    )
    p.add_argument("--initial_box", default=None, help="with --box tracked: the first frame's box spec")
    p.add_argument("--sequence", action="store_true", help="read each folder as the frames of one video")
    p.add_argument("--fps", type=float, default=None, help="frame rate of frame folders (default 25)")
    p.add_argument("--batch_size", type=int, default=8, help="frames per network call (default 8)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of the network")
    p.add_argument("--flip", action="store_true", help="flip test: average with the mirrored crop")
    p.add_argument("--pose_prior", default=None, help="pose VAE: TTA manifold term, implausibility")
    p.add_argument("--tta.steps", dest="tta_steps", type=int, default=0, help="TTA steps per batch (0 = off)")
    p.add_argument("--tta.lr", dest="tta_lr", type=float, default=1e-4, help="TTA Adam learning rate")
    p.add_argument(
        "--tta.manifold_margin",
        dest="tta_manifold_margin",
        type=float,
        default=0.0,
        help="prior error that costs nothing (e.g. the prior's 95th percentile on its training poses)",
    )
    p.add_argument("--tta.critic", dest="tta_critic", default=None, help="small-critic file: geometry terms")
    p.add_argument("--tta.normal_priors", dest="tta_normal_priors", default=None, help="normal priors JSON")
    p.add_argument(
        "--tta.geometry_teacher",
        dest="tta_geometry_teacher",
        default=None,
        help="geometry teacher checkpoint at the model's crop size: geo_heatmap / geo_pose, toward its "
        "keypoints on --tta.critic's maps",
    )
    p.add_argument("--smooth", action="store_true", help="One-Euro smoothing of video tracks")
    p.add_argument("--smooth.min_cutoff", dest="smooth_min_cutoff", type=float, default=1.0, help="Hz")
    p.add_argument("--smooth.beta", dest="smooth_beta", type=float, default=0.01, help="per px/s")
    p.add_argument("--quality.min_score", dest="min_score", type=float, default=0.3)
    p.add_argument("--quality.max_pose_error", dest="max_pose_error", type=float, default=0.3)
    p.add_argument("--overlay", action="store_true", help="write overlay videos / images")
    progress_switch(p)
    return p


def _adaptation(args: argparse.Namespace, clips: list[Clip], runner: PoseRunner) -> HeadAdaptation | None:
    if args.tta_steps <= 0:
        return None
    if args.tta_geometry_teacher and not args.tta_critic:
        raise ValueError("--tta.geometry_teacher reads the critic's maps: give --tta.critic too")
    from geosapiens.losses import objectives
    from geosapiens.stages.tta import HeadAdaptation

    critic = None
    if args.tta_critic:
        from geosapiens.models.small_critic import SmallCritic

        critic = SmallCritic.from_file(args.tta_critic)
    adaptation = HeadAdaptation(
        steps=args.tta_steps,
        lr=args.tta_lr,
        critic=critic,
        normal_priors=args.tta_normal_priors,
        pose_prior=args.pose_prior,
        geometry_teacher=args.tta_geometry_teacher,
        manifold_margin=args.tta_manifold_margin,
    )
    adaptation.weigh_as(getattr(runner, "hparams", {}))  # a mean teacher's own loss weights
    if args.tta_geometry_teacher and not set(objectives.TEACHER_TERMS) & set(adaptation.active):
        terms = " / ".join(objectives.TEACHER_TERMS)
        raise ValueError(f"--tta.geometry_teacher: {args.model}'s stage trained {terms} with no weight")
    usable = [t for t in adaptation.active if t != "temporal" or any(c.sequence for c in clips)]
    if not usable:
        raise ValueError(
            "--tta.steps needs an objective: --pose_prior (manifold), video input (temporal) or --tta.critic"
        )
    return adaptation


def main(argv: list[str] | None = None) -> int:
    args = both_styles(build_parser()).parse_args(argv)
    import numpy as np
    from tqdm import tqdm

    from geosapiens.deploy.boxes import BoxFile, TrackedBox, parse_box_source
    from geosapiens.deploy.predict import Predictor, log, result_rows, write_overlays
    from geosapiens.deploy.quality import QualityCheck
    from geosapiens.deploy.runtime import open_runner
    from geosapiens.deploy.sources import open_clips
    from geosapiens.io import atomic_write_file
    from geosapiens.metrics.prediction_files import write_predictions
    from geosapiens.models.pose_vae import PoseVAE
    from geosapiens.skeleton import COCO17

    smoothing = {"min_cutoff": args.smooth_min_cutoff, "beta": args.smooth_beta} if args.smooth else None
    try:
        clips = open_clips(args.inputs, as_sequence=args.sequence, fps=args.fps)
        runtime = args.runtime or ("onnx" if args.model.endswith(".onnx") else "torch")
        runner = open_runner(args.model, runtime=runtime, weights=args.weights, threads=args.threads)
        boxes = parse_box_source(args.box, args.initial_box)
        prior = PoseVAE.load(args.pose_prior) if args.pose_prior else None
        predictor = Predictor(
            runner,
            boxes,
            batch_size=args.batch_size,
            flip=args.flip,
            adaptation=_adaptation(args, clips, runner),
            smoothing=smoothing,
            quality=QualityCheck(args.min_score, prior, args.max_pose_error),
        )
    except (DataError, CheckpointError, ValueError) as err:
        print(f"geosapiens infer: {err}", file=sys.stderr)
        return 2

    out = Path(args.out)
    predictions, overlays, codecs = [], [], set()
    for clip in clips:
        with tqdm(
            total=len(clip), unit="frame", desc=clip.sequence or clip.path.name, disable=not args.progress
        ) as bar:
            try:
                pred = predictor.predict_clip(clip, bar)
            except DataError as err:
                print(f"geosapiens infer: {err}", file=sys.stderr)
                return 1
        predictions.append(pred)
        if args.overlay:
            files, codec = write_overlays(pred, out / "overlays")
            overlays += files
            codecs |= {codec} - {None}
        flagged = int(np.sum(pred.quality["low_confidence"] | pred.quality["implausible"]))
        log.info("%s: %d frames, %d flagged", clip.path, len(pred.paths), flagged)

    image_ids = boxes.image_ids if isinstance(boxes, BoxFile) else {}
    if isinstance(boxes, TrackedBox) and isinstance(boxes.initial, BoxFile):
        image_ids = boxes.initial.image_ids
    rows, images = result_rows(predictions, image_ids)
    write_predictions(out, rows, keypoint_names=COCO17.names)
    atomic_write_file(out / "images.json", json.dumps({"images": images}))
    print(_summary(predictions, len(clips), out, overlays, codecs))
    return 0


def _summary(predictions: list[ClipPrediction], inputs: int, out: Path, overlays: list, codecs: set) -> str:
    """What was predicted and written, in a few lines (not one per file)."""
    import numpy as np

    from geosapiens.deploy.predict import MP4V_NOTE

    frames = sum(len(p.paths) for p in predictions)
    flagged = sum(int(np.sum(p.quality["low_confidence"] | p.quality["implausible"])) for p in predictions)
    videos = sum(p.clip.sequence is not None for p in predictions)
    lines = [
        f"geosapiens infer: {frames} frames from {inputs} input(s), {flagged} flagged (low confidence or "
        "implausible pose)",
        f"  {out}/: coco_results.json, images.json" + (f", tracks.csv, tracks/ ({videos})" if videos else ""),
    ]
    if overlays:
        names = ", ".join("H.264" if c == "avc1" else MP4V_NOTE for c in sorted(codecs)) or "JPEG stills"
        lines.append(f"  {out}/overlays/: {len(overlays)} files; {names}")
    return "\n".join(lines)
