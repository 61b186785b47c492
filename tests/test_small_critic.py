"""Small trainable critic: losses, training decreases the loss, the YAML config trains and exports, and the
exported (or checkpointed) network loads back as a frozen critic giving the same maps."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.cli import LightningCLI

from geosapiens.cli.critics import main as cache_main
from geosapiens.data.critic_cache import CriticCache
from geosapiens.data.rendered_maps import RenderedMapsDataset
from geosapiens.errors import CheckpointError
from geosapiens.losses.functional import critic_losses
from geosapiens.models.critics import GeometryMaps
from geosapiens.models.small_critic import SmallCritic, SmallCriticNet
from geosapiens.stages.small_critic import SmallCriticTask

REPO = Path(__file__).resolve().parents[1]
INPUT_HW = (64, 48)
# the smallest timm ResNet keeps these tests fast on a shared CPU; the config trains resnet18
TINY = dict(
    backbone="timm:resnet10t",
    depth_deconvs=(32, 16, 16, 8, 8),
    depth_convs=(8,),
    normal_deconvs=(32, 16, 16),
    normal_convs=(16,),
)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, Path]:
    """The generator's tiny preset (SyRIP layout + geosapiens_maps); its 12 synthetic training stills."""
    from geosapiens.data.synth.generate import generate
    from geosapiens.data.synth.presets import PRESETS

    out = tmp_path_factory.mktemp("synth")
    generate(out, PRESETS["tiny"], seed=0, workers=1, progress=False)
    root = out / "SyRIP"
    return root, root / "annotations" / "1000S" / "person_keypoints_train_infant.json"


def _records(root: Path, ann: Path):
    from geosapiens.data.formats.syrip import read_syrip

    return read_syrip(root, ann.relative_to(root))


def test_losses_are_zero_for_a_perfect_prediction_and_finite_for_empty_masks():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(2, 1, 8, 8, generator=g) + 1
    normals = torch.nn.functional.normalize(torch.randn(2, 3, 8, 8, generator=g), dim=1)
    valid = torch.rand(2, 1, 8, 8, generator=g) > 0.3
    valid[1] = False
    from geosapiens.models.geometry import normalize_relative_depth

    target = GeometryMaps(depth=normalize_relative_depth(depth, valid), normals=normals, valid=valid)
    inside = torch.ones_like(valid)
    logit = torch.where(valid, 20.0, -20.0)
    perfect = critic_losses(3 * depth + 7, logit, normals, target, inside)  # any scale and shift of the depth
    assert perfect["depth"] < 1e-4 and perfect["normal"] < 1e-6 and perfect["mask"] < 1e-6
    worse = critic_losses(-depth, -logit, -normals, target, inside)
    assert worse["depth"] > 0.5 and worse["normal"] > 1.9 and worse["mask"] > 10
    assert all(torch.isfinite(v) for v in worse.values())


def test_net_shapes_and_unit_normals():
    net = SmallCriticNet(**TINY).eval()
    depth, logit, normals = net(torch.randn(2, 3, *INPUT_HW))
    assert depth.shape == logit.shape == (2, 1, *INPUT_HW) and normals.shape == (2, 3, *INPUT_HW)
    torch.testing.assert_close(normals.norm(dim=1), torch.ones(2, *INPUT_HW), atol=1e-4, rtol=0)


def test_a_dilated_backbone_round_trips_through_the_export(tmp_path):
    """backbone_kwargs (here a stride-16 backbone: a finer mask) travel in the file's metadata."""
    task = SmallCriticTask(**TINY, backbone_kwargs={"output_stride": 16})
    assert task.net.backbone.stride == 16
    critic = SmallCritic.from_file(task.export(tmp_path / "critic.safetensors"))
    assert critic.net.config["backbone_kwargs"] == {"output_stride": 16}
    images = torch.randn(1, 3, *INPUT_HW)
    task.eval()
    torch.testing.assert_close(critic(images).normals, task.net(images)[2])


