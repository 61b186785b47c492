"""Every shipped config parses (alone or stacked on the config it overlays) and resolves its classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from geosapiens.cli.main import main, trainer_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STACKS = [
    ["warmup.yaml"],
    ["uda.yaml"],
    ["fewshot.yaml"],
    ["distill.yaml"],
    ["geometry_teacher.yaml"],
    ["warmup.yaml", "oracle.yaml"],
    *[["uda.yaml", f"baselines/{n}"] for n in ("source_only.yaml", "shift_style.yaml", "fidip.yaml")],
    ["baselines/zero_shot_sapiens.yaml"],
    *[["uda.yaml", f"ablations/{p.name}"] for p in sorted((CONFIGS / "ablations").glob("*.yaml"))],
    *[
        [f"demo/{p.name}"]
        for p in sorted((CONFIGS / "demo").glob("*.yaml"))
        if p.name not in ("pose_vae.yaml", "fidip.yaml")
    ],
    ["demo/uda.yaml", "demo/fidip.yaml"],
    ["priors/pose_vae.yaml", "demo/pose_vae.yaml"],
    ["critics/small_critic.yaml"],
]


@pytest.mark.parametrize("stack", STACKS, ids=lambda s: "+".join(s))
def test_config_parses(stack, capsys):
    args = ["fit"] + [a for name in stack for a in ("--config", str(CONFIGS / name))] + ["--print_config"]
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: geosapiens." in printed


def test_unknown_key_is_refused_with_its_name(capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", "--config", str(CONFIGS / "uda.yaml"), "--model.init_args.not_a_knob", "1"])
    assert done.value.code != 0
    assert "not_a_knob" in capsys.readouterr().err


OVERLAYS = [
    *[("uda.yaml", f"ablations/{p.name}") for p in sorted((CONFIGS / "ablations").glob("*.yaml"))],
    *[("uda.yaml", f"baselines/{n}") for n in ("source_only.yaml", "shift_style.yaml")],
    *[("demo/uda.yaml", f"demo/{n}") for n in ("shift_style.yaml", "mean_teacher.yaml")],
]


def _loss_terms(stack: list[str], capsys) -> dict[str, dict]:
    args = ["fit"] + [a for name in stack for a in ("--config", str(CONFIGS / name))] + ["--print_config"]
    with pytest.raises(SystemExit):
        main(args)
    return yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["loss_terms"]


@pytest.mark.slow
@pytest.mark.parametrize("base, overlay", OVERLAYS, ids=lambda s: s)
def test_an_overlay_keeps_every_term_of_its_base(base, overlay, capsys):
    """A stacked config replaces the whole ``loss_terms`` mapping (jsonargparse merges no dicts): an overlay
    that names one term would silently run every other term at the plan's default weight and epoch."""
    before, after = _loss_terms([base], capsys), _loss_terms([base, overlay], capsys)
    model = yaml.safe_load((CONFIGS / overlay).read_text()).get("model") or {}
    named = (model.get("init_args") or {}).get("loss_terms") or {}
    for term, value in before.items():
        assert term in after, f"{overlay} drops {term} of {base}"
        if term not in named or "start_epoch" not in named[term]:
            assert after[term]["start_epoch"] == value["start_epoch"], f"{overlay}: {term} starts elsewhere"
        if term not in named:
            assert after[term]["weight"] == value["weight"], f"{overlay}: {term} changes weight"


# -- what the CLI wires: each shared value stated once -----------------------------------------------------


def _built(tmp_path, monkeypatch, *args: str):
    """The stage, DataModule and trainer the CLI builds from ``args`` (nothing runs)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GEOSAPIENS_DATA", str(tmp_path / "datasets"))
    return trainer_cli([*args, "--trainer.logger", "false"], run=False)


def test_the_crop_size_is_the_stages_for_every_part_of_the_data(tmp_path, monkeypatch):
    fidip = ["--config", str(CONFIGS / "uda.yaml"), "--config", str(CONFIGS / "baselines/fidip.yaml")]
    small = ["--model.init_args.backbone", "timm:resnet10t", "--model.init_args.backbone_kwargs", "{}"]
    cli = _built(tmp_path, monkeypatch, *fidip, *small, "--model.init_args.input_size", "[64, 48]")
    assert tuple(cli.model.hparams.input_size) == (64, 48)
    assert cli.datamodule.source.input_size == cli.datamodule.target.input_size == (64, 48)


def test_a_distillation_student_crops_its_data_at_the_teachers_size(tmp_path, monkeypatch):
    cli = _built(tmp_path, monkeypatch, "--config", str(CONFIGS / "distill.yaml"))
    assert tuple(cli.model.hparams.input_size) == (256, 256)
    assert cli.datamodule.source.input_size == cli.datamodule.target.input_size == (1024, 1024)


def test_a_task_without_a_crop_size_keeps_its_datamodules(tmp_path, monkeypatch):
    cli = _built(tmp_path, monkeypatch, "--config", str(CONFIGS / "critics/small_critic.yaml"))
    assert tuple(cli.datamodule.hparams.input_size) == (128, 96)


def test_the_data_seed_is_the_runs_seed_unless_pinned(tmp_path, monkeypatch):
    distill = ["--config", str(CONFIGS / "distill.yaml"), "--seed_everything", "7"]
    cli = _built(tmp_path, monkeypatch, *distill, "--data.init_args.target.init_args.data_seed", "3")
    assert (cli.datamodule.source.data_seed, cli.datamodule.target.data_seed) == (7, 3)


def test_every_path_argument_is_read_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cli = _built(tmp_path, monkeypatch, "--config", str(CONFIGS / "critics/small_critic.yaml"),
                 "--model.init_args.export_path", "$GEOSAPIENS_DATA/critic.safetensors",
                 "--data.init_args.data_root", "~/synth")  # fmt: skip
    assert cli.model.hparams.export_path == str(tmp_path / "datasets" / "critic.safetensors")
    assert cli.datamodule.hparams.data_root == str(tmp_path / "home" / "synth")


def test_every_task_gets_the_run_safety_callbacks_from_the_cli(tmp_path, monkeypatch):
    from geosapiens.callbacks.checkpoint_io import AtomicCheckpointIO
    from geosapiens.callbacks.guards import CheckpointOnSigterm, LastCheckpointAtEnd, SkipNonFiniteSteps
    from geosapiens.callbacks.rng import RestoreRNG
    from geosapiens.data.robust import BadSampleReport

    safety = {CheckpointOnSigterm, LastCheckpointAtEnd, RestoreRNG, BadSampleReport, SkipNonFiniteSteps}
    for config in ("critics/small_critic.yaml", "priors/pose_vae.yaml", "distill.yaml"):
        trainer = _built(tmp_path, monkeypatch, "--config", str(CONFIGS / config)).trainer
        kinds = {type(cb) for cb in trainer.callbacks}
        assert safety <= kinds, config
        assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO), config


def test_a_run_safety_callback_the_config_names_replaces_the_default(tmp_path, monkeypatch):
    from geosapiens.callbacks.guards import SkipNonFiniteSteps

    trainer = _built(tmp_path, monkeypatch, "--config", str(CONFIGS / "priors/pose_vae.yaml"),
                     "--trainer.callbacks+=geosapiens.callbacks.guards.SkipNonFiniteSteps",
                     "--trainer.callbacks.max_in_row=3").trainer  # fmt: skip
    guards = [cb for cb in trainer.callbacks if isinstance(cb, SkipNonFiniteSteps)]
    assert [g.max_in_row for g in guards] == [3]
