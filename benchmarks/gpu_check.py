# The device run (one line; carry ["wheels"], timeout_s 560), after `bash benchmarks/gpu_wheels.sh` here:
# python3 -m pip install -q --no-index --no-deps --disable-pip-version-check --target /tmp/wh wheels/*.whl || python3 -c "import glob,zipfile; [zipfile.ZipFile(w).extractall('/tmp/wh') for w in glob.glob('wheels/*.whl')]"; PYTHONPATH=src:/tmp/wh python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json  # noqa: E501
"""The paper setting on one GPU, measured in one go: one table on stdout and one JSON file (issue 17).

On the GPU machine (Python 3.12, torch 2.11, no albumentations/jsonargparse/wandb/pycocotools): run
``bash benchmarks/gpu_wheels.sh`` here, then the command at the top of this file as the device ``run``, with
``carry: ["wheels"]`` and ``timeout_s: 560`` (the wheels install without a registry; unzipped if the image
has no pip).

Sections (each survives another's failure: its error is recorded as ``{"error": ...}``, the others still run,
and the exit status is 1 if any failed):

(a) ``backbone``: fwd+bwd of the sapiens_0.3b / 0.6b / 1b encoders (random init, official shapes, the
    pretrain layout uda.yaml's checkpoint has) at 1024x1024, bf16 autocast, batch 4 (halved until it fits;
    the batch run is recorded), with and without per-block activation checkpointing: ms/step (CUDA events
    around the timed steps, warm-up excluded, no synchronisation in between), achieved TFLOP/s (the FLOPs
    the step executes, recomputation included, counted once per config with ``FlopCounterMode``), MFU (the
    model's FLOPs, i.e. without recomputation, against the bf16 matmul peak measured here with a large
    matmul loop) and peak memory (``max_memory_allocated``).
(b) ``step_cost``: ``benchmarks/step_cost.py`` at sapiens_0.6b 1024x1024, B=2 per domain: supervised, mean
    teacher, + cached geometry, + an online critic of Sapiens-1B shape: s/step, GFLOP/step and both ratios.
(c) ``fit``: ``configs/uda.yaml`` through the ``geosapiens fit`` CLI (``trainer_cli``) on generated data
    (``geosapiens data synth --preset tiny``; an oracle critic cache, random normal priors, pose VAE and
    geometry teacher, as step_cost prepares them) at 1024x1024, bf16-mixed, random-init weights, ~30 steps.
    Overrides, and why:
    every loss term from step 0 without a ramp (the config's weights; a 30-step run never reaches epochs 21
    and 51), warm-up 5 steps (not 500), CSVLogger instead of W&B, no callbacks or checkpoints (a 0.6B
    student + teacher + AdamW checkpoint is ~10 GB a save), validation once after the steps, MINI-RGBD's
    generated sequences with every frame, the data roots of the generated layout. Reports: loss finite and
    falling (mean of the first vs the last 5 steps), samples/s (one source crop + one target pair), GPU
    memory, val PCK (finite), and DataLoader headroom (``benchmarks/loader_headroom.py``: the config's own
    loader with N workers per domain vs the step's compute-only demand).
(d) ``critic_cache``: ``build_cache`` fill rate (images/s, reading, critic and writing) with a
    Sapiens-0.6b-shaped depth+normal critic (step_cost's stand-in) at the official 1024x768 input, float32
    (what ``geosapiens critics cache`` runs) and bfloat16 weights.
(e) ``inference``: network frames/s (forward only: no flip, no decoding) of the uda.yaml teacher network
    (sapiens_0.6b + head) at 1024 with bf16 autocast and of configs/distill.yaml's student at 256 (float32),
    at batch 1 and 16.

``--dry-run`` runs the same code on CPU with tiny presets (sapiens nano/tiny, 64 px, a few steps, the tiny
generated data; about a minute of CPU time); ``tests/test_gpu_check.py`` runs it. It has never run on a GPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))  # step_cost and loader_headroom, as modules

import lightning.pytorch as L  # noqa: E402
import loader_headroom  # noqa: E402
import step_cost  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from geosapiens.cli.main import trainer_cli  # noqa: E402
from geosapiens.data.critic_cache import build_cache  # noqa: E402
from geosapiens.data.formats.syrip import read_syrip  # noqa: E402
from geosapiens.models.backbone import create_backbone  # noqa: E402
from geosapiens.models.sapiens_archs import SAPIENS_ARCHS  # noqa: E402
from geosapiens.models.stage_checkpoint import build_pose_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UDA, DISTILL = REPO / "configs/uda.yaml", REPO / "configs/distill.yaml"
GIB = 1024**3


@dataclass(frozen=True)
class Preset:
    """Sizes of one run: the paper setting on a GPU, or the tiny CPU rehearsal of the same code."""

    device: str
    size: int  # square crop of (a)-(d) and of the teacher in (e)
    backbones: tuple[str, ...]  # (a)
    batch: int  # (a), the first try
    warmup: int  # (a), (e)
    steps: int  # (a), (e)
    matmul_sizes: tuple[int, ...]
    cost_backbone: str  # (b)
    cost_critic: str  # (b) online critic's backbones
    cost_batch: int
    cost_steps: int
    cost_warmup: int
    fit_backbone: str | None  # (c); None = the config's
    fit_steps: int
    fit_batch: int | None  # (c) per domain; None = the config's
    fit_workers: int | None  # (c) training loader workers per domain; None = the config's
    headroom_workers: tuple[int, ...]  # (c) loader workers per domain measured; 0 entries dropped on GPU
    headroom_batches: int
    fill_backbone: str  # (d)
    fill_input: tuple[int, int]  # (d) critic input (official 1024x768)
    fill_workers: int
    fill_dtypes: tuple[str, ...]  # (d) critic weights
    teacher_backbone: str | None  # (e); None = uda.yaml's
    student_size: int  # (e)
    infer_batches: tuple[int, ...]  # (e)


CORES = os.cpu_count() or 1
GPU = Preset(
    device="cuda",
    size=1024,
    backbones=("sapiens_0.3b", "sapiens_0.6b", "sapiens_1b"),
    batch=4,
    warmup=3,
    steps=10,
    matmul_sizes=(4096, 8192, 16384),
    cost_backbone="sapiens_0.6b",
    cost_critic="sapiens_1b",
    cost_batch=2,
    cost_steps=10,
    cost_warmup=2,
    fit_backbone=None,
    fit_steps=30,
    fit_batch=None,
    fit_workers=None,
    headroom_workers=(2, 6, max(1, CORES // 2)),
    headroom_batches=10,
    fill_backbone="sapiens_0.6b",
    fill_input=(1024, 768),
    fill_workers=min(8, CORES),
    fill_dtypes=("float32", "bfloat16"),
    teacher_backbone=None,
    student_size=256,
    infer_batches=(1, 16),
)
# CPU bf16 convolutions are pathologically slow here (the Sapiens dense heads: 137 s vs 6.7 s in float32 for 8
# crops), so the rehearsal keeps them small: nano encoders, a 32x32 critic input, float32 critic weights and
# inference batches of 1 and 2.
DRY = Preset(
    device="cpu",
    size=64,
    backbones=("sapiens_nano", "sapiens_tiny"),
    batch=2,
    warmup=1,
    steps=2,
    matmul_sizes=(128, 256),
    cost_backbone="sapiens_nano",
    cost_critic="sapiens_nano",
    cost_batch=2,
    cost_steps=2,
    cost_warmup=1,
    fit_backbone="sapiens_nano",
    fit_steps=4,
    fit_batch=2,
    fit_workers=0,
    headroom_workers=(0, 1),
    headroom_batches=2,
    fill_backbone="sapiens_nano",
    fill_input=(32, 32),
    fill_workers=0,
    fill_dtypes=("float32",),
    teacher_backbone="sapiens_nano",
    student_size=64,
    infer_batches=(1, 2),
)


# -- measuring -----------------------------------------------------------------------------------------------
def seconds_per_call(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    """Mean seconds of ``fn`` over ``iters`` calls; on a GPU CUDA events bracket the calls and the host waits
    only once, at the end."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0 / iters
    began = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - began) / iters


