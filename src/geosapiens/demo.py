"""``geosapiens demo``: the whole method end to end on generated data, on a CPU, in minutes.

Every step is the same command a user runs on real data (``data synth``, ``critics cache``, ``priors
fit``, ``fit``/``test`` with the ``configs/demo`` files, ``report``), called in-process in order:

1. generate the demo data (two visual styles, real MINI-RGBD/SyRIP formats; skipped if already there);
2. cache the *oracle* critic's maps (the generator's rendered depth/normals) and fit the normal priors;
3. fit the infant pose VAE;
4. warm-up on "synthetic" = the source-only baseline -> geometry-guided mean teacher -> few-shot, plus the
   SHIFT-style (mean teacher + prior, no geometry) and oracle (labelled real-like) baselines, each
   selected on the real-like validation split (source-only: on its synthetic hold-out);
5. test every run on the real-like test split and print one table with sim-to-real gap reduction.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from geosapiens.cli import main as cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SYRIP = "syrip"
TRAIN_ALL = "annotations/200R_1000S/person_keypoints_train_infant.json"
TRAIN_SYNTHETIC = "annotations/1000S/person_keypoints_train_infant.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="geosapiens demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where runs and the report go")
    p.add_argument("--data", type=Path, default=Path("demo_data"), help="where the generated data goes")
    p.add_argument("--preset", default="demo", help="generator preset (tiny with --fast)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="tiny preset, a few steps per run (a smoke test)")
    return p


class Steps:
    """Runs and times the demo's steps, failing loudly on the first that fails."""

    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    def run(self, name: str, argv: list[str]) -> None:
        print(f"\n=== {name}: geosapiens {' '.join(argv[:2])} ...", flush=True)
        start = time.perf_counter()
        code = cli(argv)
        self.times.append((name, time.perf_counter() - start))
        if code:
            raise SystemExit(f"geosapiens demo: step '{name}' failed (exit {code})")


