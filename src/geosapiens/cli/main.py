"""The ``geosapiens`` command: one tree, like git's.

``fit | validate | test | predict`` go to LightningCLI (subclass mode, stacked ``--config``,
``--print_config``, ``--ckpt_path last|best|FILE``), exactly as torchgeo's entry point does; ``predict``
there is dataset-level prediction from a config. ``infer`` is prediction on files (images, folders, videos)
from a checkpoint or an ONNX file. The other commands are small tools, each a ``main(argv) -> int`` in the
module that owns the work, listed in :data:`COMMANDS`; groups (``data``, ``critics``, ``priors``) print
their own help. A tool imports its work (torch, OpenCV...) only once its options are parsed, so its
``--help`` answers at once; the trainer verbs need Lightning and the stage classes to build their parser, so
their plain ``--help`` page is shipped, rendered ahead by that parser (:func:`shipped_help`).

Exit codes, everywhere: 0 ok, 1 problems found (``data check``, bad data met during a run), 2 usage error
(unknown command or option, a missing argument, a named file that is missing or unusable). A
:class:`~geosapiens.errors.GeoSapiensError` (or a ``ValueError`` this package raised) anywhere in a run is
printed as one line naming the file, not a traceback.

Checkpoints of ``fit`` go to ``<trainer.default_root_dir>/checkpoints`` (unless a ``ModelCheckpoint`` names
its ``dirpath``), a folder that does not depend on a logger's run id, so ``--ckpt_path last`` and ``best``
are found by a new process; a W&B logger continues the run recorded there (:mod:`.callbacks.wandb_resume`).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import warnings

TRAINER_VERBS = ("fit", "validate", "test", "predict")
TRAINER_HELP = {
    "fit": "trains a stage from a config (LightningCLI; --ckpt_path last resumes)",
    "validate": "validates a checkpoint on a config's validation split",
    "test": "tests a checkpoint on a config's test split (writes test_metrics.json)",
    "predict": "predicts a config's test split with PredictionWriter (files: use infer)",
}

# "group command" -> (module, help); each module's ``main`` takes the remaining argv, returns an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "infer": ("geosapiens.cli.infer", "keypoint tracks of images, folders and videos (.ckpt or .onnx)"),
    "evaluate": ("geosapiens.cli.evaluate", "scores COCO-keypoints results against ground truth"),
    "seeds": (
        "geosapiens.cli.seeds",
        "fits and tests one stage config under several seeds (seed<k>/ folders)",
    ),
    "report": ("geosapiens.cli.report", "compares finished runs over seeds: table, paired CIs, plots"),
    "export": ("geosapiens.cli.export", "exports a checkpoint's pose network to ONNX and checks it"),
    "convert": ("geosapiens.cli.convert", "converts an official Sapiens checkpoint to safetensors"),
    "data check": ("geosapiens.cli.check", "validates a MINI-RGBD or SyRIP folder and lists every problem"),
    "data synth": ("geosapiens.cli.synth", "writes procedural infant data in the real formats"),
    "critics cache": ("geosapiens.cli.critics", "precomputes a critic's depth/normal maps"),
    "critics degrade": ("geosapiens.cli.degrade", "copies a critic cache with its maps degraded (a sweep)"),
    "priors fit": (
        "geosapiens.cli.priors",
        "fits per-keypoint normal priors (von Mises-Fisher) from a critic",
    ),
    "configs": (
        "geosapiens.cli.configs",
        "lists the configs the package ships; `configs copy` writes them out to edit",
    ),
    "demo": ("geosapiens.cli.demo", "runs the whole method end to end on generated data (CPU, minutes)"),
}
GROUPS = {
    "data": "dataset tools: check a folder, generate data",
    "critics": "geometric critics: precompute depth/normal maps, degrade them",
    "priors": "geometric priors: fit per-keypoint normal priors",
}
# ``predict INPUT ...`` (a path first, not an option) was file prediction before ``infer``; still accepted
# with a deprecation message for one release.
DEPRECATED_PREDICT = "'geosapiens predict INPUT ...' is now 'geosapiens infer INPUT ...' (old form until 0.3)"


def shipped_help(verb: str) -> str:
    """The help page of a trainer verb, rendered ahead by its parser (:mod:`.trainer_help`)."""
    from importlib import resources

    return resources.files("geosapiens.cli").joinpath("help", f"{verb}.txt").read_text(encoding="utf-8")


def version() -> str:
    from geosapiens import __version__

    return __version__


def _usage(group: str | None = None) -> str:
    if group is not None:
        lines = [f"usage: geosapiens {group} COMMAND [options]   ({GROUPS[group]})", "", "commands:"]
        for name, (_, help_) in COMMANDS.items():
            if name.startswith(group + " "):
                lines.append(f"  {name.split(' ', 1)[1]:<12} {help_}")
        lines += ["", f"'geosapiens {group} COMMAND --help' for a command's options."]
        return "\n".join(lines)
    lines = [
        "usage: geosapiens [--version] [--help] COMMAND [options]",
        "",
        "training and evaluation from configs (LightningCLI: --config, --print_config, --ckpt_path):",
    ]
    lines += [f"  {verb:<12} {help_}" for verb, help_ in TRAINER_HELP.items()]
    lines += ["", "tools:"]
    lines += [f"  {name:<12} {help_}" for name, (_, help_) in COMMANDS.items() if " " not in name]
    lines += [f"  {name:<12} {help_}" for name, help_ in GROUPS.items()]
    lines += ["", "'geosapiens COMMAND --help': a command's options. Exit codes: 0 ok, 1 problems, 2 usage."]
    return "\n".join(lines)


def trainer_cli(args: list[str] | None, run: bool = True):
    """LightningCLI over every stage module and DataModule the package defines (``run=False``: parse and
    instantiate only, for callers that drive the trainer themselves). ``args=None`` reads ``sys.argv``.

    The one place a run is wired: every task gets the run-safety callbacks
    (:func:`~geosapiens.callbacks.infrastructure.infrastructure_callbacks`) and atomic checkpoint writes;
    the crop size is stated once, by the stage, and linked to the DataModule (:func:`link_crop_size`; the
    checkpoint monitor is the stage's too: :class:`~geosapiens.callbacks.selection.BestCheckpoint`);
    ``$VARS`` and ``~`` are expanded in every string of the config before anything is built; a DataModule
    ``data_seed`` left unset is the run's ``seed_everything``.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # Given args, LightningCLI warns when sys.argv has arguments too (ours always does: the same ones).
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    import geosapiens.data.datamodules  # noqa: F401  (registers class paths for configs)
    import geosapiens.stages  # noqa: F401
    from geosapiens.callbacks.checkpoint_io import AtomicCheckpointIO
    from geosapiens.callbacks.infrastructure import infrastructure_callbacks
    from geosapiens.cli.runs import (
        bind_wandb_runs,
        finish_wandb_runs,
        keep_csv_logs,
        resolve_ckpt_path,
        stable_checkpoint_folders,
    )

    class ExpandedPathsParser(LightningArgumentParser):
        """``--print_config`` (and the run's saved ``config.yaml``) show paths as the run reads them:
        ``$GEOSAPIENS_DATA`` and ``~`` expanded (an unset variable stays as written; the DataModule names
        it in its error)."""

        def dump(self, cfg, *args, **kwargs):
            return super().dump(expand_paths(cfg), *args, **kwargs)

    class GeoSapiensCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            link_crop_size(parser)

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            for key, value in vars(expand_paths(config)).items():
                config[key] = value
            seed = config.get("seed_everything")
            if isinstance(seed, int) and not isinstance(seed, bool):
                fill_data_seeds(config.get("data"), seed)

        def instantiate_trainer(self, **kwargs):
            # Checkpoints land whole or not at all: a kill or a full disk mid-save keeps the previous one.
            if not self._get(self.config_init, "trainer", default={}).get("plugins"):
                kwargs.setdefault("plugins", [AtomicCheckpointIO()])
            trainer = super().instantiate_trainer(**kwargs)
            # a run-safety callback the config names itself (its own options) replaces the default instance
            defaults = {id(c) for c in self.trainer_defaults["callbacks"]}
            named = {type(c) for c in trainer.callbacks if id(c) not in defaults}
            trainer.callbacks[:] = [
                c for c in trainer.callbacks if id(c) not in defaults or type(c) not in named
            ]
            stable_checkpoint_folders(trainer)
            return trainer

        def _resolve(self) -> None:
            config = self.config_init[self.subcommand]
            config["ckpt_path"] = resolve_ckpt_path(self.trainer, config.get("ckpt_path"), self.subcommand)
            for folder in keep_csv_logs(self.trainer, self.subcommand):
                if self.trainer.is_global_zero:
                    print(
                        f"geosapiens {self.subcommand}: logs in {folder} (the earlier metrics.csv is kept)",
                        file=sys.stderr,
                    )
            if self.subcommand == "fit":
                bind_wandb_runs(self.trainer, resume=config["ckpt_path"] is not None)

        def _finish(self) -> None:
            finish_wandb_runs(self.trainer)

        before_fit = before_validate = before_test = before_predict = _resolve
        after_fit = after_validate = after_test = after_predict = _finish

    return GeoSapiensCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        # added to the config's callbacks for every task (one the config names itself replaces its default)
        trainer_defaults={"callbacks": infrastructure_callbacks()},
        save_config_kwargs={"overwrite": True},
        parser_class=ExpandedPathsParser,
        args=args,
        run=run,
    )


