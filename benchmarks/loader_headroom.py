"""Data-loading headroom: can the DataLoader feed the training step of the same config?

Two numbers per worker count, from ONE stage config (the training DataModule and model it instantiates):

- **demand**: training samples/s of the step alone, from ``on_train_batch_start`` to ``on_train_batch_end``
  (forward, backward, optimiser, EMA: no waiting for data), over ``--steps`` steps after ``--warmup`` steps;
- **supply**: samples/s the config's own training loader delivers with N workers (0, 1, 2 by default), the
  first batch (worker start-up) left out.

A sample is one source crop plus, for a UDA stage, one target weak/strong pair (one step consumes B of each).
Headroom = supply / demand; below 1 the GPU (or CPU) waits for data: add workers. On a shared CPU the workers
and the step compete for the same cores, so CPU headroom understates a GPU node's. Usage::

    python benchmarks/loader_headroom.py                       # demo warm-up config on generated tiny data
    python benchmarks/loader_headroom.py --threads 1               # a CPU shared with other jobs
    python benchmarks/loader_headroom.py --workers 0 2 4 -- --config configs/demo/uda.yaml ...

Without CLI arguments after ``--``, ``geosapiens data synth --preset tiny`` data is generated in a temporary
folder and ``configs/demo/warmup.yaml`` (RegNetX-200MF, 96 px, batch 32) trains on it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import lightning.pytorch as L  # noqa: E402
import torch  # noqa: E402

from geosapiens.cli.main import main as geosapiens_main  # noqa: E402
from geosapiens.cli.main import trainer_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def batch_samples(batch) -> int:
    """Source crops in a batch (a UDA batch's target pairs match them one for one)."""
    if isinstance(batch, dict) and "source" in batch:
        return batch_samples(batch["source"])
    if isinstance(batch, dict) and "image" in batch:
        return int(batch["image"].shape[0])
    if isinstance(batch, dict) and "weak" in batch:
        return int(batch["weak"].shape[0])
    raise ValueError(f"unrecognised training batch with keys {sorted(batch)}")


class StepTimer(L.Callback):
    """Compute time per step (batch start to batch end) after ``warmup`` steps; on a GPU both ends wait for
    the queued kernels, so the step's device time is what is measured, not its launch."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = 0.0
        self.seconds: list[float] = []
        self.samples: list[int] = []

    @staticmethod
    def _now(pl_module) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.start = self._now(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step > self.warmup:
            self.seconds.append(self._now(pl_module) - self.start)
            self.samples.append(batch_samples(batch))


def set_workers(datamodule, workers: int) -> None:
    """``num_workers`` of the DataModule (of its source and target for a UDA one), workers kept alive across
    epochs so that a small data set measures loading, not worker start-up."""
    modules = [datamodule, getattr(datamodule, "source", None), getattr(datamodule, "target", None)]
    for module in modules:
        for sub in [module, *getattr(module, "sources", [])]:  # MultiSourceDataModule
            if sub is not None and hasattr(sub, "num_workers"):
                sub.num_workers, sub.persistent_workers = workers, True


def loader_rate(datamodule, workers: int, batches: int) -> float:
    """Samples/s of the config's training loader with ``workers`` workers, after its first batch."""
    set_workers(datamodule, workers)
    loader = datamodule.train_dataloader()
    iterator = iter(loader)
    next(iterator)
    start, seen, taken = time.perf_counter(), 0, 0
    while taken < batches:
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            continue
        batch = batch[0] if isinstance(batch, tuple) else batch  # CombinedLoader yields (batch, idx, dl_idx)
        seen += batch_samples(batch)
        taken += 1
    return seen / (time.perf_counter() - start)


def demo_args(tmp: Path) -> list[str]:
    data = tmp / "data"
    if geosapiens_main(["data", "synth", "--out", str(data), "--preset", "tiny", "--seed", "0"]) != 0:
        raise SystemExit("data synth failed")
    return ["--config", str(REPO / "configs/demo/warmup.yaml"), "--data.init_args.root", str(data / "SyRIP")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first")
    parser.add_argument("--batches", type=int, default=10, help="timed loader batches per worker count")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads of the step (default: torch's); use 1 on a CPU shared with other "
        "jobs: OpenMP threads spin there (16 s vs 0.45 s a step on a loaded 2-core CPU)",
    )
    parser.add_argument("cli", nargs=argparse.REMAINDER, help="-- then `geosapiens fit` arguments")
    args = parser.parse_args(argv)
    cli_args = args.cli[1:] if args.cli[:1] == ["--"] else args.cli
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        config = cli_args or demo_args(Path(tmp))
        overrides = [
            "--trainer.max_steps",
            str(args.warmup + args.steps),
            "--trainer.limit_val_batches",
            "0",
            "--trainer.logger",
            "false",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--trainer.default_root_dir",
            tmp,
        ]
        cli = trainer_cli([*config, *overrides], run=False)
        timer = StepTimer(args.warmup)
        cli.trainer.callbacks.append(timer)
        cli.trainer.fit(cli.model, cli.datamodule)
        step_s = sum(timer.seconds) / len(timer.seconds)
        demand = sum(timer.samples) / sum(timer.seconds)
        batch = timer.samples[0]
        print(
            f"{type(cli.model).__name__} on {type(cli.datamodule).__name__}; batch {batch}; "
            f"{torch.get_num_threads()} torch threads; {os.cpu_count()} CPUs visible"
        )
        print(
            f"training step (compute only, mean of {len(timer.seconds)}): {step_s:.3f} s = "
            f"{demand:.1f} samples/s\n"
        )
        print("| workers | loader samples/s | loader steps/s | step demand samples/s | headroom |")
        print("|---|---|---|---|---|")
        cli.datamodule.setup("fit")
        for workers in args.workers:
            supply = loader_rate(cli.datamodule, workers, args.batches)
            ratio = supply / demand
            print(f"| {workers} | {supply:.1f} | {supply / batch:.2f} | {demand:.1f} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
