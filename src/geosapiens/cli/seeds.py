"""``geosapiens seeds``: one stage config under several training seeds, each fitted then tested, into
``<out>/seed<k>/`` (the layout ``geosapiens report`` groups by method).

    geosapiens seeds --seeds 0 1 2 --out runs/shift_style -- --config configs/uda.yaml \\
        --config configs/baselines/shift_style.yaml
    geosapiens report runs/source_only runs/shift_style runs/uda --baseline source_only

For seed ``k``: ``fit`` with ``--seed_everything=k`` (which also seeds the data: every DataModule's
``data_seed`` defaults to it, so batch order and augmentation draws change with the seed; an explicit
``data_seed`` in the config would pin them), its trainer and logger folders under ``<out>/seed<k>/``; then
``test`` of its best checkpoint (the config's ``BestCheckpoint``, by the stage's monitor: model
selection on the validation split) into ``<out>/seed<k>/test/``, where the config's
:class:`~geosapiens.callbacks.results.TestResultsWriter` writes ``test_metrics.json``. The config's logger
must take ``save_dir`` (CSV, TensorBoard and W&B loggers do). Each seed's folder is emptied first.

:class:`Runner` (the in-process ``geosapiens`` runner with per-step wall and CPU times) and
:func:`fit_and_test` are shared with ``geosapiens demo``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from geosapiens.cli.style import both_styles, progress_switch

__all__ = [
    "SeedError",
    "Runner",
    "StepTime",
    "seed_dir",
    "best_checkpoint",
    "fit_and_test",
    "with_configs",
    "main",
]


class SeedError(RuntimeError):
    """A step failed; the message names the step and its command line."""


@dataclass
class StepTime:
    name: str
    wall: float
    cpu: float
    note: str = ""


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers, renderers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@contextlib.contextmanager
def _argv0_only() -> Iterator[None]:
    """LightningCLI is given its arguments; hide the outer command line from it (it warns about both)."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


