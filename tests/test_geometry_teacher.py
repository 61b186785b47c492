"""The geometry teacher: a pose network on critic maps, its data path and its ``geo_pose`` pseudo-labels."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from geosapiens.cli.main import main
from geosapiens.data.augment import ViewAugment
from geosapiens.data.critic_cache import CriticCache
from geosapiens.data.formats.syrip import read_syrip
from geosapiens.data.geometry_inputs import CriticMapsDataset, MapDegradation, maps_to_input
from geosapiens.losses.functional import sample_maps
from geosapiens.models.codec import resize_aligned
from geosapiens.models.stage_checkpoint import load_geometry_teacher
from geosapiens.skeleton import COCO17

REPO = Path(__file__).resolve().parents[1]
TRAIN = "annotations/200R_1000S/person_keypoints_train_infant.json"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Tiny generated data and its oracle critic cache at 64 px."""
    root = tmp_path_factory.mktemp("geoteacher")
    data = root / "data"
    assert main(["data", "synth", "--out", str(data), "--preset", "tiny", "--seed", "0"]) == 0
    syrip = next(p for p in (data / "SyRIP", data / "syrip") if p.is_dir())
    cache = root / "cache"
    argv = [
        "critics",
        "cache",
        "--critic",
        "oracle",
        "--data",
        str(syrip),
        "--annotation",
        TRAIN,
        "--out",
        str(cache),
        "--input-size",
        "64",
        "64",
        "--no-progress",
    ]
    assert main(argv) == 0
    return {"root": root, "syrip": syrip, "cache": cache}


def _uv(points: torch.Tensor, size: int) -> torch.Tensor:
    return points / (size - 1)


def test_maps_follow_the_view_and_a_mirror_swaps_channels_and_negates_normal_x(tiny):
    records = read_syrip(tiny["syrip"], TRAIN)
    cache = CriticCache(tiny["cache"])
    canonical = CriticMapsDataset(records, cache, (64, 64))
    mirrored = CriticMapsDataset(
        records, cache, (64, 64), geometry=ViewAugment((1.0, 1.0), 0.0, 0.0, 1.0, 0.0)
    )
    on_body, agree = [], []
    for i in range(len(records)):
        a, b = canonical[i], mirrored[i]
        lab = a["weights"] > 0
        # ground-truth joints lie on the critic's body mask (channel 4) in the canonical crop
        body = sample_maps(a["image"][None, 4:5], _uv(a["keypoints"][None], 64))[0, :, 0]
        on_body.append(float(body[lab].mean()))
        # mirrored view: channel k is the original joint flip[k], its normal is the original with x negated
        flip = torch.as_tensor(COCO17.flip_indices)
        n_a = sample_maps(a["image"][None, 1:4], _uv(a["keypoints"][None], 64))[0][flip]
        n_b = sample_maps(b["image"][None, 1:4], _uv(b["keypoints"][None], 64))[0]
        ok = lab[flip] & (body[flip] > 0.99)
        agree.append((n_b[ok] * (n_a[ok] * torch.tensor([-1.0, 1.0, 1.0]))).sum(-1))
    assert np.mean(on_body) > 0.8
    cos = torch.cat(agree)
    assert len(cos) > 20 and float(cos.median()) > 0.95


def test_a_teacher_crop_smaller_than_the_caches_is_the_same_crop_of_the_box(tiny):
    records = read_syrip(tiny["syrip"], TRAIN)
    cache = CriticCache(tiny["cache"])  # 64x64 crops
    full, half = CriticMapsDataset(records, cache, (64, 64)), CriticMapsDataset(records, cache, (32, 32))
    ious = []
    for i in range(len(records)):
        a, b = full[i], half[i]
        torch.testing.assert_close(b["keypoints"], a["keypoints"] * (31 / 63), atol=1e-3, rtol=0)  # UDP
        body_a = resize_aligned(a["image"][None, 4:5], (32, 32))[0, 0] > 0.5
        body_b = b["image"][4] > 0.5
        if body_a.any():
            ious.append(float((body_a & body_b).sum() / (body_a | body_b).sum()))
    assert len(ious) > 10 and np.median(ious) > 0.9

    from geosapiens.data.datamodules import SyRIPSynthDataModule
    from geosapiens.data.geometry_inputs import CriticInputDataModule
    from geosapiens.errors import DataError

    wide = SyRIPSynthDataModule(root=tiny["syrip"], input_size=(32, 24), num_workers=0)
    with pytest.raises(DataError, match="cache of 64x64 crops, the model takes 32x24"):
        CriticInputDataModule(wide, tiny["cache"]).setup("fit")


def test_degradation_is_keyed_and_keeps_unit_normals_on_the_body(tiny):
    records = read_syrip(tiny["syrip"], TRAIN)
    ds = CriticMapsDataset(
        records, CriticCache(tiny["cache"]), (64, 64), degradation=MapDegradation(prob=1.0)
    )
    x, y = ds[3]["image"], ds[3]["image"]
    assert torch.equal(x, y)
    clean = CriticMapsDataset(records, CriticCache(tiny["cache"]), (64, 64))[3]["image"]
    assert not torch.equal(x, clean)
    body = x[4] > 0.5
    if body.any() and x[1:4].abs().sum() > 0:
        norms = x[1:4].norm(dim=0)[body]
        assert float(((norms - 1).abs() < 1e-3).float().mean()) > 0.99 or float(norms.max()) == 0.0


