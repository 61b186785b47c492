"""``geosapiens demo``: the whole method end to end on generated data, on CPU, in about a quarter of an hour.

No dataset or checkpoint can be downloaded on a fresh machine, so the demo renders its own infant data and
runs every stage and baseline on it through the same commands a user runs on real data, each one a
``geosapiens ...`` call (:func:`geosapiens.cli.main`, in this process, one after the other):

1. ``data synth --preset demo`` (skipped when ``--data`` already holds that preset and seed);
2. ``critics cache --critic oracle`` over the SyRIP-style training file (200R_1000S) at the demo input size.
   The critic is the ORACLE: the generator's rendered depth and normals. The small learned critic
   (``configs/critics/small_critic.yaml``) plugs into the same cache but takes too long to train on CPU;
3. ``priors fit`` (per-keypoint normal priors) and the pose VAE (``configs/priors/pose_vae.yaml`` +
   ``configs/demo/pose_vae.yaml``);
4. training runs, each ``fit`` (model selection on a validation split: ``ModelCheckpoint`` on
   ``val/pck@0.1``) then ``test`` of its best checkpoint on the real-like test split (validate100):
   warm-up on "synthetic" stills (= the source-only baseline), the oracle (labelled real-like images),
   AdaBN, a plain mean teacher, SHIFT-style (mean teacher + prior), Geo-Sapiens (mean teacher + prior +
   geometry), few-shot refinement of it on N labelled real-like images, and a light student (the CPU
   deployment model) distilled from the Geo-Sapiens teacher's heatmaps on the unlabelled real-like images;
5. ``report`` over those runs, source-only and oracle named, so the table shows the gap reduction;
6. deployment: ``export`` of the distilled student to ONNX, and ``predict`` of a real-like sequence written
   as an mp4 video (ONNX Runtime, tracked box, One-Euro smoothing, quality flags, overlay video).

Every run gets the same augmentation (geometry, elastic scale, cut-occlude, strong photometric). Every number
in the table comes from this invocation: each run's folder is emptied before it trains. ``--fast`` runs the
same chain on the ``tiny`` preset with a few steps per run (for tests). Paths in the configs
(``demo_data/``, ``runs/demo/``) are replaced on the command line by ``--data`` and ``--out``; each step
prints its command line, so any step can be re-run by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from geosapiens.data.synth.presets import PRESETS

__all__ = ["DemoError", "DemoPlan", "Run", "data_matches", "main", "plan"]

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SYNTH_ANNOTATION = "annotations/1000S/person_keypoints_train_infant.json"
CACHE_ANNOTATION = "annotations/200R_1000S/person_keypoints_train_infant.json"
SOURCE_ONLY, ORACLE = "source-only", "oracle"
DISTILLED = "Geo-Sapiens student (distilled)"
_LONG_INFO = 240  # characters of a Lightning info line kept (seeded id lists run to thousands)


class DemoError(RuntimeError):
    """A demo step failed; the message names the step and its command line."""


@dataclass
class Run:
    """One training run of the table: ``fit`` with ``configs`` then ``test`` of the best checkpoint.

    Attributes:
        name: folder under ``--out``.
        method: row name in the report.
        configs: stacked config files (relative to the configs folder).
        overrides: ``--key=value`` arguments for ``fit`` and ``test`` (paths, seed, step counts).
        test_configs: extra configs for ``test`` only (the warm-up's data has no real-like test split).
        about: one line for the summary.
    """

    name: str
    method: str
    configs: list[str]
    overrides: list[str]
    test_configs: list[str] = field(default_factory=list)
    about: str = ""


@dataclass
class DemoPlan:
    """Every path and command line of one demo invocation."""

    out: Path
    data: Path
    preset: str
    seed: int
    fast: bool
    configs: Path
    input_size: tuple[int, int]
    num_shots: int
    runs: list[Run]

    @property
    def syrip(self) -> Path:
        return self.data / "syrip"

    @property
    def cache(self) -> Path:
        h, w = self.input_size
        return self.data / "critic_cache" / f"oracle_{h}x{w}"

    @property
    def normal_priors(self) -> Path:
        return self.out / "priors" / "normal_priors.json"

    @property
    def pose_vae(self) -> Path:
        return self.out / "pose_vae"

    @property
    def deploy(self) -> Path:
        return self.out / "deploy"

    def best(self, run: str) -> Path:
        return self.out / run / "checkpoints" / "best.ckpt"

    def config_args(self, names: list[str]) -> list[str]:
        return [arg for name in names for arg in ("--config", str(self.configs / name))]


def _input_size(configs: Path) -> tuple[int, int]:
    """The demo model's crop size, read from ``demo/warmup.yaml`` (the critic cache must match it)."""
    import yaml

    doc = yaml.safe_load((configs / "demo" / "warmup.yaml").read_text())
    h, w = doc["model"]["init_args"]["input_size"]
    return int(h), int(w)


def _logs(root: Path) -> list[str]:
    """Trainer and logger folders of a run (configs say ``runs/demo/<run>``)."""
    return [f"--trainer.default_root_dir={root}", f"--trainer.logger.init_args.save_dir={root}"]


def plan(out: Path, data: Path, preset: str, seed: int, fast: bool, configs: Path = REPO_CONFIGS) -> DemoPlan:
    """Resolve paths and build every run's overrides (``--fast``: a few steps, no worker processes)."""
    size = _input_size(configs)
    p = DemoPlan(out, data, preset, seed, fast, configs, size, 0, [])
    syrip = p.syrip
    real_count = PRESETS[preset].real_train
    p.num_shots = min(10, max(1, real_count // 2))
    seed_arg = [f"--seed_everything={seed}"]

    def fast_args(steps: int, batch_keys: list[str], batch: int) -> list[str]:
        if not fast:
            return []
        args = [
            f"--trainer.max_steps={steps}",
            f"--trainer.val_check_interval={steps}",
            "--trainer.log_every_n_steps=1",
        ]
        for key in batch_keys:
            args += [f"--data.init_args.{key}batch_size={batch}", f"--data.init_args.{key}num_workers=0"]
        return args

    real_data = [f"--data.init_args.root={syrip}"]
    uda_paths = [
        f"--data.init_args.source.init_args.root={syrip}",
        f"--data.init_args.target.init_args.root={syrip}",
        f"--model.init_args.init_checkpoint={p.best('warmup')}",
        f"--model.init_args.pose_prior={p.pose_vae / 'checkpoints' / 'last.ckpt'}",
    ]
    geometry = [
        f"--data.init_args.target.init_args.critic_cache={p.cache}",
        f"--model.init_args.normal_priors={p.normal_priors}",
    ]
    uda_fast = fast_args(3, ["source.init_args.", "target.init_args."], 4)
    p.runs = [
        Run(
            "warmup",
            SOURCE_ONLY,
            ["demo/warmup.yaml"],
            [*real_data, *fast_args(4, [""], 8)],
            test_configs=["demo/test_real.yaml"],
            about="supervised on synthetic stills only (stage 1 = the source-only baseline)",
        ),
        Run(
            "oracle",
            ORACLE,
            ["demo/oracle.yaml"],
            [*real_data, *fast_args(4, [""], 8)],
            about="same network, steps and augmentation, supervised on all labelled real-like images",
        ),
        Run(
            "adabn",
            "AdaBN",
            ["demo/adabn.yaml"],
            [*real_data, f"--model.init_args.init_checkpoint={p.best('warmup')}", *fast_args(2, [""], 8)],
            about="warm-up weights, BatchNorm statistics re-estimated on real-like crops (no weight moves)",
        ),
        Run(
            "mean_teacher",
            "mean teacher",
            ["demo/uda.yaml", "demo/mean_teacher.yaml"],
            [*uda_paths, *uda_fast],
            about="mean teacher from the warm-up: consistency only",
        ),
        Run(
            "shift_style",
            "SHIFT-style",
            ["demo/uda.yaml", "demo/shift_style.yaml"],
            [*uda_paths, *uda_fast],
            about="mean teacher + pose prior, no geometry",
        ),
        Run(
            "uda",
            "Geo-Sapiens",
            ["demo/uda.yaml"],
            [*uda_paths, *geometry, *uda_fast],
            about="mean teacher + pose prior + oracle-critic geometry (depth bone symmetry, normal priors)",
        ),
        Run(
            "fewshot",
            f"Geo-Sapiens + {p.num_shots}-shot",
            ["demo/fewshot.yaml"],
            [
                *real_data,
                f"--model.init_args.init_checkpoint={p.best('uda')}",
                f"--data.init_args.num_shots={p.num_shots}",
                f"--data.init_args.fewshot_seed={seed}",
                *fast_args(3, [""], p.num_shots),
            ],
            about=f"Geo-Sapiens refined on {p.num_shots} labelled real-like images (seeded choice)",
        ),
        Run(
            "distill",
            DISTILLED,
            ["demo/distill.yaml"],
            [
                *real_data,
                f"--model.init_args.teacher_checkpoint={p.best('uda')}",
                *fast_args(3, [""], 4),
            ],
            about="slim-head student distilled from the Geo-Sapiens teacher's heatmaps (unlabelled)",
        ),
    ]
    for run in p.runs:
        run.overrides = [*seed_arg, *run.overrides]
    return p


def data_matches(data: Path, preset: str, seed: int) -> bool | None:
    """True when ``data`` holds finished generator output of ``preset``/``seed`` (its ``manifest.json``,
    written last), False when it holds another preset or seed, None when it holds none."""
    path = data / "manifest.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return (
        doc.get("generator") == "geosapiens.data.synth"
        and doc.get("preset") == preset
        and doc.get("seed") == seed
    )


@dataclass
class StepTime:
    name: str
    wall: float
    cpu: float
    note: str = ""


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers, renderers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@contextlib.contextmanager
def _argv0_only() -> Iterator[None]:
    """LightningCLI is given its arguments; hide ``geosapiens demo ...`` from it (it warns about both)."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


class _ShortInfo(logging.Filter):
    """Shorten Lightning info lines that list hundreds of seeded image ids (they stay in hparams and logs)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > _LONG_INFO:
            record.msg, record.args = message[:_LONG_INFO] + " ...]", None
        return True


class Runner:
    """Runs ``geosapiens`` command lines in this process, timing each one."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.index = 0
        self.times: list[StepTime] = []

    def __call__(self, title: str, argv: list[str], note: str = "") -> None:
        from geosapiens import cli

        self.index += 1
        print(f"\n==> [{self.index}/{self.total}] {title}\n    geosapiens {' '.join(argv)}", flush=True)
        wall, cpu = time.perf_counter(), _cpu_seconds()
        try:
            with _argv0_only():
                code = cli.main(argv)
        except SystemExit as err:  # argparse / jsonargparse errors
            code = err.code if isinstance(err.code, int) else 1
        if code:
            raise DemoError(f"step '{title}' failed (exit code {code}): geosapiens {' '.join(argv)}")
        self.record(title, time.perf_counter() - wall, _cpu_seconds() - cpu, note)

    def record(self, title: str, wall: float, cpu: float, note: str = "") -> None:
        self.times.append(StepTime(title, wall, cpu, note))
        print(f"<== {title}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)


def _clean(path: Path) -> None:
    """Empty one of the demo's own run folders, so nothing from an earlier invocation reaches the table."""
    if path.exists():
        shutil.rmtree(path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geosapiens demo",
        description="Generate infant data, build the oracle critic cache and the priors, train the warm-up "
        "(source-only), oracle, AdaBN, mean-teacher, SHIFT-style, Geo-Sapiens, few-shot and distilled "
        "student runs, test each on the real-like test split and report one table with the sim-to-real gap "
        "reduction.",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs/demo"), help="run folders and report (default: runs/demo)"
    )
    p.add_argument("--data", type=Path, default=Path("demo_data"), help="generated data (default: demo_data)")
    p.add_argument(
        "--preset", choices=sorted(PRESETS), help="generator preset (default: demo; tiny with --fast)"
    )
    p.add_argument("--seed", type=int, default=0, help="data and training seed (default: 0)")
    p.add_argument(
        "--fast", action="store_true", help="the same chain on the tiny preset, a few steps per run"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the trainer process (default 1: with one DataLoader worker per loader this "
        "fills 2 cores; more threads only help when cores are idle)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import torch

    torch.set_num_threads(max(1, args.threads))
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_ShortInfo())
    preset = args.preset or ("tiny" if args.fast else "demo")
    p = plan(args.out, args.data, preset, args.seed, args.fast)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    run = Runner(total=5 + 2 * len(p.runs) + 3)
    h, w = p.input_size
    print(
        f"Geo-Sapiens demo: preset {preset!r}, seed {args.seed}, data {p.data}, runs {p.out}, "
        f"{h}x{w} crops, {torch.get_num_threads()} torch thread(s)"
        + (" [--fast: a few steps per run; numbers are meaningless]" if args.fast else "")
    )
    try:
        _prepare(p, run)
        for r in p.runs:
            _clean(p.out / r.name)
            run(
                f"fit {r.name}: {r.about}",
                ["fit", *p.config_args(r.configs), *_logs(p.out / r.name), *r.overrides],
            )
            best = p.best(r.name)
            if not best.is_file():
                raise DemoError(f"{r.name}: no {best} after fit (was validation skipped?)")
            test_dir = p.out / r.name / "test"
            run(
                f"test {r.name} (best checkpoint by val/pck@0.1) on the real-like test split",
                [
                    "test",
                    *p.config_args(r.configs + r.test_configs),
                    *_logs(test_dir),
                    *r.overrides,
                    f"--ckpt_path={best}",
                    "--verbose=false",
                ],
            )
        report = p.out / "report"
        _clean(report)
        run(
            "report",
            [
                "report",
                *[str(p.out / r.name) for r in p.runs],
                "--names",
                *[r.method for r in p.runs],
                "--source-only",
                SOURCE_ONLY,
                "--oracle",
                ORACLE,
                "--out",
                str(report),
            ],
        )
        _deploy(p, run)
    except DemoError as err:
        print(f"\ngeosapiens demo: {err}", file=sys.stderr)
        return 1
    _summary(p, run, time.perf_counter() - started, _cpu_seconds() - cpu_started)
    return 0


def _prepare(p: DemoPlan, run: Runner) -> None:
    """Data, critic cache, normal priors and pose prior."""
    have = data_matches(p.data, p.preset, p.seed)
    if have:
        print(
            f"\n==> [{run.index + 1}/{run.total}] data: {p.data} already holds preset {p.preset!r} "
            f"seed {p.seed} (its manifest.json); not regenerated"
        )
        run.index += 1
        run.record("data synth (skipped)", 0.0, 0.0)
    else:
        synth = [
            "data",
            "synth",
            "--out",
            str(p.data),
            "--preset",
            p.preset,
            "--seed",
            str(p.seed),
            "--workers",
            str(min(2, os.cpu_count() or 1)),
        ]
        if have is False:  # other generator output: replace it, and the critic maps computed from it
            synth.append("--overwrite")
            _clean(p.data / "critic_cache")
        run(f"data synth: procedural infant data, preset {p.preset!r}", synth)
    h, w = p.input_size
    run(
        "critic cache: the ORACLE critic (the generator's rendered depth/normals; a small learned critic "
        "plugs in the same way but is too slow to train on CPU here)",
        [
            "critics",
            "cache",
            "--critic",
            "oracle",
            "--data",
            str(p.syrip),
            "--annotation",
            CACHE_ANNOTATION,
            "--out",
            str(p.cache),
            "--input-size",
            str(h),
            str(w),
            "--batch-size",
            "64",
            "--device",
            "cpu",
        ],
    )
    p.normal_priors.parent.mkdir(parents=True, exist_ok=True)
    run(
        "normal priors: von Mises-Fisher per keypoint, from the critic at synthetic ground truth",
        [
            "priors",
            "fit",
            "--cache",
            str(p.cache),
            "--data",
            str(p.syrip),
            "--annotation",
            SYNTH_ANNOTATION,
            "--domain",
            "synthetic",
            "--out",
            str(p.normal_priors),
        ],
    )
    manifest = json.loads((p.data / "manifest.json").read_text())
    synthetic_sequences = [
        k for k, style in manifest["mini_rgbd"]["sequences"].items() if style == "synthetic"
    ]
    _clean(p.pose_vae)
    run(
        "pose prior: VAE over normalised synthetic poses",
        [
            "fit",
            *p.config_args(["priors/pose_vae.yaml", "demo/pose_vae.yaml"]),
            *_logs(p.pose_vae),
            f"--seed_everything={p.seed}",
            f"--data.init_args.syrip_root={p.syrip}",
            f"--data.init_args.mini_rgbd_root={p.data / 'mini_rgbd'}",
            f"--data.init_args.mini_rgbd_sequences={json.dumps(synthetic_sequences)}",
            *(["--trainer.max_epochs=2"] if p.fast else []),
        ],
    )


def _deploy(p: DemoPlan, run: Runner) -> None:
    """The clinic's end: the distilled student exported to ONNX (checked against PyTorch), then keypoint
    tracks of a real-like sequence written as an mp4 video, predicted on ONNX Runtime in one box around the
    infant's motion (as a clinician draws it), with One-Euro smoothing, quality flags from the pose prior and
    an overlay video."""
    import cv2

    from geosapiens.data.formats.mini_rgbd import read_mini_rgbd

    folder = p.deploy
    _clean(folder)
    onnx = folder / "student.onnx"
    run("export the distilled student to ONNX", ["export", str(p.best("distill")), "--out", str(onnx)])
    manifest = json.loads((p.data / "manifest.json").read_text())
    sequence = next(k for k, style in manifest["mini_rgbd"]["sequences"].items() if style == "real-like")
    frames = sorted((p.data / "mini_rgbd" / sequence / "rgb").glob("*.png"))
    wall, cpu = time.perf_counter(), _cpu_seconds()
    video = folder / f"infant_{sequence}.mp4"
    first = cv2.imread(str(frames[0]))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, first.shape[1::-1])
    for frame in frames:
        writer.write(cv2.imread(str(frame)))
    writer.release()
    run.index += 1
    print(f"\n==> [{run.index}/{run.total}] video: real-like sequence {sequence} -> {video}")
    boxes = [r.bbox for r in read_mini_rgbd(p.data / "mini_rgbd", [sequence], check_projection=False)]
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    run.record("write a real-like sequence as an mp4 video", time.perf_counter() - wall, _cpu_seconds() - cpu)
    run(
        "predict the video on ONNX Runtime (one box, One-Euro, quality flags, overlay)",
        [
            "predict",
            str(video),
            "--model",
            str(onnx),
            "--box",
            f"{x0:.0f},{y0:.0f},{x1 - x0:.0f},{y1 - y0:.0f}",
            "--smooth",
            "--pose_prior",
            str(p.pose_vae / "checkpoints" / "last.ckpt"),
            "--overlay",
            "--no-progress",
            "--out",
            str(folder / "predictions"),
        ],
    )


def _summary(p: DemoPlan, run: Runner, wall: float, cpu: float) -> None:
    """Step times, the headline table again (from results.csv), and what the numbers are."""
    print("\n" + "=" * 100 + "\nGeo-Sapiens demo: summary\n")
    width = max(len(t.name) for t in run.times)
    for t in run.times:
        print(f"  {t.name[:90]:<{min(width, 90)}}  {t.wall:7.1f} s wall  {t.cpu:7.1f} s CPU")
    print(f"  {'TOTAL':<{min(width, 90)}}  {wall:7.1f} s wall  {cpu:7.1f} s CPU  ({wall / 60:.1f} min)\n")
    rows = list(csv.DictReader((p.out / "report" / "results.csv").open(encoding="utf-8")))
    columns = ["PCK@0.05", "PCK@0.1", "PCK@0.2", "gap PCK@0.1"]
    print(f"  {'method':<32}" + "".join(f"{c:>13}" for c in columns))
    for row in rows:
        cells = []
        for c in columns:
            value = float(row[c]) if row.get(c) else math.nan
            cells.append(f"{value:13.3f}" if c.startswith("gap") else f"{100 * value:13.1f}")
        print(f"  {row['method']:<32}" + "".join(cells))
    print(
        f"\n  PCK in % on the real-like test split (validate100 of {p.syrip}), bbox-normalised; gap = (x - "
        f"{SOURCE_ONLY}) / ({ORACLE} - {SOURCE_ONLY}).\n"
        "  Critic: the ORACLE (rendered ground-truth depth/normals), stated as such; the small learned\n"
        "  critic is optional (configs/critics/small_critic.yaml) and too slow to train on CPU here.\n"
        "  Backbone: a small timm CNN from random init stands in for Sapiens on CPU.\n"
        "  Model selection: best val/pck@0.1 on a validation split (the warm-up: its synthetic hold-out;\n"
        "  every other run: real-like val_real), never the test split. One seed: differences of a few\n"
        "  points are within seed noise; a claim needs >= 3 seeds (--seed 1, --seed 2).\n"
        f"  Report: {p.out / 'report'} (results.md, results.csv, pck_curves.png, per_joint_pck.png, "
        "overlays.png)"
    )
    for r in p.runs:
        print(f"    {r.method:<32} {r.about}")
    print(
        f"\n  Deployment: {p.deploy / 'student.onnx'} (the distilled student, ONNX) and its tracks of a "
        f"real-like video\n  in {p.deploy / 'predictions'} (tracks.csv, tracks/*.npz with quality flags, "
        "overlays/*.mp4)."
    )