@pytest.mark.slow
def test_dataset_crops_and_targets(rendered):
    root, ann = rendered
    records = _records(root, ann)
    assert len(records) == 12 and all(r.maps_path is not None for r in records)
    ds = RenderedMapsDataset(records, INPUT_HW)
    for i in (0, 5):
        item = ds[i]
        assert item["image"].shape == (3, *INPUT_HW) and item["depth"].shape == (1, *INPUT_HW)
        body = item["valid"][0]
        assert 0.1 < body.float().mean() < 0.9 and not (body & ~item["inside"][0]).any()
        torch.testing.assert_close(
            item["normals"].norm(dim=0)[body], torch.ones(int(body.sum())), atol=1e-3, rtol=0
        )
        assert (item["normals"][2][body] < 0).float().mean() > 0.9  # the visible body faces the camera
        d = item["depth"][0][body]
        assert abs(d.median()) < 1e-3 and abs((d - d.median()).abs().mean() - 1) < 1e-2
    torch.manual_seed(0)
    aug = RenderedMapsDataset(records, INPUT_HW, augment=True)[0]
    assert not torch.equal(aug["image"], ds[0]["image"]) and aug["valid"].any()


@pytest.mark.slow
def test_restyling_changes_the_pixels_and_keeps_the_geometry(rendered):
    """Background and clothes are retextured around the rendered body mask; occluders cut the mask only."""
    root, ann = rendered
    records = _records(root, ann)
    plain = RenderedMapsDataset(records, INPUT_HW, augment=True)
    restyled = RenderedMapsDataset(records, INPUT_HW, augment=True, restyle=1.0, photometric=1.0)
    cut = 0
    for i in range(4):
        torch.manual_seed(i)
        a = plain[i]
        torch.manual_seed(i)  # the same view: the affine is drawn before the restyling
        b = restyled[i]
        for key in ("depth", "normals", "inside"):
            assert torch.equal(a[key], b[key]), key
        assert not (b["valid"] & ~a["valid"]).any()  # an occluder never adds body
        cut += int((a["valid"] & ~b["valid"]).sum())
        background = ~a["valid"][0] & a["inside"][0]
        changed = (a["image"] - b["image"]).abs().amax(dim=0) > 0.1
        assert changed[background].float().mean() > 0.5 and changed[a["valid"][0]].float().mean() > 0.5
    assert cut > 0


@pytest.mark.slow
def test_a_few_training_steps_decrease_the_loss(rendered):
    root, ann = rendered
    torch.manual_seed(0)
    ds = RenderedMapsDataset(_records(root, ann), INPUT_HW)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    target = GeometryMaps(depth=batch["depth"], normals=batch["normals"], valid=batch["valid"])
    task = SmallCriticTask(**TINY, lr=3e-3)
    task.log = lambda *a, **k: None  # no trainer attached: logging is not what is tested here
    opt = task.configure_optimizers()

    def components() -> dict[str, float]:
        task.eval()
        with torch.no_grad():
            return {
                k: v.item()
                for k, v in critic_losses(*task.net(batch["image"]), target, batch["inside"]).items()
            }

    before = components()
    task.train()
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = task.training_step(batch, 0)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = components()
    assert np.isfinite(losses).all() and losses[-1] < 0.75 * losses[0], losses
    assert after["depth"] < 0.95 * before["depth"] and after["mask"] < before["mask"], (before, after)
    assert after["normal_angle_deg"] < 0.6 * before["normal_angle_deg"], (before, after)


