"""Every documented command line works as written (issue 15), run the way the README and the config headers
say, on generated data in the layout the paper configs read (``$GEOSAPIENS_DATA/SyRIP``,
``$GEOSAPIENS_DATA/MINI-RGBD_web``), from a temporary working folder (the configs' relative ``runs/...`` and
``demo_data/...`` paths land there). A small overlay only shrinks the model, the crop and the step counts.

- the paper chain of "Training the paper setting": critic cache, normal priors, geometry teacher, pose VAE,
  ``fit configs/uda.yaml`` (its W&B logger, offline), ``--ckpt_path last`` resuming the same W&B run and
  checkpoint folder, ``fit configs/fewshot.yaml`` from its default ``init_checkpoint`` and ``test
  configs/uda.yaml --ckpt_path best`` in a new CLI call;
- the demo configs' headers: ``fit``, ``test --ckpt_path best`` and dataset-level ``predict`` with
  ``PredictionWriter``; a TensorBoard logger;
- the paper chain's ``test`` with ``TestTimeAdaptation`` and ``fit configs/distill.yaml`` from the uda run;
- the command tree: group help, ``--version``, a closed pipe, one flag style, one progress switch, and
  ``--help`` without torch.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from geosapiens.cli.main import main
from geosapiens.metrics.evaluate import evaluate_files

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
TEST_FILE = "annotations/validate100/person_keypoints_validate_infant.json"

# The paper configs at a CPU size: a small timm CNN at 64 px instead of Sapiens-0.6B at 1024 px, 2 steps.
# The tiny preset has 2 MINI-RGBD sequences (the paper split names 12), so the source list is restated.
PAPER_TINY = """
trainer: {max_steps: 2, val_check_interval: 2, precision: 32-true, accelerator: cpu, devices: 1,
          num_sanity_val_steps: 0, log_every_n_steps: 1, enable_progress_bar: false}
model:
  init_args: {backbone: "timm:resnet10t", backbone_kwargs: {}, input_size: [64, 64], flip_test: false}
data:
  init_args:
    source:
      init_args:
        sources:
          - class_path: geosapiens.data.datamodules.MiniRGBDDataModule
            init_args: {root: $GEOSAPIENS_DATA/MINI-RGBD_web, train_sequences: ["01"], val_sequences: [],
                        test_sequences: []}
          - class_path: geosapiens.data.datamodules.SyRIPSynthDataModule
            init_args:
              root: $GEOSAPIENS_DATA/SyRIP
              train_file: annotations/1000S/person_keypoints_train_infant.json
        input_size: [64, 64]
        batch_size: 2
        num_workers: 0
    target:
      init_args: {input_size: [64, 64], batch_size: 2, num_workers: 0}
"""
# The geometry teacher at half the paper tiny crop: it reads the 64 px cache at 32 px, as the paper's 256 px
# teacher reads the 1024 px crops' cache.
TEACHER_TINY = """
trainer: {max_steps: 2, val_check_interval: 2, check_val_every_n_epoch: null, accelerator: cpu, devices: 1,
          num_sanity_val_steps: 0, log_every_n_steps: 1, enable_progress_bar: false}
model:
  init_args: {input_size: [32, 32]}
data:
  init_args: {data: {init_args: {batch_size: 2, num_workers: 0}}}
"""
FEWSHOT_TINY = """
trainer: {max_steps: 2, val_check_interval: 2, check_val_every_n_epoch: null, precision: 32-true,
          accelerator: cpu, devices: 1, num_sanity_val_steps: 0, enable_progress_bar: false}
model:
  init_args: {backbone: "timm:resnet10t", input_size: [64, 64], flip_test: false}
data:
  init_args: {input_size: [64, 64], batch_size: 2, num_workers: 0, num_shots: 3}
"""
DISTILL_TINY = """
trainer: {max_steps: 2, val_check_interval: 2, check_val_every_n_epoch: null, precision: 32-true,
          accelerator: cpu, devices: 1, num_sanity_val_steps: 0, enable_progress_bar: false}