def test_geometry_teacher_trains_on_maps_and_its_heatmaps_supervise_the_student(tiny, tmp_path):
    config = REPO / "configs" / "demo" / "geometry_teacher.yaml"
    gt_dir = tmp_path / "gt"
    common = [
        "--trainer.max_steps=3",
        "--trainer.val_check_interval=3",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1",
    ]
    fit = [
        "fit",
        "--config",
        str(config),
        f"--data.init_args.critic_cache={tiny['cache']}",
        f"--data.init_args.data.init_args.root={tiny['syrip']}",
        "--data.init_args.data.init_args.batch_size=4",
        "--data.init_args.data.init_args.num_workers=0",
        # the teacher at half the student's crop, reading the student's 64 px cache (the paper's 256 vs 1024)
        "--data.init_args.data.init_args.input_size=[32,32]",
        "--model.init_args.input_size=[32,32]",
        f"--trainer.default_root_dir={gt_dir}",
        f"--trainer.logger.init_args.save_dir={gt_dir}",
        *common,
    ]
    assert main(fit) == 0
    teacher = gt_dir / "checkpoints" / "best.ckpt"
    assert teacher.is_file()
    # its validation confidence (mean heatmap peak over the hold-out) is logged and kept in the checkpoint
    with open(gt_dir / "metrics.csv") as f:
        logged = [float(r["val/confidence"]) for r in csv.DictReader(f) if r.get("val/confidence")]
    confidence = load_geometry_teacher(teacher, (64, 64)).confidence
    assert len(logged) == 1 and confidence == pytest.approx(logged[0]) and confidence > 0

    uda_dir = tmp_path / "uda"
    terms = (
        "{cons: {weight: 1.0}, manifold: {weight: 0.0}, geo_depth: {weight: 0.0}, geo_norm: {weight: 0.0}, "
        "geo_pose: {weight: 1.0}}"
    )
    uda = [
        "fit",
        "--config",
        str(REPO / "configs" / "demo" / "uda.yaml"),
        f"--data.init_args.source.init_args.root={tiny['syrip']}",
        f"--data.init_args.target.init_args.root={tiny['syrip']}",
        "--model.init_args.init_checkpoint=null",
        "--model.init_args.pose_prior=null",
        "--model.init_args.normal_priors=null",
        f"--data.init_args.target.init_args.critic_cache={tiny['cache']}",
        f"--model.init_args.geometry_teacher={teacher}",
        f"--model.init_args.loss_terms={terms}",
        "--model.init_args.input_size=[64,64]",
        "--model.init_args.objective={geo_pose_threshold: 0.0}",  # a 3-step teacher is never confident
        *[
            f"--data.init_args.{d}.init_args.{k}"
            for d in ("source", "target")
            for k in ("batch_size=4", "num_workers=0", "input_size=[64,64]")
        ],
        f"--trainer.default_root_dir={uda_dir}",
        f"--trainer.logger.init_args.save_dir={uda_dir}",
        *common,
    ]
    assert main(uda) == 0
    with open(uda_dir / "metrics.csv") as f:
        rows = [r["train/loss_geo_pose"] for r in csv.DictReader(f) if r.get("train/loss_geo_pose")]
    geo = np.array(rows, dtype=float)
    assert len(geo) >= 1 and np.isfinite(geo).all() and (geo > 0).all()
    # the frozen geometry teacher is re-read from its file, never saved with the stage
    state = torch.load(next(uda_dir.rglob("last.ckpt")), map_location="cpu", weights_only=True)["state_dict"]
    assert state and not any(k.startswith("geometry_teacher.") for k in state)

    with pytest.raises(ValueError, match="geometry_teacher"):
        from geosapiens.stages import MeanTeacherAdaptation

        MeanTeacherAdaptation(
            backbone="timm:regnetx_002",
            backbone_kwargs={"output_stride": 16},
            input_size=(64, 64),
            loss_terms={
                "geo_pose": {"weight": 1.0},
                "manifold": {"weight": 0.0},
                "geo_norm": {"weight": 0.0},
            },
        )


def test_maps_to_input_zeroes_everything_off_the_body():
    from geosapiens.models.critics import GeometryMaps

    depth = torch.full((1, 1, 4, 4), 3.0)
    normals = torch.ones(1, 3, 4, 4)
    valid = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    valid[..., 1:3, 1:3] = True
    x = maps_to_input(GeometryMaps(depth, normals, valid))
    assert x.shape == (1, 5, 4, 4)
    assert float(x[:, :4][~valid.expand(1, 4, 4, 4)].abs().sum()) == 0.0
    assert float(x[0, 0, 1, 1]) == 3.0 and float(x[0, 4].sum()) == 4.0


def test_geometry_signal_quick_writes_the_documented_json(tmp_path):
    out = tmp_path / "signal.json"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="offline")
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "geometry_signal.py"), "--quick", "--json", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["configured"] in result["objectives"]
    for name in ("geo_depth", "geo_norm", "geo_pose", "geo_heatmap", result["configured"]):
        row = result["objectives"][name]
        assert -1.0 <= row["spearman"] <= 1.0
        assert np.isfinite(row["descent_rel_change"])
    assert "| objective |" in done.stdout
