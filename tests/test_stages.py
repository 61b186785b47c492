"""The training stages end to end through the real CLI, on generated data (tiny preset, CPU, a few steps)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
import yaml

from geosapiens.cli.main import main, trainer_cli
from geosapiens.metrics.pck import PCK

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """Tiny generated data, an oracle critic cache, normal priors and a pose VAE: everything stage 2 reads."""
    root = tmp_path_factory.mktemp("stages")
    data = root / "data"
    assert main(["data", "synth", "--out", str(data), "--preset", "tiny", "--seed", "0"]) == 0
    syrip = data / "SyRIP"
    cache, priors = root / "cache", root / "priors.json"
    assert (
        main(
            [
                "critics",
                "cache",
                "--critic",
                "oracle",
                "--data",
                str(syrip),
                "--annotation",
                "annotations/200R_1000S/person_keypoints_train_infant.json",
                "--out",
                str(cache),
                "--input-size",
                "64",
                "64",
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "priors",
                "fit",
                "--cache",
                str(cache),
                "--data",
                str(syrip),
                "--annotation",
                "annotations/1000S/person_keypoints_train_infant.json",
                "--out",
                str(priors),
                "--min-count",
                "3",
            ]
        )
        == 0
    )
    vae_dir = root / "vae"
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs/priors/pose_vae.yaml"),
            "--config",
            str(REPO / "configs/demo/pose_vae.yaml"),
            "--data.init_args.syrip_root",
            str(syrip),
            "--data.init_args.mini_rgbd_root",
            str(data / "MINI-RGBD_web"),
            "--data.init_args.mini_rgbd_sequences",
            '["01"]',
            "--trainer.max_epochs",
            "1",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(vae_dir),
            "--trainer.logger.init_args.save_dir",
            str(vae_dir),
        ]
    )
    vae = next(vae_dir.rglob("last.ckpt"))
    return {"syrip": syrip, "cache": cache, "priors": priors, "vae": vae, "root": root}


def _common(run_dir: Path, steps: int) -> list[str]:
    return [
        "--trainer.max_steps",
        str(steps),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.logger.init_args.save_dir",
        str(run_dir),
        "--trainer.num_sanity_val_steps",
        "0",
    ]


def _small(prefix: str) -> list[str]:
    """Overrides that make a demo DataModule tiny and single-process."""
    return [f"{prefix}.input_size", "[64, 64]", f"{prefix}.batch_size", "4", f"{prefix}.num_workers", "0"]


def _warmup(prepared, run_dir: Path, steps: int = 2) -> Path:
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs/demo/warmup.yaml"),
            "--model.init_args.input_size",
            "[64, 64]",
            "--model.init_args.backbone",
            "timm:resnet10t",
            "--data.init_args.root",
            str(prepared["syrip"]),
            *_small("--data.init_args"),
            *_common(run_dir, steps),
        ]
    )
    return next(run_dir.rglob("last.ckpt"))


def _adaptation_data(prepared) -> list[str]:
    src, tgt = "--data.init_args.source.init_args", "--data.init_args.target.init_args"
    return [
        f"{src}.root",
        str(prepared["syrip"]),
        *_small(src),
        f"{tgt}.root",
        str(prepared["syrip"]),
        *_small(tgt),
    ]


def _uda_args(prepared, run_dir: Path, init: Path, steps: int) -> list[str]:
    return [
        "--config",
        str(REPO / "configs/demo/uda.yaml"),
        "--model.init_args.input_size",
        "[64, 64]",
        "--model.init_args.backbone",
        "timm:resnet10t",
        "--model.init_args.init_checkpoint",
        str(init),
        "--data.init_args.target.init_args.critic_cache",
        str(prepared["cache"]),
        "--model.init_args.pose_prior",
        str(prepared["vae"]),
        "--model.init_args.normal_priors",
        str(prepared["priors"]),
        "--model.init_args.geometry_teacher",  # geo_pose is tested in test_geometry_teacher.py
        "null",
        # every term from the first step, so a two-step run exercises them all
        "--model.init_args.loss_terms",
        '{"cons": {"weight": 1.0}, "manifold": {"weight": 0.05}, "geo_body": {"weight": 1.0}, '
        '"geo_depth": {"weight": 0.1}, "geo_norm": {"weight": 0.1}}',
        *_adaptation_data(prepared),
        *_common(run_dir, steps),
    ]


def test_supervised_stage_fits_tests_and_predicts(prepared, tmp_path):
    ckpt = _warmup(prepared, tmp_path / "warmup")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == 2 and any(k.startswith("model.head.") for k in state["state_dict"])
    real = (
        ["--config", str(REPO / "configs/demo/oracle.yaml")]
        if (REPO / "configs/demo/oracle.yaml").exists()
        else []
    )
    args = [
        "--config",
        str(REPO / "configs/demo/warmup.yaml"),
        *real,
        "--model.init_args.input_size",
        "[64, 64]",
        "--model.init_args.backbone",
        "timm:resnet10t",
        "--data",
        "geosapiens.data.datamodules.SyRIPRealDataModule",
        "--data.init_args.root",
        str(prepared["syrip"]),
        "--data.init_args.val_file",
        "annotations/val_real/person_keypoints_val_infant.json",
        *_small("--data.init_args"),
        *_common(tmp_path / "test", 1),
        "--ckpt_path",
        str(ckpt),
    ]
    main(["test", *args])
    results = next((tmp_path / "test").rglob("test_metrics.json"))
    assert '"test/pck@0.1"' in results.read_text()
    saved = json.loads(results.read_text())
    curve = saved["pck_curve"]  # the stage's, from its test predictions: it meets the logged PCK
    by_t = dict(zip([round(t, 2) for t in curve["thresholds"]], curve["pck"], strict=True))
    for t in (0.05, 0.1, 0.2):
        assert by_t[t] == pytest.approx(saved["metrics"][f"test/pck@{t:g}"])


def test_mean_teacher_resumes_student_teacher_schedule_and_optimiser(prepared, tmp_path):
    init = _warmup(prepared, tmp_path / "warmup")
    run = tmp_path / "uda"
    main(["fit", *_uda_args(prepared, run, init, steps=2)])
    ckpt_path = next(run.rglob("last.ckpt"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    keys = ckpt["state_dict"].keys()
    assert any(k.startswith("teacher.") for k in keys) and any(k.startswith("model.") for k in keys)
    assert not any("critic" in k for k in keys)
    assert not any(k.startswith("vae.") for k in keys)  # the frozen pose prior stays in its own file
    ema_state = next(v for k, v in ckpt["callbacks"].items() if "EMATeacher" in k)
    assert ema_state  # the callback's step counter travels with the checkpoint
    student = {k[6:]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    teacher = {k[8:]: v for k, v in ckpt["state_dict"].items() if k.startswith("teacher.")}
    assert any(not torch.equal(student[k], teacher[k]) for k in student if student[k].is_floating_point())

    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["step"] = trainer.global_step
            seen["teacher"] = {k: v.clone() for k, v in pl_module.teacher.state_dict().items()}
            seen["optim"] = copy.deepcopy(trainer.optimizers[0].state_dict())  # live tensors move on

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.setdefault("epoch", trainer.current_epoch)

    cli = trainer_cli(_uda_args(prepared, tmp_path / "resumed", init, steps=3), run=False)
    cli.trainer.callbacks.append(Probe())
    assert type(cli.trainer.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"  # the CLI's default
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=str(ckpt_path))
    assert seen["step"] == 2
    for k, v in teacher.items():
        torch.testing.assert_close(seen["teacher"][k], v, rtol=0, atol=0)
    saved_optim = ckpt["optimizer_states"][0]["state"]
    assert seen["optim"]["state"].keys() == saved_optim.keys()
    first = next(iter(saved_optim))
    torch.testing.assert_close(seen["optim"]["state"][first]["exp_avg"], saved_optim[first]["exp_avg"])
    # two batches per epoch: after two steps, training (and the loss schedule) go on at epoch 1
    assert seen["epoch"] == 1


def test_fidip_baseline_runs(prepared, tmp_path):
    init = _warmup(prepared, tmp_path / "warmup")
    main(
        [
            "fit",
            "--config",
            str(REPO / "configs/demo/uda.yaml"),
            "--config",
            str(REPO / "configs/demo/fidip.yaml"),
            "--model.init_args.input_size",
            "[64, 64]",
            "--model.init_args.backbone",
            "timm:resnet10t",
            "--model.init_args.init_checkpoint",
            str(init),
            *_adaptation_data(prepared),
            *_common(tmp_path / "fidip", 2),
        ]
    )
    ckpt = torch.load(next((tmp_path / "fidip").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert any(k.startswith("domain_classifier.") for k in ckpt["state_dict"])
    assert len(ckpt["optimizer_states"]) == 2


def _odd_val_split(prepared, count: int = 3) -> Path:
    """The first ``count`` real validation images: an odd split, which Lightning's default distributed sampler
    would pad with a repeat."""
    syrip = prepared["syrip"]
    full = json.loads((syrip / "annotations/val_real/person_keypoints_val_infant.json").read_text())
    keep = {im["id"] for im in full["images"][:count]}
    part = {
        **full,
        "images": [im for im in full["images"] if im["id"] in keep],
        "annotations": [a for a in full["annotations"] if a["image_id"] in keep],
    }
    path = syrip / f"annotations/val{count}/person_keypoints_val_infant.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(part))
    return path


def _distributed_fit(out: Path, args: list[str], pythonpath: list[Path] = ()) -> list[dict]:
    """``tests/distributed_fit.py`` in a subprocess (Lightning's ddp launcher re-executes it for rank 1);
    what each rank ended training with."""
    cmd = [sys.executable, str(REPO / "tests/distributed_fit.py"), str(out), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, [REPO / "src", *pythonpath]))}
    done = subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stderr + done.stdout
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_mean_teacher_under_ddp_keeps_ranks_identical_and_reduces_metrics(prepared, tmp_path):
    """Two gloo ranks, 3 steps, validation after step 2 only. Both ranks end with bit-identical student and
    teacher, BatchNorm statistics included (each rank's last forward updates them from its own batch, and no
    validation forward re-broadcasts them: EMATeacher must average them). The logged PCK is that of the whole
    (odd-sized) validation split: the ranks' local counts add up to every labelled joint once, and a
    single-process validation of the same checkpoint gives the same value."""
    init = _warmup(prepared, tmp_path / "warmup")
    val = _odd_val_split(prepared)
    run = tmp_path / "ddp"
    args = [
        *_uda_args(prepared, run, init, steps=3),
        "--data.init_args.target.init_args.val_file",
        str(val),
        "--trainer.val_check_interval",
        "2",
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
    ]
    ranks = _distributed_fit(tmp_path / "ranks", args)
    assert [r["global_step"] for r in ranks] == [3, 3]
    first, second = (r["state"] for r in ranks)
    assert first.keys() == second.keys()
    assert any(k.startswith("teacher.") and "running_var" in k for k in first)  # BatchNorm buffers too
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert any(
        not torch.equal(first[k], first["teacher." + k[6:]]) for k in first if k.startswith("model.")
    )  # the teacher is an average, not a copy

    labelled = sum(
        v > 0 for a in json.loads(val.read_text())["annotations"] for v in a["keypoints"][2::3]
    )
    counts = [r["val_counts"] for r in ranks]
    assert all(c["count"].sum() > 0 for c in counts)  # each rank evaluated part of the split
    assert int(sum(c["count"].sum() for c in counts)) == labelled  # ... and no image twice
    pooled = PCK()
    for name in ("correct", "count", "excluded"):
        setattr(pooled, name, sum(c[name] for c in counts))
    logged = [r["metrics"]["val/pck@0.1"] for r in ranks]
    assert logged[0] == logged[1] == pytest.approx(float(pooled.compute()["pck@0.1"]), abs=1e-7)

    best = run / "checkpoints" / "best.ckpt"  # the weights validated at step 2
    assert torch.load(best, map_location="cpu", weights_only=True)["global_step"] == 2
    cli = trainer_cli(args[:-4], run=False)  # the same configuration on one process
    (metrics,) = cli.trainer.validate(cli.model, cli.datamodule, ckpt_path=str(best), verbose=False)
    assert metrics["val/pck@0.1"] == pytest.approx(logged[0], abs=1e-7)


def test_mean_teacher_under_fsdp_on_two_cpu_processes(prepared, tmp_path):
    """The fsdp_2b preset's strategy (ViT-block and PoseModel wrap units, per-block activation checkpointing,
    full state dict) through Lightning's FSDPStrategy on two gloo ranks, a tiny ViT, 3 steps. After every
    step the gathered teacher is exactly the EMA of the gathered student (buffers copied); ranks agree;
    weight decay reaches the 2-D weights, which FSDP shows the optimiser as 1-D shard views; the checkpoint
    keeps the plain ``model.*``/``teacher.*`` keys."""
    from geosapiens.models.stage_checkpoint import pose_model_from_checkpoint

    preset = yaml.safe_load((REPO / "configs/cluster/fsdp_2b.yaml").read_text())["trainer"]["strategy"]
    strategy = {**preset, "class_path": "distributed_fit.CPUFSDPStrategy"}  # tests/distributed_fit.py
    config = tmp_path / "fsdp_cpu.yaml"
    config.write_text(yaml.safe_dump({"trainer": {"strategy": strategy, "devices": 2}}))
    run = tmp_path / "fsdp"
    args = [
        *_uda_args(prepared, run, prepared["vae"], steps=3),
        "--model.init_args.init_checkpoint",
        "null",
        "--model.init_args.backbone",
        "sapiens_nano",
        "--model.init_args.backbone_kwargs",
        "{}",
        "--trainer.val_check_interval",
        "2",
        "--config",
        str(config),
    ]
    ranks = _distributed_fit(tmp_path / "ranks", args, pythonpath=[REPO / "tests"])
    decay = 0.99  # configs/demo/uda.yaml ema_decay
    for rank in ranks:
        assert rank["global_step"] == 3 and len(rank["history"]) == 3
        assert rank["weight_decays"] == [0.0, 1e-4]
        assert any(".blocks.1.attn.qkv.weight" in k for k in rank["state"])  # the wrappers' names are gone
        prev = None
        for state in rank["history"]:
            student = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
            teacher = {k[8:]: v for k, v in state.items() if k.startswith("teacher.")}
            assert student.keys() == teacher.keys()
            for k, s in student.items():
                if prev is None or not s.is_floating_point() or "running_" in k:
                    assert torch.equal(teacher[k], s), k  # step 1 copies; buffers are always copied
                else:
                    ema = torch.lerp(prev[k], s, 1 - decay)
                    torch.testing.assert_close(teacher[k], ema, rtol=0, atol=1e-6)
            prev = teacher
        assert max(float((prev[k] - student[k]).abs().max()) for k in student) > 1e-4  # not a copy
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name

    best = run / "checkpoints" / "best.ckpt"
    keys = torch.load(best, map_location="cpu", weights_only=True)["state_dict"].keys()
    assert not any("_wrapped_module" in k for k in keys)
    teacher, _, _ = pose_model_from_checkpoint(best, weights="teacher")
    assert any(k.startswith("backbone.blocks.") for k in teacher.state_dict())


def test_test_time_adaptation_lowers_the_geometric_objective_and_resets(prepared, tmp_path):
    from geosapiens.data.datamodules import SyRIPRealDataModule
    from geosapiens.stages import SupervisedPose, TestTimeAdaptation

    torch.manual_seed(0)
    module = SupervisedPose(backbone="timm:resnet10t", input_size=(64, 64), flip_test=False)
    trained = {k: v.clone() for k, v in module.model.head.state_dict().items()}
    data = SyRIPRealDataModule(
        prepared["syrip"],
        mode="labelled",
        input_size=(64, 64),
        batch_size=3,
        num_workers=0,
        train_file="annotations/200R/person_keypoints_train_infant.json",
        test_file="annotations/200R/person_keypoints_train_infant.json",
        val_fraction=0.0,
    )
    tta = TestTimeAdaptation(
        steps=8,
        lr=1e-3,
        critic_cache=str(prepared["cache"]),
        normal_priors=str(prepared["priors"]),
        pose_prior=str(prepared["vae"]),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        inference_mode=False,
        callbacks=[tta],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.test(module, datamodule=data)
    assert len(tta.history) >= 2
    assert all(after < before for before, after in tta.history)
    for k, v in module.model.head.state_dict().items():  # the trained head is back after testing
        torch.testing.assert_close(v, trained[k], rtol=0, atol=0)

    with pytest.raises(RuntimeError, match="inference_mode"):
        L.Trainer(accelerator="cpu", callbacks=[TestTimeAdaptation()], logger=False).test(
            module, datamodule=data
        )