model:
  init_args: {backbone: "timm:resnet10t", backbone_kwargs: {}, head_kwargs: {channels: [64, 64, 64]},
              input_size: [64, 64], data_input_size: [64, 64], teacher_flip: false}
data:
  init_args:
    source: {init_args: {input_size: [64, 64], batch_size: 2, num_workers: 0}}
    target: {init_args: {input_size: [64, 64], batch_size: 2, num_workers: 0}}
"""
# The demo configs at 64 px, 3 steps, validating at the end (so best.ckpt exists).
DEMO_TINY = """
trainer: {max_steps: 3, val_check_interval: 3, enable_progress_bar: false}
model:
  init_args: {backbone: "timm:resnet10t", input_size: [64, 64]}
data:
  init_args: {input_size: [64, 64], batch_size: 4, num_workers: 0}
"""


def _configs(*names: str) -> list[str]:
    """``--config`` arguments for files of the repository's ``configs/``."""
    return [arg for name in names for arg in ("--config", str(CONFIGS / name))]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder holding generated data as ``demo_data/`` (the demo configs' root) and
    ``$GEOSAPIENS_DATA`` pointing at it (the paper configs' root)."""
    root = tmp_path_factory.mktemp("documented")
    assert main(["data", "synth", "--out", str(root / "demo_data"), "--preset", "tiny", "--quiet"]) == 0
    for name, text in (
        ("paper_tiny.yaml", PAPER_TINY),
        ("teacher_tiny.yaml", TEACHER_TINY),
        ("fewshot_tiny.yaml", FEWSHOT_TINY),
        ("demo_tiny.yaml", DEMO_TINY),
        ("distill_tiny.yaml", DISTILL_TINY),
    ):
        (root / name).write_text(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("GEOSAPIENS_DATA", str(root / "demo_data"))
        mp.setenv("WANDB_MODE", "offline")
        yield root


def _wandb_ids(save_dir: Path) -> list[str]:
    """The run id of every (offline) W&B run folder under ``save_dir``, oldest first."""
    return [p.name.rsplit("-", 1)[1] for p in sorted((save_dir / "wandb").glob("offline-run-*"))]


@pytest.fixture(scope="module")
def paper(workdir) -> Path:
    """The README's "Training the paper setting" chain up to the first ``fit --config configs/uda.yaml``."""
    data = "$GEOSAPIENS_DATA/SyRIP".replace("$GEOSAPIENS_DATA", os.environ["GEOSAPIENS_DATA"])
    # The oracle critic stands in for Sapiens depth/normal, under the cache path uda.yaml reads.
    cache = [
        "critics",
        "cache",
        "--critic",
        "oracle",
        "--data",
        data,
        "--annotation",
        "annotations/200R_1000S/person_keypoints_train_infant.json",
        "--out",
        "runs/critics/sapiens_0.6b_syrip",
        "--input-size",
        "64",
        "64",
        "--no-progress",
    ]
    assert main(cache) == 0
    priors = [
        "priors",
        "fit",
        "--cache",
        "runs/critics/sapiens_0.6b_syrip",
        "--data",
        data,
        "--annotation",
        "annotations/1000S/person_keypoints_train_infant.json",
        "--out",
        "runs/critics/normal_priors_sapiens_0.6b.json",
        "--min-count",
        "3",
    ]
    assert main(priors) == 0  # read by the +normal and seed-geometry ablations
    assert main(["fit", *_configs("geometry_teacher.yaml"), "--config", "teacher_tiny.yaml"]) == 0
    assert (workdir / "runs/geometry_teacher/checkpoints/best.ckpt").is_file()  # uda.yaml's geometry_teacher
    vae = [
        "fit",
        *_configs("priors/pose_vae.yaml"),
        "--data.init_args.syrip_root",
        data,
        "--data.init_args.mini_rgbd_root",
        f"{os.environ['GEOSAPIENS_DATA']}/MINI-RGBD_web",
        "--trainer.max_epochs",
        "1",
        "--trainer.enable_progress_bar",
        "false",
    ]
    assert main(vae) == 0
    assert (workdir / "runs/pose_vae/checkpoints/last.ckpt").is_file()  # uda.yaml's pose_prior
    assert main(["fit", *_configs("uda.yaml"), "--config", "paper_tiny.yaml"]) == 0
    return workdir / "runs" / "uda"


def test_uda_config_runs_on_generated_data_with_checkpoints_in_a_stable_folder(paper):
    folder = paper / "checkpoints"
    assert (folder / "last.ckpt").is_file() and (folder / "best.ckpt").is_file()
    assert not list(paper.glob("geosapiens/*/checkpoints"))  # never under the logger's run id
    assert (folder / "wandb_run_id").read_text().strip() == _wandb_ids(paper)[-1]


# The README's baseline and ablation rows, each an overlay stacked on configs/uda.yaml.
OVERLAYS = [
    "baselines/source_only.yaml",
    "baselines/shift_style.yaml",
    "baselines/fidip.yaml",
    *(f"ablations/{name}.yaml" for name in (
        "no_geo_teacher", "no_body", "plus_depth", "plus_normal", "no_manifold", "no_elastic",
        "no_cutocclude", "seed_geometry",
    )),
]  # fmt: skip
ORACLE_TINY = """
trainer: {max_steps: 2, val_check_interval: 2, check_val_every_n_epoch: null, precision: 32-true,
          accelerator: cpu, devices: 1, num_sanity_val_steps: 0, enable_progress_bar: false}
model:
  init_args: {backbone: "timm:resnet10t", backbone_kwargs: {}, input_size: [64, 64], flip_test: false}
data:
  init_args: {batch_size: 2, num_workers: 0}
"""


def _root_dir(config: str) -> str:
    import yaml

    return yaml.safe_load((CONFIGS / config).read_text())["trainer"]["default_root_dir"]


@pytest.mark.slow
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_baseline_and_ablation_overlay_trains_on_generated_data(paper, workdir, overlay):
    assert main(["fit", *_configs("uda.yaml", overlay), "--config", "paper_tiny.yaml"]) == 0
    assert (workdir / _root_dir(overlay) / "checkpoints" / "best.ckpt").is_file()
    assert _wandb_ids(workdir / _root_dir(overlay)), "its W&B run belongs beside its checkpoints"


@pytest.mark.slow
def test_the_oracle_row_trains_on_generated_data(workdir):
    (workdir / "oracle_tiny.yaml").write_text(ORACLE_TINY)
    assert main(["fit", *_configs("warmup.yaml", "oracle.yaml"), "--config", "oracle_tiny.yaml"]) == 0
    assert (workdir / _root_dir("oracle.yaml") / "checkpoints" / "best.ckpt").is_file()


def test_ckpt_path_last_resumes_the_checkpoint_and_the_wandb_run(paper, capsys):
    import torch

    run_id = (paper / "checkpoints" / "wandb_run_id").read_text().strip()
    before = torch.load(paper / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert before["global_step"] == 2
    args = ["fit", *_configs("uda.yaml"), "--config", "paper_tiny.yaml", "--trainer.max_steps", "4"]
    done = _cli(*args, "--ckpt_path", "last", cwd=paper.parent.parent)  # a new process, as a resubmitted job
    assert done.returncode == 0, done.stderr[-3000:]
    after = torch.load(paper / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert after["global_step"] == 4
    ids = _wandb_ids(paper)
    assert len(ids) >= 2 and ids[-1] == ids[-2] == run_id  # the same W&B run, continued
    # A fresh fit into the used folder is refused (its best.ckpt would be the earlier run's).
    capsys.readouterr()
    assert main(["fit", *_configs("uda.yaml"), "--config", "paper_tiny.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(paper / "checkpoints") in err and "--ckpt_path last" in err


def test_ckpt_path_last_without_a_checkpoint_is_an_error_naming_the_folder(workdir, capsys):
    args = ["fit", *_configs("uda.yaml"), "--config", "paper_tiny.yaml"]
    args += ["--trainer.default_root_dir", "runs/never_started", "--ckpt_path", "last"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(workdir / "runs/never_started/checkpoints") in err[0]
    assert not (workdir / "runs/never_started/checkpoints").exists() or not list(
        (workdir / "runs/never_started/checkpoints").glob("*.ckpt")
    )


def test_fewshot_default_init_checkpoint_is_what_uda_writes_and_test_best_works(paper, workdir):
    # configs/fewshot.yaml's header: no --model.init_args.init_checkpoint needed.
    assert main(["fit", *_configs("fewshot.yaml"), "--config", "fewshot_tiny.yaml"]) == 0
    assert (workdir / "runs/fewshot/checkpoints/best.ckpt").is_file()
    # configs/uda.yaml's header, in a new CLI call: --ckpt_path best is the run's best.ckpt.
    assert main(["test", *_configs("uda.yaml"), "--config", "paper_tiny.yaml", "--ckpt_path", "best"]) == 0
    metrics = json.loads(next((workdir / "runs/uda").rglob("test_metrics.json")).read_text())
    assert 0.0 <= metrics["metrics"]["test/pck@0.1"] <= 1.0


def test_tta_test_command_of_the_readme(paper, workdir):
    # README "Training the paper setting": test with TestTimeAdaptation, after a critic cache of the test
    # images (the oracle critic again stands in for Sapiens).
    data = f"{os.environ['GEOSAPIENS_DATA']}/SyRIP"
    cache = [
        "critics",
        "cache",
        "--critic",
        "oracle",
        "--data",
        data,
        "--annotation",
        TEST_FILE,
        "--out",
        "runs/critics/sapiens_0.6b_test",
        "--input-size",
        "64",
        "64",
        "--no_progress",
    ]
    assert main(cache) == 0
    args = [
        "test",
        *_configs("uda.yaml"),
        "--config",
        "paper_tiny.yaml",
        "--ckpt_path",
        "best",
        "--trainer.inference_mode",
        "false",
        "--trainer.callbacks+=geosapiens.stages.TestTimeAdaptation",
        "--trainer.callbacks.steps",
        "2",
        "--trainer.callbacks.critic_cache",
        "runs/critics/sapiens_0.6b_test",
        "--trainer.callbacks.normal_priors",
        "runs/critics/normal_priors_sapiens_0.6b.json",
        "--trainer.callbacks.pose_prior",
        "runs/pose_vae/checkpoints/last.ckpt",
    ]
    started = time.time()
    assert main(args) == 0
    newest = max(paper.rglob("test_metrics.json"), key=lambda p: p.stat().st_mtime)
    assert newest.stat().st_mtime >= started
    metrics = json.loads(newest.read_text())
    assert metrics["run"]["checkpoint"] == str(paper / "checkpoints/best.ckpt")
    assert 0.0 <= metrics["metrics"]["test/pck@0.1"] <= 1.0


def test_distil_command_of_the_readme(paper, workdir):
    # `geosapiens fit --config configs/distill.yaml` (teacher: runs/uda/checkpoints/best.ckpt), then its test.
    assert main(["fit", *_configs("distill.yaml"), "--config", "distill_tiny.yaml"]) == 0
    assert (workdir / "runs/distill/checkpoints/best.ckpt").is_file()
    assert main(["test", *_configs("distill.yaml"), "--config", "distill_tiny.yaml", "--ckpt_path=best"]) == 0


def test_seeds_and_report_commands_of_the_readme(paper, workdir, capsys):
    # README "Comparing methods", one seed per method: seeds of the baseline overlays, then the report.
    for name, overlay in (
        ("source_only", ["--config", str(CONFIGS / "baselines/source_only.yaml")]),
        ("shift_style", ["--config", str(CONFIGS / "baselines/shift_style.yaml")]),
        ("uda", []),
    ):
        fit = [*_configs("uda.yaml"), *overlay, "--config", "paper_tiny.yaml"]
        seeds = ["seeds", "--seeds", "0", "--out", f"runs/seeds/{name}", "--no_progress"]
        assert main([*seeds, "--", *fit]) == 0
        assert list((workdir / f"runs/seeds/{name}/seed0").rglob("test_metrics.json"))
    report = [
        "report",
        "runs/seeds/source_only",
        "runs/seeds/shift_style",
        "runs/seeds/uda",
        "--names",
        "source-only",
        "SHIFT-style",
        "Geo-Sapiens",
        "--baseline",
        "source-only",
        "--baseline-of",
        "Geo-Sapiens*=SHIFT-style",
        "--out",
        "report/",
    ]
    assert main(report) == 0
    table = (workdir / "report/results.md").read_text()
    assert all(name in table for name in ("source-only", "SHIFT-style", "Geo-Sapiens"))
    rows = list(csv.DictReader((workdir / "report/results.csv").open()))
    assert {r["baseline"] for r in rows if r["method"] == "Geo-Sapiens"} == {"SHIFT-style"}


# -- the demo configs' headers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_warmup(workdir) -> Path:
    """``geosapiens fit --config configs/demo/warmup.yaml`` (configs/demo/warmup.yaml's header)."""
    assert main(["fit", *_configs("demo/warmup.yaml"), "--config", "demo_tiny.yaml"]) == 0
    return workdir / "runs/demo/warmup"


def test_demo_test_with_ckpt_path_best_in_a_new_call(demo_warmup, capsys):
    args = ["test", *_configs("demo/warmup.yaml", "demo/test_real.yaml"), "--config", "demo_tiny.yaml"]
    assert main([*args, "--ckpt_path", "best"]) == 0
    assert (demo_warmup / "test/version_0/test_metrics.json").is_file()
    capsys.readouterr()
    assert main([*args, "--ckpt_path", "best", "--trainer.default_root_dir", "runs/elsewhere"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "best.ckpt" in err[0] and "runs/elsewhere/checkpoints" in err[0]


def test_test_and_predict_from_the_headers_keep_the_training_log(demo_warmup, workdir, capsys):
    # The demo configs fix the CSV folder (runs/demo/warmup, version ""), where Lightning's CSV writer
    # deletes the metrics.csv it finds: the fit's log must survive test and predict run as documented.
    log = demo_warmup / "metrics.csv"
    before = log.read_text()
    assert "val/pck@0.1" in before
    configs = [*_configs("demo/warmup.yaml", "demo/test_real.yaml"), "--config", "demo_tiny.yaml"]
    tested = lambda: sorted((demo_warmup / "test").glob("version_*/test_metrics.json"))  # noqa: E731
    earlier = tested()
    assert main(["test", *configs, "--ckpt_path", "best"]) == 0
    predict = ["predict", *configs, "--ckpt_path", str(demo_warmup / "checkpoints/best.ckpt")]
    predict += ["--trainer.callbacks+=geosapiens.callbacks.prediction_writer.PredictionWriter"]
    assert main([*predict, "--trainer.callbacks.output_dir", str(workdir / "predictions/warmup")]) == 0
    assert log.read_text() == before
    assert len(tested()) == len(earlier) + 1 and set(earlier) <= set(tested())  # each test its own folder
    assert (demo_warmup / "predict/version_0/hparams.yaml").is_file()
    assert "predict: logs in runs/demo/warmup/predict/version_0" in capsys.readouterr().err


def test_dataset_level_predict_writes_results_for_the_test_split(demo_warmup, workdir):
    out = workdir / "predictions_dataset"
    args = ["predict", *_configs("demo/warmup.yaml", "demo/test_real.yaml"), "--config", "demo_tiny.yaml"]
    args += ["--ckpt_path", str(demo_warmup / "checkpoints/best.ckpt")]
    args += ["--trainer.callbacks+=geosapiens.callbacks.prediction_writer.PredictionWriter"]
    args += ["--trainer.callbacks.output_dir", str(out), "--trainer.default_root_dir", "runs/predict"]
    args += ["--trainer.logger.init_args.save_dir", "runs/predict"]
    assert main(args) == 0
    gt = workdir / "demo_data/SyRIP" / TEST_FILE
    report = evaluate_files(gt, out / "coco_results.json")
    assert report["num_results"] == report["num_images"] == 6  # the tiny preset's test split
    assert report["pck"]["images_without_result"] == 0


def test_tensorboard_logger_is_installed_with_the_package_and_receives_images(demo_warmup, workdir):
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"tensorboard==' in pyproject  # pinned (the [tensorboard] extra, part of [dev])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = ["fit", *_configs("demo/warmup.yaml"), "--config", "demo_tiny.yaml"]
    args += ["--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger"]
    args += ["--trainer.logger.save_dir", "runs/tb", "--trainer.default_root_dir", "runs/tb"]
    assert main(args) == 0
    events = sorted((workdir / "runs/tb").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()
    assert tags["scalars"] and tags["images"] == ["val/predictions"], tags  # the overlays went there too


def test_print_config_shows_the_paths_the_run_reads(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GEOSAPIENS_DATA", str(tmp_path / "datasets"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    args = ["fit", *_configs("uda.yaml"), "--data.init_args.target.init_args.critic_cache", "~/cache"]
    with pytest.raises(SystemExit) as stop:
        main([*args, "--print_config"])
    assert stop.value.code == 0
    printed = capsys.readouterr().out
    assert "$GEOSAPIENS_DATA" not in printed and "~/" not in printed
    data = tmp_path / "datasets"
    assert f"root: {data}/MINI-RGBD_web" in printed and f"root: {data}/SyRIP" in printed
    assert f"critic_cache: {tmp_path}/home/cache" in printed


# -- the command tree ----------------------------------------------------------------------------------------


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "geosapiens.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=cwd,
    )


@pytest.mark.parametrize("group", ["data", "critics", "priors"])
def test_group_help_lists_its_commands_and_exits_0(group, tmp_path):
    done = _cli(group, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"usage: geosapiens {group} COMMAND" in done.stdout
    assert {"data": "synth", "critics": "cache", "priors": "fit"}[group] in done.stdout
    bare = _cli(group, cwd=tmp_path)
    assert bare.returncode == 2 and "usage:" in bare.stderr


def test_version_top_help_and_unknown_command(tmp_path):
    from geosapiens import __version__

    done = _cli("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"geosapiens {__version__}"
    top = _cli("--help", cwd=tmp_path)
    assert top.returncode == 0 and "infer" in top.stdout and "data" in top.stdout
    assert _cli("no-such-command", cwd=tmp_path).returncode == 2


# Every command's --help needs no torch (each tool imports its work when it runs; the trainer verbs' page is
# shipped, rendered ahead by LightningCLI's parser: test_the_shipped_trainer_help_is_the_parsers).
LIGHT_HELP = [
    ["--help"],
    ["--version"],
    ["fit", "--help"],
    ["validate", "--help"],
    ["test", "-h"],
    ["predict", "--help"],
    ["convert", "--help"],
    ["data", "--help"],
    ["critics", "--help"],
    ["priors", "--help"],
    ["infer", "--help"],
    ["evaluate", "--help"],
    ["report", "--help"],
    ["export", "--help"],
    ["seeds", "--help"],
    ["critics", "cache", "--help"],
    ["critics", "degrade", "--help"],
    ["priors", "fit", "--help"],
    ["data", "check", "--help"],
    ["data", "synth", "--help"],
    ["demo", "--help"],
    ["configs"],
    ["configs", "copy", "--help"],
]


@pytest.mark.parametrize("args", LIGHT_HELP, ids=" ".join)
def test_help_imports_neither_torch_nor_lightning(args, tmp_path):
    code = (
        "import contextlib, sys; from geosapiens.cli.main import main\n"
        f"with contextlib.suppress(SystemExit): main({args!r})\n"
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO / "src")),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_the_shipped_trainer_help_is_the_parsers(capsys, tmp_path):
    """The page `geosapiens fit --help` prints at once is the one LightningCLI's parser prints (re-render
    with `python -m geosapiens.cli.trainer_help` after changing the CLI or a pin)."""
    from geosapiens.cli.main import TRAINER_VERBS, main, shipped_help

    for verb in TRAINER_VERBS:
        # in a new interpreter, as the console renders it: the test suite's own LightningModule subclasses
        # would otherwise be listed among the known --model classes
        code = f"from geosapiens.cli.trainer_help import render_help; print(render_help({verb!r}), end='')"
        env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
        rendered = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                  cwd=tmp_path, check=True).stdout  # fmt: skip
        assert f"usage: geosapiens [options] {verb} [-c CONFIG]" in rendered and "--ckpt_path" in rendered
        stale = f"cli/help/{verb}.txt is stale: python -m geosapiens.cli.trainer_help"
        assert shipped_help(verb) == rendered, stale
        capsys.readouterr()
        assert main([verb, "--help"]) == 0 and capsys.readouterr().out == rendered


def test_evaluate_into_a_closed_pipe_exits_quietly(workdir):
    gt = workdir / "demo_data/SyRIP" / TEST_FILE
    doc = json.loads(gt.read_text())
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in doc["annotations"]
    ]
    pred = workdir / "perfect.json"
    pred.write_text(json.dumps(results))
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "geosapiens.cli.main",
            "evaluate",
            "--gt",
            str(gt),
            "--pred",
            str(pred),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=workdir,
    )
    proc.stdout.close()  # `| head` that has already left
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_old_file_predict_form_still_works_with_a_deprecation(tmp_path, capsys):
    assert main(["predict", str(tmp_path / "missing.mp4"), "--model", str(tmp_path / "none.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "deprecated" in err and "geosapiens infer" in err and "missing.mp4" in err


def test_one_flag_style_with_the_other_accepted():
    from geosapiens.cli.evaluate import _parser
    from geosapiens.cli.infer import build_parser
    from geosapiens.cli.style import both_styles

    parser = both_styles(build_parser())
    for flag in ("--no_progress", "--no-progress"):
        assert parser.parse_args(["a.mp4", "--model", "m.onnx", flag]).progress is False
    assert parser.parse_args(["a.mp4", "--model", "m", "--initial-box", "1,2,3,4"]).initial_box == "1,2,3,4"
    evaluate = both_styles(_parser())
    for flag in ("--pck_norm", "--pck-norm"):
        assert evaluate.parse_args(["--gt", "g", "--pred", "p", flag, "torso"]).pck_norm == "torso"
    text = evaluate.format_help()
    assert 0 < text.index("--pck_norm {") < text.index("--pck-norm {")  # snake case first, as LightningCLI


@pytest.mark.parametrize("command", ["infer", "critics cache", "priors fit", "data synth", "seeds", "demo"])
def test_one_progress_switch_on_every_tool_with_a_bar(command, capsys):
    with pytest.raises(SystemExit):
        main([*command.split(), "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no_progress," in text and "--no-progress" in text
    assert "--trainer.enable_progress_bar false" in text


def test_demo_no_progress_reaches_the_trainer_runs_and_the_tools():
    from geosapiens.cli.demo import plan

    p = plan(Path("runs/demo"), Path("demo_data"), None, [0], fast=True)
    run = p.runs[0]
    assert not any("progress" in a for a in p.run_args(run, 0))
    p.progress = False
    assert "--trainer.enable_progress_bar=false" in p.run_args(run, 0) and p.bars() == ["--no_progress"]


@pytest.mark.parametrize(
    ("before", "flag", "values", "after_parsing"),
    [
        (["critics", "cache", "--critic", "bogus:x", "--data", "d", "--out", "o"], "input_size", ["64", "48"],
         "unknown critic 'bogus:x'"),
        (["report", "runs/a"], "source_only", ["a"], "--source-only and --oracle go together"),
        (["demo"], "steps_scale", ["-1"], "--steps-scale must be > 0"),
        (["seeds", "--seeds", "0", "--out", "o"], "test_config", ["t.yaml"],
         "give the `fit` arguments after --"),
    ],
)  # fmt: skip
def test_the_other_tools_accept_both_spellings_too(before, flag, values, after_parsing, capsys):
    # Each spelling gets past the parser, to the tool's own check of the parsed values.
    for spelling in (flag, flag.replace("_", "-")):
        with contextlib.suppress(SystemExit):  # argparse's parser.error
            main([*before, f"--{spelling}", *values])
        err = capsys.readouterr().err
        assert after_parsing in err and "unrecognized arguments" not in err, (spelling, err)