def link_crop_size(parser) -> None:
    """The crop size, stated once: the stage's ``model.init_args.input_size``. The DataModule crops at it
    (its ``input_size``, or the parts' of a composed one: ``source`` and ``target``, a wrapped ``data``); a
    stage that needs another crop from its data says so with ``data_input_size`` (distillation: the
    teacher's crop). Tasks without an ``input_size`` (the pose prior, the small critic) keep their
    DataModule's own. (The checkpoint monitor is stated once too, by the task:
    :class:`~geosapiens.callbacks.selection.BestCheckpoint`.)
    """
    for target in (
        "data.init_args.input_size",
        *(f"data.init_args.{part}.init_args.input_size" for part in ("source", "target", "data")),
    ):
        parser.link_arguments(
            ("model.init_args.input_size", "model.init_args"), target, compute_fn=data_crop_size
        )


def data_crop_size(input_size, init_args) -> tuple[int, int]:
    """The crop a stage asks of its DataModule: its ``data_input_size`` when it has one, else its own."""
    return tuple(init_args.get("data_input_size") or input_size)


def fill_data_seeds(data, seed: int) -> None:
    """Give every DataModule of the config (composed ones' parts too) whose ``data_seed`` is unset the run's
    seed: the data order and augmentation then change with ``seed_everything``; an explicit ``data_seed``
    pins them."""
    from jsonargparse import Namespace

    if isinstance(data, list):
        for item in data:
            fill_data_seeds(item, seed)
        return
    if not isinstance(data, Namespace) or not isinstance(data.get("init_args"), Namespace):
        return
    init_args = data.init_args
    if "data_seed" in init_args and init_args.data_seed is None:
        init_args.data_seed = seed
    for value in vars(init_args).values():
        fill_data_seeds(value, seed)