def counted_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call (matmuls, convolutions, attention; 2 per multiply-add), forward and backward."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """Peak allocated GPU memory since :func:`reset_peak` (None on CPU)."""
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def matmul_peak_flops(sizes: tuple[int, ...], device: torch.device, iters: int = 20) -> dict:
    """The bf16 matmul rate this device reaches (best over square sizes), the MFU denominator."""
    rates = {}
    for n in sizes:
        a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
        out = torch.empty(n, n, device=device, dtype=torch.bfloat16)
        for _ in range(3):
            torch.mm(a, b, out=out)
        seconds = seconds_per_call(lambda a=a, b=b, out=out: torch.mm(a, b, out=out), iters, device)
        rates[n] = 2 * n**3 / seconds
        del a, b, out
    tflops = {str(n): r / 1e12 for n, r in rates.items()}
    return {"tflops_by_size": tflops, "tflops": max(tflops.values())}


def largest_batch_that_fits(first: int, run: Callable[[int], dict]) -> dict:
    """``run(batch)`` for ``first``, halved after every CUDA out-of-memory error; the result names the batch
    and the ones that did not fit."""
    batch, too_big = first, []
    while True:
        oom = False
        try:
            result = run(batch)
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
            oom = True
        if not oom:
            return {"batch": batch, "did_not_fit": too_big, **result}
        too_big.append(batch)  # outside the except block: the failed attempt's tensors are released
        batch //= 2
        free(torch.device("cuda"))


def vit_train_flops(name: str, size: int) -> float:
    """Analytic FLOPs of one fwd+bwd of a Sapiens encoder on one square image, to check the counter's sum (an
    attention kernel it does not know would leave a third of the FLOPs at 1024 px uncounted): per block the
    qkv/proj/MLP matmuls 24 N D^2 and attention 4 N^2 D, 3x for forward + backward; the patch projection 2x
    (its input needs no gradient)."""
    arch = SAPIENS_ARCHS[name]
    n, d = (size // 16) ** 2, arch.embed_dim
    block = 8 * n * d * d + 4 * arch.mlp_ratio * n * d * d + 4 * n * n * d
    return 2 * (2 * n * 3 * 16 * 16 * d) + 3 * arch.depth * block


# -- (a) backbones -------------------------------------------------------------------------------------------
def section_backbone(p: Preset, device: torch.device) -> dict:
    peak = matmul_peak_flops(p.matmul_sizes, device)
    peak_flops = peak["tflops"] * 1e12
    rows: dict[str, dict] = {}
    for name in p.backbones:
        with torch.device(device):  # initialised where it runs: a 1B-parameter init on the host is slow
            model = create_backbone(name, img_size=(p.size, p.size))
        model_flops_per_image = None
        for ckpt in (False, True):
            model.set_grad_checkpointing(ckpt)

            def run(batch: int, model=model) -> dict:
                x = torch.randn(batch, 3, p.size, p.size, device=device)

                def step() -> None:
                    model.zero_grad(set_to_none=True)
                    with torch.autocast(device.type, dtype=torch.bfloat16):
                        out = model(x)
                    out.float().mean().backward()

                reset_peak(device)
                for _ in range(p.warmup):
                    step()
                seconds = seconds_per_call(step, p.steps, device)
                memory = peak_gib(device)
                return {"ms_per_step": 1000 * seconds, "flops": counted_flops(step), "peak_mem_gib": memory}

            row = largest_batch_that_fits(p.batch, run)
            if not ckpt:
                model_flops_per_image = row["flops"] / row["batch"]
                row["counted_vs_analytic"] = model_flops_per_image / vit_train_flops(name, p.size)
            seconds = row["ms_per_step"] / 1000
            row["tflops"] = row["flops"] / seconds / 1e12
            row["mfu"] = model_flops_per_image * row["batch"] / seconds / peak_flops
            rows[f"{name} ckpt={'on' if ckpt else 'off'}"] = row
            model.zero_grad(set_to_none=True)
            free(device)
        del model, run  # run holds the model too: free it before the next, larger one is built
        free(device)
    return {"peak_bf16": peak, "size": p.size, "configs": rows}


# -- (b) step cost -------------------------------------------------------------------------------------------
def section_step_cost(p: Preset, paths: dict[str, Path]) -> dict:
    args = step_cost.parse_args(
        [
            "--backbone",
            p.cost_backbone,
            "--critic-backbone",
            p.cost_critic,
            "--size",
            str(p.size),
            "--batch",
            str(p.cost_batch),
            "--steps",
            str(p.cost_steps),
            "--warmup",
            str(p.cost_warmup),
            "--device",
            p.device,
            "--stages",
            "abcd",  # (e)'s teacher runs once per cached image: its steady state is (c)'s step
        ]
    )
    rows = step_cost.measure(args, paths)
    print(step_cost.table(args, rows))
    base_t, base_f = rows["a"]
    stages = {
        kind: {
            "label": step_cost.LABELS[kind],
            "s_per_step": t,
            "gflop_per_step": f / 1e9,
            "time_ratio": t / base_t,
            "flop_ratio": f / base_f,
        }
        for kind, (t, f) in rows.items()
    }
    return {
        "backbone": p.cost_backbone,
        "critic_backbone": p.cost_critic,
        "size": p.size,
        "batch_per_domain": p.cost_batch,
        "stages": stages,
    }


# -- (c) fit -------------------------------------------------------------------------------------------------
class LossRecorder(L.Callback):
    """Every step's loss, kept on the device (no host sync per step), and every step's start time."""

    def __init__(self) -> None:
        self.losses: list[torch.Tensor] = []
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(time.perf_counter())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(loss.detach().float())


def fit_args(p: Preset, paths: dict[str, Path], run_dir: Path) -> list[str]:
    """``geosapiens fit --config configs/uda.yaml`` with the overrides the module docstring lists."""
    model = yaml.safe_load(UDA.read_text())["model"]["init_args"]
    terms = {
        name: {"weight": t["weight"], "start_epoch": 0, "ramp_epochs": 0}
        for name, t in model["loss_terms"].items()
    }
    sequences = sorted(d.name for d in paths["mini_rgbd"].iterdir() if d.is_dir() and d.name.isdigit())
    sources = [
        {
            "class_path": "geosapiens.data.datamodules.MiniRGBDDataModule",
            "init_args": {
                "root": str(paths["mini_rgbd"]),
                "train_sequences": sequences,
                "val_sequences": [],
                "test_sequences": [],
                "frame_stride": 1,
            },
        },
        {
            "class_path": "geosapiens.data.datamodules.SyRIPSynthDataModule",
            "init_args": {
                "root": str(paths["syrip"]),
                "train_file": "annotations/1000S/person_keypoints_train_infant.json",
            },
        },
    ]
    src, tgt = "--data.init_args.source.init_args", "--data.init_args.target.init_args"
    args = [
        "--config",
        str(UDA),
        "--trainer.max_steps",
        str(p.fit_steps),
        "--trainer.logger",
        json.dumps(
            {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(run_dir), "name": "uda"},
            }
        ),
        "--trainer.callbacks",
        "[]",
        "--trainer.enable_checkpointing",
        "false",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.num_sanity_val_steps",
        "0",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.accelerator",
        "gpu" if p.device == "cuda" else "cpu",
        "--trainer.devices",
        "1",
        "--model.init_args.backbone_kwargs",
        '{"family": "pretrain"}',  # random init, the checkpoint's layout
        "--data.init_args.target.init_args.critic_cache",
        str(paths["cache"]),
        "--model.init_args.pose_prior",
        str(paths["vae"]),
        "--model.init_args.normal_priors",
        str(paths["priors"]),
        "--model.init_args.geometry_teacher",
        str(paths["teacher"]),
        "--model.init_args.loss_terms",
        json.dumps(terms),
        "--model.init_args.warmup_steps",
        "5",
        f"{src}.sources",
        json.dumps(sources),
        f"{tgt}.root",
        str(paths["syrip"]),
    ]
    if p.fit_backbone:
        args += ["--model.init_args.backbone", p.fit_backbone]
    if p.size != 1024:
        size = f"[{p.size}, {p.size}]"
        args += ["--model.init_args.input_size", size, f"{src}.input_size", size, f"{tgt}.input_size", size]
    for key, value in (("batch_size", p.fit_batch), ("num_workers", p.fit_workers)):
        if value is not None:
            args += [f"{src}.{key}", str(value), f"{tgt}.{key}", str(value)]
    return args


def section_fit(p: Preset, paths: dict[str, Path], work: Path, device: torch.device) -> dict:
    # uda.yaml's geometry teacher (configs/geometry_teacher.yaml: RegNetX-200MF on the maps at a quarter of
    # the crop), random weights
    size = max(32, p.size // 4)
    teacher = step_cost.geometry_teacher(work / "geometry_teacher.ckpt", "timm:regnetx_002", size)
    cli = trainer_cli(fit_args(p, {**paths, "teacher": teacher}, work / "fit"), run=False)
    warmup = min(3, p.fit_steps // 3)
    timer, recorder = loader_headroom.StepTimer(warmup), LossRecorder()
    cli.trainer.callbacks.extend([timer, recorder])
    reset_peak(device)
    began = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    fit_s = time.perf_counter() - began
    memory = peak_gib(device)
    losses = torch.stack(recorder.losses).cpu()
    if not bool(torch.isfinite(losses).all()):
        bad = torch.nonzero(~torch.isfinite(losses)).flatten().tolist()
        raise FloatingPointError(f"fit: non-finite training loss at steps {bad}: {losses.tolist()}")
    k = min(5, len(losses) // 2)
    first, last = float(losses[:k].mean()), float(losses[-k:].mean())
    batch = timer.samples[0]
    # whole steps (waiting for data and the timers' synchronisations included) after the warm-up
    wall = (recorder.starts[-1] - recorder.starts[warmup]) / (len(recorder.starts) - 1 - warmup)
    demand = sum(timer.samples) / sum(timer.seconds)

    cli.trainer.limit_val_batches = 1.0  # validation once, after the timed steps
    metrics = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    pck = float(metrics["val/pck@0.1"])
    if not math.isfinite(pck):
        raise FloatingPointError(f"fit: validation PCK@0.1 is {pck}")

    config_workers = cli.datamodule.source.num_workers
    workers = sorted({w for w in (*p.headroom_workers, config_workers) if w > 0 or device.type == "cpu"})
    cli.datamodule.setup("fit")
    supply = {w: loader_headroom.loader_rate(cli.datamodule, w, p.headroom_batches) for w in workers}
    return {
        "steps": len(losses),
        "batch_per_domain": batch,
        "config_workers_per_domain": config_workers,
        "loss_first": first,
        "loss_last": last,
        "loss_falling": last < first,
        "losses": losses.tolist(),
        "step_s": wall,
        "samples_per_s": batch / wall,
        "student_images_per_s": 2 * batch / wall,
        "compute_step_s": sum(timer.seconds) / len(timer.seconds),
        "demand_samples_per_s": demand,
        "peak_mem_gib": memory,
        "fit_s": fit_s,
        "val_pck@0.1": pck,
        "loader_samples_per_s": {str(w): s for w, s in supply.items()},
        "headroom": {str(w): s / demand for w, s in supply.items()},
        "cores": CORES,
    }


# -- (d) critic cache ----------------------------------------------------------------------------------------
def section_critic_cache(p: Preset, paths: dict[str, Path], work: Path, device: torch.device) -> dict:
    records = read_syrip(paths["syrip"], step_cost.TRAIN)
    with torch.device(device):
        critic = step_cost.StandInSapiensCritic(p.fill_backbone, p.fill_input)
    identity = {"kind": f"stand-in {p.fill_backbone} depth+normal (random weights)", "files": []}
    dataset = {"root": str(paths["syrip"]), "annotation": step_cost.TRAIN, "format": "syrip"}
    options = dict(batch_size=8, num_workers=p.fill_workers, device=device, progress=False)
    rates = {}
    size = (p.size, p.size)
    for name in p.fill_dtypes:
        critic.to(getattr(torch, name))
        build_cache(records[:8], critic, work / f"fill_warmup_{name}", size, identity, dataset, **options)
        began = time.perf_counter()
        stats = build_cache(records, critic, work / f"fill_{name}", size, identity, dataset, **options)
        rates[name] = stats.written / (time.perf_counter() - began)
    return {
        "backbone": p.fill_backbone,
        "critic_input": list(p.fill_input),
        "crop": p.size,
        "images": len(records),
        "workers": p.fill_workers,
        "batch": 8,
        "images_per_s": rates,
    }


# -- (e) inference -------------------------------------------------------------------------------------------
def section_inference(p: Preset, device: torch.device) -> dict:
    teacher_cfg = yaml.safe_load(UDA.read_text())["model"]["init_args"]
    student_cfg = yaml.safe_load(DISTILL.read_text())["model"]["init_args"]
    teacher_name = p.teacher_backbone or teacher_cfg["backbone"]
    networks = {
        f"teacher {teacher_name} @{p.size} bf16": (
            lambda: build_pose_model(
                teacher_name, (p.size, p.size), {"family": "pretrain"}, teacher_cfg.get("head_kwargs")
            ),
            p.size,
            True,
        ),
        f"student {student_cfg['backbone']} @{p.student_size} fp32": (
            lambda: build_pose_model(
                student_cfg["backbone"],
                (p.student_size, p.student_size),
                student_cfg.get("backbone_kwargs"),
                student_cfg.get("head_kwargs"),
            ),
            p.student_size,
            False,
        ),
    }
    rows = {}
    for name, (make, size, bf16) in networks.items():
        with torch.device(device):
            model = make().eval()
        for batch in p.infer_batches:
            x = torch.randn(batch, 3, size, size, device=device)

            def forward(model=model, x=x, bf16=bf16) -> None:
                with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    model(x)

            reset_peak(device)
            for _ in range(p.warmup):
                forward()
            seconds = seconds_per_call(forward, p.steps, device)
            rows[f"{name} batch {batch}"] = {
                "frames_per_s": batch / seconds,
                "ms_per_batch": 1000 * seconds,
                "peak_mem_gib": peak_gib(device),
            }
        del model, forward, x
        free(device)
    return {"networks": rows}


# -- the run -------------------------------------------------------------------------------------------------
def targets(sections: dict) -> list[dict]:
    """The issue's targets, reported against (never a reason to fail the run)."""
    out = []
    a = sections.get("backbone", {}).get("configs", {}).get("sapiens_0.6b ckpt=off")
    if a:
        out.append(
            {
                "target": "backbone 0.6b fwd+bwd MFU >= 45% (no checkpointing)",
                "value": a["mfu"],
                "met": a["mfu"] >= 0.45,
            }
        )
    stages = sections.get("step_cost", {}).get("stages", {})
    if "b" in stages:
        b = stages["b"]
        off = b["time_ratio"] / b["flop_ratio"] - 1
        out.append(
            {
                "target": "mean teacher / supervised time within 10% of the FLOP ratio",
                "value": off,
                "met": abs(off) <= 0.10,
            }
        )
    if "b" in stages and "c" in stages:
        extra = stages["c"]["s_per_step"] / stages["b"]["s_per_step"] - 1
        out.append(
            {"target": "cached geometry <= +10% over the mean teacher", "value": extra, "met": extra <= 0.10}
        )
    fit = sections.get("fit", {})
    if "headroom" in fit:
        key = str(fit["config_workers_per_domain"])
        value = fit["headroom"].get(key, max(fit["headroom"].values()))
        out.append(
            {
                "target": f"fit loader headroom > 1.2x ({key} workers per domain, the config's)",
                "value": value,
                "met": value > 1.2,
            }
        )
    return out


def fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def table(report: dict) -> str:
    s = report["sections"]
    lines = [
        f"GPU check on {report['device_name']} ({report['device']}), torch {report['torch']}, "
        f"{report['cores']} cores{' [DRY RUN: tiny CPU presets]' if report['dry_run'] else ''}",
        "",
        f"{'section':<10} {'what':<52} result",
    ]

    def row(section: str, what: str, result: str) -> None:
        lines.append(f"{section:<10} {what:<52} {result}")

    for name, section in s.items():
        if "error" in section:
            row(name, "ERROR", section["error"].splitlines()[0][:200])
    if "configs" in s.get("backbone", {}):
        row("backbone", "bf16 matmul peak", f"{s['backbone']['peak_bf16']['tflops']:.3g} TFLOP/s")
        for what, r in s["backbone"]["configs"].items():
            oom = f" (batch {r['did_not_fit']} did not fit)" if r["did_not_fit"] else ""
            count = f"  counted/analytic {r['counted_vs_analytic']:.2f}" if "counted_vs_analytic" in r else ""
            row(
                "backbone",
                f"{what} B={r['batch']}{oom}",
                f"{r['ms_per_step']:.1f} ms/step  {r['tflops']:.3g} TFLOP/s  MFU {100 * r['mfu']:.1f}%  "
                f"peak {fmt(r['peak_mem_gib'], '.1f')} GiB{count}",
            )
    for r in s.get("step_cost", {}).get("stages", {}).values():
        row(
            "step_cost",
            r["label"],
            f"{r['s_per_step']:.3f} s/step  {r['gflop_per_step']:.1f} GFLOP  time x{r['time_ratio']:.2f}  "
            f"FLOP x{r['flop_ratio']:.2f}",
        )
    f = s.get("fit", {})
    if "losses" in f:
        row(
            "fit",
            f"uda.yaml {f['steps']} steps, B={f['batch_per_domain']}+{f['batch_per_domain']}",
            f"loss {f['loss_first']:.4g} -> {f['loss_last']:.4g} ({'' if f['loss_falling'] else 'NOT '}"
            f"falling)  {f['samples_per_s']:.3g} samples/s  peak {fmt(f['peak_mem_gib'], '.1f')} GiB  "
            f"val PCK@0.1 {f['val_pck@0.1']:.3f}",
        )
        for w, h in f["headroom"].items():
            row(
                "fit",
                f"loader, {w} workers per domain",
                f"{f['loader_samples_per_s'][w]:.1f} samples/s vs demand {f['demand_samples_per_s']:.2f}: "
                f"headroom {h:.2f}x",
            )
    c = s.get("critic_cache", {})
    for dtype, rate in c.get("images_per_s", {}).items():
        row(
            "critic",
            f"cache fill, {c['backbone']} depth+normal @{c['critic_input']} {dtype}",
            f"{rate:.1f} images/s",
        )
    for what, r in s.get("inference", {}).get("networks", {}).items():
        row("inference", what, f"{r['frames_per_s']:.1f} frames/s  peak {fmt(r['peak_mem_gib'], '.2f')} GiB")
    lines += ["", "targets" + (" (dry run: CPU numbers, not comparable):" if report["dry_run"] else ":")]
    for t in report["targets"]:
        lines.append(f"  [{'met' if t['met'] else 'MISSED'}] {t['target']}: {t['value']:.3f}")
    lines.append(f"\nwall {report['wall_s']:.0f} s; failed sections: {report['failed'] or 'none'}")
    return "\n".join(lines)