@pytest.mark.slow
def test_config_trains_exports_and_loads_as_a_frozen_critic(rendered, tmp_path, monkeypatch):
    root, ann = rendered
    monkeypatch.setattr(sys, "argv", ["geosapiens"])
    export = tmp_path / "critic.safetensors"
    cli = LightningCLI(
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        save_config_callback=None,
        args=[
            "--config",
            str(REPO / "configs" / "critics" / "small_critic.yaml"),
            "--data.init_args.data_root",
            str(root),
            "--data.init_args.annotation_file",
            str(ann.relative_to(root)),
            "--data.init_args.input_size",
            json.dumps(list(INPUT_HW)),
            "--data.init_args.batch_size",
            "2",
            "--data.init_args.num_workers",
            "0",
            "--data.init_args.val_every",
            "4",
            "--data.init_args.restyle",
            "0.5",
            "--data.init_args.target_annotation_file",
            "annotations/val_real/person_keypoints_val_infant.json",
            *[
                a
                for k, v in TINY.items()
                for a in (f"--model.init_args.{k}", json.dumps(v) if k != "backbone" else v)
            ],
            "--model.init_args.export_path",
            str(export),
            "--trainer.max_steps",
            "2",
            "--trainer.num_sanity_val_steps",
            "0",
            "--trainer.limit_val_batches",
            "1",
            "--trainer.val_check_interval",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
        ],
    )
    assert isinstance(cli.model, SmallCriticTask)
    cli.trainer.fit(cli.model, cli.datamodule)
    metrics = cli.trainer.callback_metrics
    assert export.is_file() and np.isfinite(metrics["train/loss"].item())
    # the other style's maps are validated beside the held-out renders
    assert 0 <= metrics["val_target/mask_iou"].item() <= 1 and np.isfinite(metrics["val/mask_iou"].item())

    critic = SmallCritic.from_file(export)
    assert critic.state_dict() == {} and len(critic.weights()) > 0
    assert not any(p.requires_grad for p in critic.parameters()) and not critic.train().training
    images = torch.randn(2, 3, *INPUT_HW)
    maps = critic(images)
    cli.model.eval()
    depth, logit, normals = cli.model.net(images)
    torch.testing.assert_close(maps.normals, normals)
    assert torch.equal(maps.valid, torch.sigmoid(logit) > 0.5)
    assert (maps.depth[~maps.valid] == 0).all()

    ckpt = next((tmp_path / "run").rglob("*.ckpt"))
    from_ckpt = SmallCritic.from_file(ckpt)
    torch.testing.assert_close(from_ckpt(images).normals, maps.normals)

    # and as a cached critic: `geosapiens critics cache --critic small:FILE`
    out = tmp_path / "cache"
    argv = [
        "--critic",
        f"small:{export}",
        "--data",
        str(root),
        "--annotation",
        str(ann.relative_to(root)),
        "--out",
        str(out),
        "--input-size",
        *map(str, INPUT_HW),
        "--stride",
        "1",  # full resolution: the mirrored lookup below is compared pixel for pixel
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert cache_main(argv) == 0
    cache = CriticCache(out, expected_critic=f"small:{export}", input_size=INPUT_HW)
    assert len(cache) == 12
    view = torch.tensor([[[-1.0, 0.0, INPUT_HW[1] - 1.0], [0.0, 1.0, 0.0]]])  # a mirrored view
    mirrored = cache.lookup([str(_records(root, ann)[0].image_path)], view)
    stored = cache.load([_records(root, ann)[0].image_path])
    torch.testing.assert_close(
        mirrored.normals[:, 0], -stored.normals.float().flip(-1)[:, 0], atol=1e-3, rtol=0
    )


def test_loading_bad_files_names_the_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        SmallCritic.from_file(bad)
    with pytest.raises(CheckpointError, match="no such"):
        SmallCritic.from_file(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    from geosapiens.models.small_critic import METADATA_KEY

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="metadata"):
        SmallCritic.from_file(foreign)
    misfit = tmp_path / "misfit.safetensors"
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    save_file({"w": torch.zeros(2)}, str(misfit), metadata={METADATA_KEY: json.dumps(config)})
    with pytest.raises(
        CheckpointError,
        match=r"misfit.safetensors: weights do not fit.* missing keys .*1 unexpected keys \['w'\]",
    ):
        SmallCritic.from_file(misfit)


def test_critic_inside_a_training_module_stays_out_of_its_checkpoint():
    class Stage(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = torch.nn.Linear(2, 2)
            self.critic = SmallCritic(SmallCriticNet(**TINY))

    a, b = Stage(), Stage()
    state = a.state_dict()
    assert sorted(state) == ["head.bias", "head.weight"]
    before = {k: v.clone() for k, v in b.critic.weights().items()}
    assert b.load_state_dict(state, strict=True).missing_keys == []
    torch.testing.assert_close(b.head.weight, a.head.weight)
    for k, v in b.critic.weights().items():  # the critic keeps its own weights
        assert torch.equal(v, before[k])
    with pytest.raises(RuntimeError, match="Missing key"):  # the rest of the model is still checked strictly
        b.load_state_dict({"head.weight": state["head.weight"]}, strict=True)
