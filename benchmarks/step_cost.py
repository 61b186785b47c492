"""What one training step costs per stage, measured and counted, on the same model and per-domain batch B.

    (a) supervised      SupervisedPose: student forward + backward on B source crops
    (b) mean teacher    MeanTeacherAdaptation, cons only: student on B source + B strong target crops in one
                        forward, EMA teacher forward on B weak crops (no grad), EMA update after the step
    (c) (b) + cached    + geo_depth, geo_norm and manifold; critic maps read from a critic cache (built here
                        with the oracle critic on generated data), a pose VAE and normal priors
    (d) (b) + online    + geo_depth and geo_norm with a critic run on every strong view: a stand-in of
                        SapiensCritic's shape (a depth and a normal model, each a ``--critic-backbone``
                        backbone, by default the pose one, with the official Sapiens depth / normal head,
                        random weights) at the pose input size
    (e) (c) + geo_pose  + geo_pose with a geometry teacher (the pose backbone on the critic maps' channels,
                        random weights) whose keypoints the stage computes once per cached target image

Each runs through a real ``lightning.Trainer`` (optimiser, schedulers, callbacks, EMA update) on batches
prepared beforehand, so data loading is not timed. Time per step is the median interval between batch starts
after the warm-up steps; FLOPs are counted over one further whole step with
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention; FLOPs = 2 x MACs).
In FLOP units of "one student forward on one image" = 1, a step costs (a) 3B (forward 1 + backward 2), (b) 6B
+ 1B (teacher) = 7B, so (b)/(a) ~ 7/3 before the head's and the losses' small extras; (d) adds the critic's
forward (two backbones). (e) adds one no-grad teacher forward per target image per run, not per step: the
prepared target batches repeat 6 images of the tiny preset, at the defaults all seen in the warm-up steps, so
its timed steps are the steady state of any run longer than an epoch; (e) / (b) is printed against issue
#13's target of 1.10.

    python benchmarks/step_cost.py   # CPU: sapiens_tiny, 128x128, B=4, 10 steps; ~3 min on 2 cores
    python benchmarks/step_cost.py --backbone sapiens_0.6b --size 1024 --device cuda   # bf16-mixed
    python benchmarks/step_cost.py --backbone sapiens_0.6b --critic-backbone sapiens_1b --size 1024 \
        --batch 2 --device cuda                     # the paper setting, as benchmarks/gpu_check.py runs it
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from geosapiens.cli.main import main as geosapiens_main
from geosapiens.data.datamodules import AdaptationDataModule, SyRIPRealDataModule, SyRIPSynthDataModule
from geosapiens.data.geometry_inputs import GEOMETRY_CHANNELS
from geosapiens.models.backbone import create_backbone
from geosapiens.models.heads import SapiensDepthHead, SapiensNormalHead
from geosapiens.models.normal_prior import NormalPriors, save_normal_priors
from geosapiens.models.pose_vae import PoseVAE
from geosapiens.models.sapiens_critic import _WholeImageCritic
from geosapiens.models.stage_checkpoint import VALIDATION_CONFIDENCE
from geosapiens.stages import MeanTeacherAdaptation, SupervisedPose

TRAIN = "annotations/200R_1000S/person_keypoints_train_infant.json"


class StandInSapiensCritic(_WholeImageCritic):
    """SapiensCritic's compute without its checkpoints: depth and normal models, each ``preset`` backbone +
    official head, randomly initialised (the cost of a forward does not depend on the weights)."""

    def __init__(self, preset: str, input_size: tuple[int, int]) -> None:
        super().__init__(input_size)
        depth_net = create_backbone(preset, img_size=input_size)
        normal_net = create_backbone(preset, img_size=input_size)
        self.depth_model = torch.nn.Sequential(depth_net, SapiensDepthHead(depth_net.out_channels))
        self.normal_model = torch.nn.Sequential(normal_net, SapiensNormalHead(normal_net.out_channels))
        self.freeze()

    def predict(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.depth_model(images), self.normal_model(images)


def generated_roots(data: Path) -> dict[str, Path]:
    """The SyRIP and MINI-RGBD roots of ``geosapiens data synth`` output, under either folder layout (the
    generator's ``syrip``/``mini_rgbd`` or the paper configs' ``SyRIP``/``MINI-RGBD_web``)."""
    roots = {}
    for key, names in (("syrip", ("SyRIP", "syrip")), ("mini_rgbd", ("MINI-RGBD_web", "mini_rgbd"))):
        found = [data / n for n in names if (data / n).is_dir()]
        if not found:
            raise FileNotFoundError(f"{data}: no {' or '.join(names)} folder of generated data")
        roots[key] = found[0]
    return roots


def prepare(root: Path, size: int, preset: str = "tiny", workers: int | None = None) -> dict[str, Path]:
    """Generated data, an oracle critic cache at ``size``, normal priors and a pose VAE file."""
    data = root / "data"
    synth = ["data", "synth", "--out", str(data), "--preset", preset, "--seed", "0", "--quiet"]
    assert geosapiens_main(synth + (["--workers", str(workers)] if workers else [])) == 0
    roots = generated_roots(data)
    syrip, cache = roots["syrip"], root / "cache"
    args = ["critics", "cache", "--critic", "oracle", "--data", str(syrip), "--annotation", TRAIN]
    assert (
        geosapiens_main([*args, "--out", str(cache), "--input-size", str(size), str(size), "--no-progress"])
        == 0
    )
    # Random priors and VAE weights cost exactly what fitted ones do.
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(17, 3)).astype(np.float32)
    priors = NormalPriors(
        mean=mean / np.linalg.norm(mean, axis=1, keepdims=True),
        kappa=np.full(17, 4.0, np.float32),
        count=np.full(17, 10, np.int64),
        critic="random (benchmark)",
    )
    save_normal_priors(root / "priors.json", priors)
    PoseVAE().save(root / "vae.safetensors")
    files = {"cache": cache, "priors": root / "priors.json", "vae": root / "vae.safetensors"}
    return {**roots, **files, "root": root}


def geometry_teacher(path: Path, backbone: str, size: int) -> Path:
    """A geometry teacher checkpoint as ``configs/demo/geometry_teacher.yaml``'s stage writes it: ``backbone``
    on the critic maps' channels at ``size``, random weights (a forward costs what a trained one does)."""
    kwargs = {"in_chans": len(GEOMETRY_CHANNELS)}
    stage = SupervisedPose(
        backbone=backbone, backbone_kwargs=kwargs, input_size=(size, size), flip_test=False
    )
    # no validation, so no confidence to gate images by: 0 keeps every image (objective.geo_image_confidence)
    checkpoint = {"hyper_parameters": dict(stage.hparams), "state_dict": stage.state_dict()}
    torch.save({**checkpoint, VALIDATION_CONFIDENCE: 0.0}, path)
    return path