def run_sections(
    runs: dict[str, Callable[[], dict]],
    device: torch.device,
    deadline: float = math.inf,
    done: Callable[[dict[str, dict]], None] = lambda sections: None,
) -> dict[str, dict]:
    """Each section's result with its ``seconds``; a section that raises is recorded as ``{"error": ...}``
    (traceback on stderr) and the next one still runs, so one GPU run shows everything that breaks. Sections
    not started by ``deadline`` (``time.perf_counter()``) are recorded as skipped; ``done`` gets the results
    after each section (the report is written as it grows: a run killed at its time limit keeps them)."""
    sections: dict[str, dict] = {}
    for name, run in runs.items():
        print(f"\n== {name}", flush=True)
        start = time.perf_counter()
        if start > deadline:
            sections[name] = {"error": "skipped: the time budget (--budget-s) was spent"}
        else:
            try:
                sections[name] = run()
            except (Exception, SystemExit) as err:  # noqa: BLE001 - one failure must not hide another's
                traceback.print_exc()
                sections[name] = {"error": f"{type(err).__name__}: {err}"}
        sections[name]["seconds"] = time.perf_counter() - start
        free(device)
        done(sections)
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the report here (after every section)")
    parser.add_argument("--dry-run", action="store_true", help="tiny presets on CPU (the test's rehearsal)")
    parser.add_argument("--work", type=Path, help="folder for generated data and caches (default: temporary)")
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=("backbone", "step_cost", "fit", "critic_cache", "inference"),
        help="run only these (default: all)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=480.0,
        help="start no section after this many seconds (default 480: the run's 8 minutes)",
    )
    parser.add_argument("--threads", type=int, help="torch threads (1 on a shared CPU)")
    args = parser.parse_args(argv)
    p = DRY if args.dry_run else GPU
    if p.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on the GPU machine, or --dry-run here")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(p.device)
    torch.manual_seed(0)
    began = time.perf_counter()
    name = torch.cuda.get_device_name(device) if p.device == "cuda" else platform.processor() or "cpu"
    report = {
        "dry_run": args.dry_run,
        "device": p.device,
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": L.__version__,
        "python": platform.python_version(),
        "cores": CORES,
        "preset": asdict(p),
    }

    def write(sections: dict[str, dict]) -> None:
        report.update(
            sections=sections,
            failed=[n for n, s in sections.items() if "error" in s],
            targets=targets(sections),
            wall_s=time.perf_counter() - began,
        )
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1))

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)

        @cache
        def paths() -> dict[str, Path]:  # generated data, oracle cache, priors, VAE: shared by (b), (c), (d)
            # one rendering process: the tiny preset renders in seconds, a pool's start-up costs more
            return step_cost.prepare(work / "prepared", p.size, workers=1)

        runs = {
            "backbone": lambda: section_backbone(p, device),
            "step_cost": lambda: section_step_cost(p, paths()),
            "fit": lambda: section_fit(p, paths(), work, device),
            "critic_cache": lambda: section_critic_cache(p, paths(), work, device),
            "inference": lambda: section_inference(p, device),
        }
        chosen = {n: run for n, run in runs.items() if not args.sections or n in args.sections}
        write(run_sections(chosen, device, began + args.budget_s, write))
    print("\n" + table(report))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