def expand_paths(value):
    """``value`` (a parsed config, or any value in it) with ``$VARS`` and a leading ``~`` expanded in every
    string (:func:`geosapiens.io.expand_path`): every path argument reads the same, whichever class takes
    it."""
    from jsonargparse import Namespace

    from geosapiens.io import expand_path

    if isinstance(value, str):
        return expand_path(value)
    if isinstance(value, Namespace):
        return Namespace(**{k: expand_paths(v) for k, v in vars(value).items()})
    if isinstance(value, dict):
        return {k: expand_paths(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(expand_paths(v) for v in value)
    return value


def _raised_here(error: BaseException) -> bool:
    """Whether ``error`` was raised on purpose by this package (a ``ValueError``/``OSError`` whose innermost
    frame is ours: a bad argument or a missing file, already worded for the user)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    package = os.path.dirname(os.path.abspath(__file__))
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package + os.sep)


def _own_error(error: BaseException):
    """The project's error behind ``error`` (jsonargparse wraps what a constructor raised), else None."""
    from geosapiens.errors import GeoSapiensError

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, GeoSapiensError):
            return error
        if isinstance(error, ValueError | OSError) and _raised_here(error):
            return error
        error = error.__cause__ or error.__context__
    return None


def _run_trainer(argv: list[str], from_sys_argv: bool) -> int:
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from geosapiens.errors import UsageError

    try:
        # From the console, LightningCLI reads sys.argv itself: the DDP launcher re-executes sys.argv.
        trainer_cli(None if from_sys_argv else argv)
    except SIGTERMException:  # CheckpointOnSigterm has saved last.ckpt: a stop, not a crash
        print("geosapiens: stopped by SIGTERM; resume with --ckpt_path last", file=sys.stderr)
        return 128 + signal.SIGTERM  # the status of a process ended by SIGTERM
    except Exception as error:
        own = _own_error(error)
        if own is None:
            raise
        print(f"geosapiens {argv[0]}: {own}", file=sys.stderr)
        return 2 if isinstance(own, UsageError) else 1
    return 0


def _run_tool(name: str, argv: list[str]) -> int:
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(argv) or 0)
    except BrokenPipeError:  # `geosapiens evaluate ... | head`: the reader left; stop quietly, as cat does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    from_sys_argv = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"geosapiens {version()}")
        return 0
    if argv[0] == "predict" and len(argv) > 1 and not argv[1].startswith("-"):
        print(f"geosapiens: deprecated: {DEPRECATED_PREDICT}", file=sys.stderr)
        return _run_tool("infer", argv[1:])
    if argv[0] in TRAINER_VERBS:
        if argv[1:] in (["--help"], ["-h"]):  # the page every user gets: shipped, so it answers at once
            print(shipped_help(argv[0]), end="")
            return 0
        from geosapiens.cli.configs import missing_config

        missing = missing_config(argv[1:])
        if missing:
            print(f"geosapiens {argv[0]}: {missing}", file=sys.stderr)
            return 2
        return _run_trainer(argv, from_sys_argv)
    if argv[0] in GROUPS:
        group = argv[0]
        if len(argv) > 1 and f"{group} {argv[1]}" in COMMANDS:
            return _run_tool(f"{group} {argv[1]}", argv[2:])
        asked = len(argv) > 1 and argv[1] in ("-h", "--help")
        if not asked and len(argv) > 1:
            print(f"geosapiens {group}: unknown command {argv[1]!r}\n", file=sys.stderr)
        print(_usage(group), file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    if argv[0] in COMMANDS:
        return _run_tool(argv[0], argv[1:])
    print(f"geosapiens: unknown command {argv[0]!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