class Runner:
    """Runs ``geosapiens`` command lines, timing each one: in this process, one after the other, or (with a
    ``log`` file) as a child process, so that several can run at once from threads (``geosapiens demo
    --jobs``)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.index = 0
        self.times: list[StepTime] = []
        self._lock = threading.Lock()

    def __call__(self, title: str, argv: list[str], note: str = "", log: Path | None = None) -> None:
        with self._lock:
            self.index += 1
            print(f"\n==> [{self.index}/{self.total}] {title}\n    geosapiens {' '.join(argv)}", flush=True)
        wall, cpu = time.perf_counter(), cpu_seconds()
        if log is None:
            from geosapiens.cli import main as cli

            try:
                with _argv0_only():
                    code = cli.main(argv)
            except SystemExit as err:  # argparse / jsonargparse errors
                code = err.code if isinstance(err.code, int) else 1
            cpu = cpu_seconds() - cpu
        else:
            code, cpu = _child(argv, title, log)
        if code:
            where = f" (log: {log})" if log is not None else ""
            raise SeedError(f"step '{title}' failed (exit code {code}){where}: geosapiens {' '.join(argv)}")
        self.record(title, time.perf_counter() - wall, cpu, note)

    def record(self, title: str, wall: float, cpu: float, note: str = "") -> None:
        with self._lock:
            self.times.append(StepTime(title, wall, cpu, note))
            print(f"<== {title}: {wall:.1f} s wall, {cpu:.1f} s CPU", flush=True)


def _child(argv: list[str], title: str, log: Path) -> tuple[int, float]:
    """Run ``geosapiens argv`` as a child process appending to ``log``: its exit code and CPU seconds (its
    own and its reaped children's, the DataLoader workers)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n==> {title}\n    geosapiens {' '.join(argv)}\n")
        out.flush()
        child = subprocess.Popen([sys.executable, "-m", "geosapiens.cli.main", *argv], stdout=out, stderr=out)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode, usage.ru_utime + usage.ru_stime


def seed_dir(out: Path, seed: int) -> Path:
    """A seed's run folder: ``<out>/seed<k>``."""
    return out / f"seed{seed}"


def best_checkpoint(run_dir: Path) -> Path:
    """The newest ``best*.ckpt`` under ``run_dir`` (ModelCheckpoint on the validation split)."""
    found = sorted(run_dir.rglob("best*.ckpt"), key=lambda p: (p.stat().st_mtime_ns, str(p)))
    if not found:
        raise SeedError(
            f"{run_dir}: no best*.ckpt after fit: the config needs a BestCheckpoint (or a ModelCheckpoint "
            "with filename 'best' and a validation monitor); was validation skipped?"
        )
    return found[-1]


def _logs(root: Path) -> list[str]:
    return [f"--trainer.default_root_dir={root}", f"--trainer.logger.init_args.save_dir={root}"]


def fit_and_test(
    run: Runner,
    title: str,
    run_dir: Path,
    seed: int,
    fit_args: list[str],
    test_args: list[str] | None = None,
    log: Path | None = None,
) -> Path:
    """``fit`` ``fit_args`` under ``seed`` into ``run_dir`` (emptied first), then ``test`` its best checkpoint
    with ``test_args`` (default: ``fit_args``) into ``run_dir/test``; returns the best checkpoint. With a
    ``log`` file both run as child processes writing to it."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    seed_arg = f"--seed_everything={seed}"
    run(f"fit {title}", ["fit", *fit_args, *_logs(run_dir), seed_arg], log=log)
    best = best_checkpoint(run_dir)
    run(
        f"test {title} (best checkpoint by validation) on the test split",
        ["test", *(fit_args if test_args is None else test_args), *_logs(run_dir / "test"), seed_arg,
         f"--ckpt_path={best}", "--verbose=false"],
        log=log,
    )  # fmt: skip
    from geosapiens.metrics.results import RESULTS_FILENAME

    if not list((run_dir / "test").rglob(RESULTS_FILENAME)):
        raise SeedError(
            f"{run_dir / 'test'}: no {RESULTS_FILENAME} after test: add "
            "geosapiens.callbacks.results.TestResultsWriter to trainer.callbacks"
        )
    return best


def with_configs(args: list[str], configs: list[str]) -> list[str]:
    """``args`` with ``--config C`` for each of ``configs`` after its last config, before its overrides (so
    the command-line overrides still win)."""
    last = max((i for i, a in enumerate(args) if a == "--config" or a.startswith("--config=")), default=-1)
    end = last + (2 if last >= 0 and args[last] == "--config" else 1)
    return [*args[:end], *(a for c in configs for a in ("--config", c)), *args[end:]]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="geosapiens seeds",
        description="Fit a stage config under several seeds (seed_everything, hence the data seed), each "
        "into OUT/seed<k>/, and test each best checkpoint; `geosapiens report` then compares methods over "
        "seeds.",
    )
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="training seeds, e.g. 0 1 2")
    p.add_argument("--out", type=Path, required=True, help="the method's folder (seed<k>/ go inside)")
    p.add_argument(
        "--test-config",
        nargs="+",
        default=[],
        metavar="CONFIG",
        help="configs stacked for `test` only (e.g. a test split the training data has not)",
    )
    progress_switch(p)
    p.add_argument(
        "fit_args", nargs=argparse.REMAINDER, help="-- then `geosapiens fit` arguments (--config ...)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = both_styles(_parser())
    args = parser.parse_args(argv)
    fit_args = args.fit_args[1:] if args.fit_args[:1] == ["--"] else args.fit_args
    if not args.progress:
        fit_args = [*fit_args, "--trainer.enable_progress_bar=false"]
    if not fit_args:
        parser.error("give the `fit` arguments after --, e.g. -- --config configs/uda.yaml")
    if len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        parser.error(f"--seeds must be distinct and >= 0, got {args.seeds}")
    test_args = with_configs(fit_args, args.test_config)
    run = Runner(total=2 * len(args.seeds))
    try:
        for seed in args.seeds:
            fit_and_test(run, f"seed {seed}", seed_dir(args.out, seed), seed, fit_args, test_args)
    except SeedError as err:
        print(f"\ngeosapiens seeds: {err}", file=sys.stderr)
        return 1
    print(
        f"\ngeosapiens seeds: {len(args.seeds)} seeds in {args.out}; compare them with "
        f"`geosapiens report {args.out} ...`"
    )
    return 0