def adaptation_batches(syrip: Path, size: int, batch: int, count: int, cache: Path) -> list[dict]:
    """``count`` real training batches ``{"source": ..., "target": ...}`` from the adaptation DataModule."""
    common = {"input_size": (size, size), "batch_size": batch, "num_workers": 0, "pin_memory": False}
    common["persistent_workers"] = False
    dm = AdaptationDataModule(
        source=SyRIPSynthDataModule(
            root=str(syrip), train_file="annotations/1000S/person_keypoints_train_infant.json", **common
        ),
        target=SyRIPRealDataModule(
            root=str(syrip), mode="unlabelled", val_file=None, critic_cache=str(cache), **common
        ),
    )
    dm.setup("fit")
    out: list[dict] = []
    while len(out) < count:
        for item in dm.train_dataloader():
            out.append(item[0] if isinstance(item, tuple) else item)
            if len(out) == count:
                break
    return out


class StepTimer(L.Callback):
    """Interval between successive batch starts (one whole step: forward, backward, optimiser, callbacks);
    the last step is additionally run under a FLOP counter."""

    def __init__(self, device: torch.device, counted_step: int) -> None:
        self.device, self.counted_step = device, counted_step
        self.starts: list[float] = []
        self.counter = FlopCounterMode(display=False)
        self.flops = 0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(self._now())
        if batch_idx == self.counted_step:
            self.counter.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.counted_step:
            self.counter.__exit__(None, None, None)
            self.flops = self.counter.get_total_flops()