def _generated(data: Path, preset: str, seed: int) -> bool:
    manifest = data / "manifest.json"
    if not manifest.is_file():
        return False
    info = json.loads(manifest.read_text())
    return info.get("preset") == preset and info.get("seed") == seed


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    preset = "tiny" if args.fast else args.preset
    out, data = args.out.resolve(), args.data.resolve()
    syrip = data / SYRIP
    size = 64 if args.fast else 96
    quick = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "1"] if args.fast else []
    steps, start = Steps(), time.perf_counter()

    if not _generated(data, preset, args.seed):
        steps.run(
            "data",
            [
                "data",
                "synth",
                "--out",
                str(data),
                "--preset",
                preset,
                "--seed",
                str(args.seed),
                "--overwrite",
            ],
        )
    cache, priors = data / f"critic_cache_oracle_{size}", data / f"normal_priors_oracle_{size}.json"
    steps.run(
        "critic cache (oracle)",
        [
            "critics",
            "cache",
            "--critic",
            "oracle",
            "--data",
            str(syrip),
            "--annotation",
            TRAIN_ALL,
            "--out",
            str(cache),
            "--input-size",
            str(size),
            str(size),
        ],
    )
    steps.run(
        "normal priors",
        [
            "priors",
            "fit",
            "--cache",
            str(cache),
            "--data",
            str(syrip),
            "--annotation",
            TRAIN_SYNTHETIC,
            "--out",
            str(priors),
            "--min-count",
            "3" if args.fast else "10",
        ],
    )
    vae_dir = out / "pose_vae"
    steps.run(
        "pose VAE",
        [
            "fit",
            "--config",
            str(CONFIGS / "priors/pose_vae.yaml"),
            "--config",
            str(CONFIGS / "demo/pose_vae.yaml"),
            "--data.init_args.syrip_root",
            str(syrip),
            "--data.init_args.mini_rgbd_root",
            str(data / "mini_rgbd"),
            "--trainer.default_root_dir",
            str(vae_dir),
            "--trainer.logger.init_args.save_dir",
            str(vae_dir),
            *quick,
        ],
    )
    vae = max(vae_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)

    def size_args(*prefixes: str) -> list[str]:
        return [a for p in prefixes for a in (f"{p}.input_size", f"[{size}, {size}]")]

    def small(*prefixes: str) -> list[str]:
        if not args.fast:
            return []
        return [a for p in prefixes for a in (f"{p}.batch_size", "4", f"{p}.num_workers", "0")]

    def run_dir(name: str) -> list[str]:
        folder = out / name
        return ["--trainer.default_root_dir", str(folder), "--trainer.logger.init_args.save_dir", str(folder)]

    def best(name: str) -> str:
        return str(out / name / "checkpoints" / "best.ckpt")

    supervised = [
        *size_args("--model.init_args", "--data.init_args"),
        *small("--data.init_args"),
        "--data.init_args.root",
        str(syrip),
    ]
    src, tgt = "--data.init_args.source.init_args", "--data.init_args.target.init_args"
    adaptation = [
        *size_args("--model.init_args", src, tgt),
        *small(src, tgt),
        f"{src}.root",
        str(syrip),
        f"{tgt}.root",
        str(syrip),
        "--model.init_args.init_checkpoint",
        best("source_only"),
        "--model.init_args.pose_prior",
        str(vae),
    ]
    geometry = ["--model.init_args.critic_cache", str(cache), "--model.init_args.normal_priors", str(priors)]
    runs: list[tuple[str, list[str], list[str]]] = [
        ("source_only", ["demo/warmup.yaml"], supervised),
        ("mean_teacher_geometry", ["demo/uda.yaml"], adaptation + geometry),
        ("shift_style", ["demo/uda.yaml", "demo/shift_style.yaml"], adaptation),
        (
            "fewshot",
            ["demo/warmup.yaml", "demo/fewshot.yaml"],
            [
                *supervised,
                "--model.init_args.init_checkpoint",
                best("mean_teacher_geometry"),
                *(["--data.init_args.num_shots", "4"] if args.fast else []),
            ],
        ),
        ("oracle", ["demo/warmup.yaml", "demo/oracle.yaml"], supervised),
    ]
    test_data = [
        "--config",
        str(CONFIGS / "demo/test_real.yaml"),
        *size_args("--data.init_args"),
        "--data.init_args.root",
        str(syrip),
    ]
    for name, configs, extra in runs:
        stack = [a for c in configs for a in ("--config", str(CONFIGS / c))]
        steps.run(f"fit {name}", ["fit", *stack, *extra, *run_dir(name), *quick])
        # the same model configuration on the real-like test data, from the checkpoint selected on validation
        model_configs = [c for c in configs if c not in ("demo/oracle.yaml", "demo/fewshot.yaml")]
        model_stack = [a for c in model_configs for a in ("--config", str(CONFIGS / c))]
        model_args = [
            a
            for k, v in zip(extra[::2], extra[1::2], strict=True)
            if k.startswith("--model.")
            for a in (k, v)
        ]
        steps.run(
            f"test {name}",
            [
                "test",
                *model_stack,
                *model_args,
                *test_data,
                *run_dir(f"{name}/test"),
                "--ckpt_path",
                best(name),
            ],
        )

    report = out / "report"
    steps.run(
        "report",
        [
            "report",
            *(str(out / name / "test") for name, _, _ in runs),
            "--out",
            str(report),
            "--names",
            *(name for name, _, _ in runs),
            "--source-only",
            "source_only",
            "--oracle",
            "oracle",
        ],
    )
    total = time.perf_counter() - start
    print("\nstep times:")
    for name, seconds in steps.times:
        print(f"  {name:<28} {seconds:7.1f} s")
    print(f"  {'total':<28} {total:7.1f} s\nreport: {report}")
    return 0
