"""The ``geosapiens`` command.

``fit | validate | test | predict`` go to LightningCLI (subclass mode, stacked ``--config``,
``--print_config``, ``--ckpt_path last``), exactly as torchgeo's entry point does. The other verbs are small
tools, each a ``main(argv) -> int`` in the module that owns the work, listed in :data:`TOOLS`.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

TRAINER_VERBS = ("fit", "validate", "test", "predict")

# "verb [subverb]" -> "module:function"; each function takes the remaining argv and returns an exit code.
TOOLS: dict[str, tuple[str, str]] = {
    "data check": ("geosapiens.data.check", "validates a MINI-RGBD or SyRIP folder and lists every problem"),
    "data synth": ("geosapiens.data.synth.cli", "writes procedural infant data in the real formats"),
    "convert": ("geosapiens.models.convert", "converts an official Sapiens checkpoint to safetensors"),
    "critics cache": ("geosapiens.models.critic_cache", "precomputes critic depth/normal maps for a dataset"),
    "priors fit": ("geosapiens.priors", "fits per-keypoint normal priors (von Mises-Fisher) from a critic"),
    "evaluate": ("geosapiens.metrics.evaluate", "scores a COCO-keypoints results file against ground truth"),
    "seeds": ("geosapiens.seeds", "fits and tests one stage config under several seeds (seed<k>/ folders)"),
    "report": ("geosapiens.metrics.report", "compares finished runs over seeds: table, paired CIs, plots"),
    "export": ("geosapiens.deploy.export", "exports a checkpoint's pose network to ONNX and checks it"),
    "demo": ("geosapiens.demo", "runs the whole method end to end on generated data (CPU, minutes)"),
}


# ``geosapiens predict INPUT ...`` (a path first, not an option) is the deployment predictor.
DEPLOY_PREDICT = "geosapiens.deploy.predict"


def _usage() -> str:
    lines = [
        "usage: geosapiens {fit,validate,test,predict} [--config CONFIG ...] [options]",
        "       geosapiens predict INPUT [INPUT ...] --model CKPT_OR_ONNX [options]",
        "       geosapiens TOOL ...",
        "",
        f"  {'predict INPUT':<16} keypoint tracks from images, folders and videos (predict INPUT --help)",
    ]
    lines += [f"  {verb:<16} {help_}" for verb, (_, help_) in TOOLS.items()]
    return "\n".join(lines)


def trainer_cli(args: list[str], run: bool = True):
    """LightningCLI over every stage module and DataModule the package defines (``run=False``: parse and
    instantiate only, for callers that drive the trainer themselves)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    import geosapiens.data.datamodules  # noqa: F401  (registers class paths for configs)
    import geosapiens.stages  # noqa: F401
    from geosapiens.io import AtomicCheckpointIO

    class GeoSapiensCLI(LightningCLI):
        def instantiate_trainer(self, **kwargs):
            # Checkpoints land whole or not at all: a kill or a full disk mid-save keeps the previous one.
            if not self._get(self.config_init, "trainer", default={}).get("plugins"):
                kwargs.setdefault("plugins", [AtomicCheckpointIO()])
            return super().instantiate_trainer(**kwargs)

    return GeoSapiensCLI(
        model_class=LightningModule,
        datamodule_class=LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "predict" and len(argv) > 1 and not argv[1].startswith("-"):
        return int(importlib.import_module(DEPLOY_PREDICT).main(argv[1:]) or 0)
    if argv[0] in TRAINER_VERBS:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        try:
            trainer_cli(argv)
        except SIGTERMException:  # CheckpointOnSigterm has saved last.ckpt: a stop, not a crash
            print("geosapiens: stopped by SIGTERM; resume with --ckpt_path last", file=sys.stderr)
            return 128 + signal.SIGTERM  # the status of a process ended by SIGTERM
        return 0
    for n in (2, 1):
        verb = " ".join(argv[:n])
        if len(argv) >= n and verb in TOOLS:
            module = importlib.import_module(TOOLS[verb][0])
            return int(module.main(argv[n:]) or 0)
    print(f"geosapiens: unknown command {' '.join(argv[:2])!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