def run_stage(
    stage: L.LightningModule, batches: list, warmup: int, device: torch.device
) -> tuple[float, int]:
    """(median seconds per step over the timed steps, FLOPs of one step)."""
    timer = StepTimer(device, counted_step=len(batches) - 1)
    trainer = L.Trainer(
        accelerator=device.type,
        devices=1,
        max_steps=len(batches),
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    trainer.fit(stage, train_dataloaders=loader)
    intervals = np.diff(timer.starts)[warmup : len(batches) - 1]  # the counted step is not timed
    return float(statistics.median(intervals)), int(timer.flops)


def build(kind: str, args: argparse.Namespace, paths: dict[str, Path]) -> L.LightningModule:
    common = {"backbone": args.backbone, "input_size": (args.size, args.size), "flip_test": False}
    if kind == "a":
        return SupervisedPose(**common)
    off = {"weight": 0.0, "start_epoch": 0}
    terms = {"cons": {"weight": 1.0, "start_epoch": 0}, "manifold": off, "geo_depth": off, "geo_norm": off}
    terms["geo_body"] = off
    extra: dict = {}
    if kind in ("c", "d", "e"):
        terms |= {
            "geo_depth": {"weight": 0.1, "start_epoch": 0},
            "geo_norm": {"weight": 0.1, "start_epoch": 0},
        }
        extra["normal_priors"] = str(paths["priors"])
    if kind in ("c", "e"):  # the stand-in critic of (d) has no body mask, so no silhouette to pull towards
        terms["geo_body"] = {"weight": 1.0, "start_epoch": 0}
        terms["manifold"] = {"weight": 0.05, "start_epoch": 0}
        extra["pose_prior"] = str(paths["vae"])
    if kind == "e":
        terms["geo_pose"] = {"weight": 0.225, "start_epoch": 0}
        teacher = paths["root"] / f"geometry_teacher_{args.size}.ckpt"
        extra["geometry_teacher"] = str(geometry_teacher(teacher, args.backbone, args.size))
    if kind == "d":
        extra["critic"] = StandInSapiensCritic(args.critic_backbone or args.backbone, (args.size, args.size))
    return MeanTeacherAdaptation(loss_terms=terms, ema_decay=0.999, **common, **extra)


LABELS = {
    "a": "(a) supervised",
    "b": "(b) mean teacher (cons)",
    "c": "(c) (b) + geo + manifold, cached critic",
    "d": "(d) (b) + geo, online critic",
    "e": "(e) (c) + geo_pose, geometry teacher",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="sapiens_tiny", help="pose backbone preset (or timm:NAME)")
    parser.add_argument(
        "--critic-backbone",
        default=None,
        help="backbone preset of the online critic's two models in (d); default: --backbone",
    )
    parser.add_argument("--size", type=int, default=128, help="square crop size")
    parser.add_argument("--batch", type=int, default=4, help="images per domain per step (B)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stages", default="abcde", help="subset of a, b, c, d, e")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, paths: dict[str, Path]) -> dict[str, tuple[float, int]]:
    """{stage: (median seconds per step, FLOPs per step)} for ``args.stages`` on ``prepare``'s files."""
    device = torch.device(args.device)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*ckpt_path.*|.*LeafSpec.*|.*val_dataloader.*")
    L.seed_everything(0, verbose=False)
    count = args.warmup + args.steps + 1
    batches = adaptation_batches(paths["syrip"], args.size, args.batch, count, paths["cache"])
    rows = {}
    for kind in args.stages:
        stage = build(kind, args, paths)
        data = [b["source"] for b in batches] if kind == "a" else batches
        rows[kind] = run_stage(stage, data, args.warmup, device)
        del stage
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def table(args: argparse.Namespace, rows: dict[str, tuple[float, int]]) -> str:
    """The printed table: seconds and GFLOP per step, and both as ratios to (a) (or the first stage run)."""
    threads = torch.get_num_threads() if args.device == "cpu" else None
    lines = [
        f"step cost: {args.backbone} at {args.size}x{args.size}, B={args.batch} per domain, {args.device}"
        + (f" ({threads} threads)" if threads else " (bf16-mixed)")
        + f", median of {args.steps} steps after {args.warmup} warm-up"
    ]
    if "d" in rows:
        critic = args.critic_backbone or args.backbone
        lines.append(f"(d) critic: stand-in SapiensCritic = 2 x ({critic} + Sapiens depth/normal head)")
    base_t, base_f = rows.get("a", next(iter(rows.values())))
    lines.append(f"\n{'stage':<42}{'s/step':>9}{'GFLOP/step':>12}{'time ratio':>12}{'FLOP ratio':>12}")
    for kind, (seconds, flops) in rows.items():
        lines.append(
            f"{LABELS[kind]:<42}{seconds:>9.3f}{flops / 1e9:>12.2f}"
            f"{seconds / base_t:>12.2f}{flops / base_f if base_f else float('nan'):>12.2f}"
        )
    if "b" in rows and "e" in rows:
        (tb, fb), (te, fe) = rows["b"], rows["e"]
        lines.append(
            f"\n(e) / (b): time {te / tb:.2f}x, FLOP {fe / fb:.2f}x (issue #13's target: time <= 1.10x)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="step_cost_") as tmp:
        rows = measure(args, prepare(Path(tmp), args.size))
    print("\n" + table(args, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
