"""The pose prior: normalisation, augmentation, data plumbing, checkpoints, and the acceptance check that a
VAE trained for a few seconds on plausible infant poses scores broken poses (reversed knees, swapped limbs)
worse."""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from geosapiens.data.pose_vae_data import PoseVAEDataModule, augment_poses
from geosapiens.errors import CheckpointError, DataError
from geosapiens.losses.functional import manifold_loss
from geosapiens.models.pose_vae import PoseVAE, normalize_pose
from geosapiens.skeleton import COCO17
from geosapiens.stages.pose_prior import PosePriorTask

REPO = Path(__file__).resolve().parents[1]
J = {n: i for i, n in enumerate(COCO17.names)}


# infant pose sampler ---------------------------------------------------------------------------------------


def _dirs(deg: np.ndarray) -> np.ndarray:
    """(N, 2) unit vectors at ``deg`` degrees from image-down (+y) towards +x."""
    a = np.radians(deg)
    return np.stack([np.sin(a), np.cos(a)], -1)


def _rotate(v: np.ndarray, deg: np.ndarray) -> np.ndarray:
    a = np.radians(deg)[:, None]
    return np.concatenate(
        [np.cos(a) * v[:, :1] - np.sin(a) * v[:, 1:], np.sin(a) * v[:, :1] + np.cos(a) * v[:, 1:]], 1
    )


def sample_infant_poses(n: int, rng: np.random.Generator, *, knee_flex=(10.0, 120.0)) -> np.ndarray:
    """(n, 17, 2) supine-infant COCO-17 poses in a canonical frame (mid-hip at 0, head up, torso ~1).

    Infant proportions (big head, short limbs) and joint-angle noise: shoulder and hip abduction, elbows
    bending towards the head, knees bending towards the midline (frog legs). Each side is built as a left side
    and the right one is its mirror with its own angles, so "which way a joint bends" is mirror-consistent.
    """

    def side() -> dict[str, np.ndarray]:
        shoulder = np.stack([0.42 + rng.normal(0, 0.02, n), -1.0 + rng.normal(0, 0.03, n)], -1)
        hip = np.stack([0.28 + rng.normal(0, 0.02, n), rng.normal(0, 0.02, n)], -1)
        upper = _dirs(rng.uniform(20, 160, n))  # abduction from "arm along the body" to "arm above the head"
        elbow = shoulder + 0.45 * upper
        fore = _rotate(upper, -rng.uniform(0, 130, n))  # flexes towards the head for a +x (left) side
        wrist = elbow + 0.40 * fore
        thigh = _dirs(rng.uniform(10, 70, n))
        knee = hip + 0.55 * thigh
        shank = _rotate(thigh, rng.uniform(*knee_flex, n))  # bends back towards the midline
        ankle = knee + 0.50 * shank
        return {
            "shoulder": shoulder,
            "elbow": elbow,
            "wrist": wrist,
            "hip": hip,
            "knee": knee,
            "ankle": ankle,
        }

    left = side()
    right = {k: v * np.array([-1.0, 1.0]) for k, v in side().items()}  # own angles, mirrored
    kp = np.zeros((n, 17, 2))
    for name in left:
        kp[:, J[f"left_{name}"]], kp[:, J[f"right_{name}"]] = left[name], right[name]
    neck = 0.5 * (kp[:, J["left_shoulder"]] + kp[:, J["right_shoulder"]])
    turn = rng.uniform(-30, 30, n)
    up, lat = _rotate(np.tile([[0.0, -1.0]], (n, 1)), turn), _rotate(np.tile([[1.0, 0.0]], (n, 1)), turn)
    nose = neck + 0.55 * up
    kp[:, J["nose"]] = nose
    kp[:, J["left_eye"]], kp[:, J["right_eye"]] = nose + 0.1 * up + 0.1 * lat, nose + 0.1 * up - 0.1 * lat
    kp[:, J["left_ear"]], kp[:, J["right_ear"]] = nose + 0.22 * lat, nose - 0.22 * lat
    return (kp + rng.normal(0, 0.015, kp.shape)).astype(np.float32)


def to_pixels(kp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random rotation (lying infants), scale and placement in a 256 px crop."""
    n = len(kp)
    a = np.radians(rng.uniform(-180, 180, n))
    R = np.stack([np.stack([np.cos(a), -np.sin(a)], -1), np.stack([np.sin(a), np.cos(a)], -1)], -2)
    s = rng.uniform(40, 80, n)[:, None, None]
    return (np.einsum("nij,nkj->nki", R, kp) * s + rng.uniform(100, 150, (n, 1, 2))).astype(np.float32)


def reverse_knees(kp: np.ndarray) -> np.ndarray:
    """Reflect each ankle across its thigh line: the knee bends the wrong way, bone lengths unchanged."""
    out = kp.copy()
    for s in ("left", "right"):
        h, k, a = kp[:, J[f"{s}_hip"]], kp[:, J[f"{s}_knee"]], kp[:, J[f"{s}_ankle"]]
        d = (k - h) / np.linalg.norm(k - h, axis=-1, keepdims=True)
        rel = a - k
        out[:, J[f"{s}_ankle"]] = k + 2 * (rel * d).sum(-1, keepdims=True) * d - rel
    return out


def swap_limbs(kp: np.ndarray) -> np.ndarray:
    """Left forearm and left shank exchange their joints (elbow <-> knee, wrist <-> ankle)."""
    out = kp.copy()
    for a, b in (("left_elbow", "left_knee"), ("left_wrist", "left_ankle")):
        out[:, [J[a], J[b]]] = kp[:, [J[b], J[a]]]
    return out


# normalisation ---------------------------------------------------------------------------------------------


def test_normalize_pose_frame_and_invariances():
    rng = np.random.default_rng(0)
    kp = torch.from_numpy(to_pixels(sample_infant_poses(8, rng), rng))
    lab = torch.ones(17, dtype=torch.bool)
    out = normalize_pose(kp, lab)
    mid_hip = 0.5 * (out[:, J["left_hip"]] + out[:, J["right_hip"]])
    torso = 0.5 * ((out[:, 5] - out[:, 11]).norm(dim=-1) + (out[:, 6] - out[:, 12]).norm(dim=-1))
    assert mid_hip.abs().max() < 1e-5 and torso == pytest.approx(torch.ones(8), abs=1e-5)
    assert normalize_pose(kp * 3.0 + 17.0, lab) == pytest.approx(out, abs=1e-5)
    R = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    assert normalize_pose(kp @ R.T, lab) == pytest.approx(out @ R.T, abs=1e-5)  # rotation-equivariant


def test_normalize_pose_unlabelled_and_degenerate():
    rng = np.random.default_rng(1)
    kp = torch.from_numpy(to_pixels(sample_infant_poses(2, rng), rng))
    lab = torch.ones(2, 17, dtype=torch.bool)
    lab[:, 1:5] = False  # MINI-RGBD: no eyes or ears
    garbage = kp.clone()
    garbage[:, 1:5] = float("nan")
    out = normalize_pose(garbage, lab)
    assert torch.isfinite(out).all() and (out[:, 1:5] == 0).all()
    assert out[:, 5:] == pytest.approx(normalize_pose(kp, lab)[:, 5:], abs=1e-6)
    # without hips: centred on the labelled joints' mean, scaled by their spread
    no_hips = lab.clone()
    no_hips[:, [11, 12]] = False
    fallback = normalize_pose(kp, no_hips)
    assert fallback[:, no_hips[0]].mean(1).abs().max() < 1e-5
    assert fallback[:, no_hips[0]].pow(2).sum(-1).mean(-1) == pytest.approx(torch.ones(2), abs=1e-4)
    # coincident joints and an all-unlabelled pose: finite values and gradients
    same = torch.full((2, 17, 2), 5.0, requires_grad=True)
    for mask in (torch.ones(17, dtype=torch.bool), torch.zeros(17, dtype=torch.bool)):
        res = normalize_pose(same, mask)
        (g,) = torch.autograd.grad(res.sum(), same)
        assert torch.isfinite(res).all() and torch.isfinite(g).all()


def test_augment_poses_flip_swaps_channels_and_rotation_keeps_shape():
    rng = np.random.default_rng(2)
    kp = torch.from_numpy(sample_infant_poses(4, rng))
    lab = torch.ones(4, 17, dtype=torch.bool)
    lab[:, J["left_ear"]] = False
    g = torch.Generator().manual_seed(0)
    flipped, flab = augment_poses(kp, lab, rotation_deg=0.0, flip_prob=1.0, scale_range=0.0, generator=g)
    assert flipped[:, J["right_wrist"]] == pytest.approx(kp[:, J["left_wrist"]] * torch.tensor([-1.0, 1.0]))
    assert not flab[:, J["right_ear"]].any() and flab[:, J["left_ear"]].all()
    rotated, _ = augment_poses(kp, lab, rotation_deg=180.0, flip_prob=0.0, scale_range=0.0, generator=g)
    assert torch.cdist(rotated, rotated) == pytest.approx(torch.cdist(kp, kp), abs=1e-4)
    assert not torch.allclose(rotated, kp, atol=1e-3)
    stretched, _ = augment_poses(kp, lab, rotation_deg=0.0, flip_prob=0.0, scale_range=0.3, generator=g)
    ratio = stretched / kp
    assert ((ratio - 1.0).abs() <= 0.3 + 1e-5).all()
    assert ratio[:, :, 0].std(1).max() < 1e-4  # one factor per axis and pose
    _, dropped = augment_poses(kp, torch.ones(4, 17, dtype=torch.bool), drop_prob=1.0, generator=g)
    assert dropped[:, [5, 6, 11, 12]].all() and not dropped[:, [0, 7, 9, 13, 15]].any()  # torso never dropped


# data module -----------------------------------------------------------------------------------------------


def test_pose_datamodule_from_arrays_filters_and_splits():
    rng = np.random.default_rng(3)
    poses = list(to_pixels(sample_infant_poses(50, rng), rng))
    poses[0] = poses[0].copy()
    poses[0][J["left_hip"]] = np.nan  # unusable: the normalisation needs the torso
    poses[1] = poses[1].copy()
    poses[1][J["nose"]] = np.nan  # usable, nose unlabelled
    dm = PoseVAEDataModule(poses=poses, val_fraction=0.2, batch_size=16)
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 49 and len(dm.val_set) == 10
    assert (~dm.train_set.labelled).sum() + (~dm.val_set.labelled).sum() == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["keypoints"].shape == (16, 17, 2) and batch["labelled"].dtype == torch.bool
    dm.trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    dm.trainer.training = True  # training batches are augmented after transfer, validation ones are not
    augmented = dm.on_after_batch_transfer(batch, 0)
    assert not torch.allclose(augmented["keypoints"], batch["keypoints"])
    dm.trainer.validating = True
    assert dm.on_after_batch_transfer(batch, 0) is batch
    again = PoseVAEDataModule(poses=poses, val_fraction=0.2)
    again.setup("fit")
    assert torch.equal(again.val_set.keypoints, dm.val_set.keypoints)  # validation augmentation is fixed
    with pytest.raises(DataError, match="no pose source"):
        PoseVAEDataModule().setup("fit")


def test_pose_datamodule_reads_syrip_and_mini_rgbd(syrip_sample, tmp_path):
    from fixtures_mini_rgbd import write_mini_rgbd

    write_mini_rgbd(tmp_path / "mini", sequences=("01", "02", "03"), frames=(0, 1, 2), occlude=())
    dm = PoseVAEDataModule(
        syrip_root=str(syrip_sample),
        syrip_annotation_files=["annotations/200R/person_keypoints_train_infant.json"],
        syrip_domain="real",  # the sample holds the 32 real images
        mini_rgbd_root=str(tmp_path / "mini"),
        val_fraction=0.2,
    )
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 32 + 9
    mini_val = [g for g in dm.val_groups if g.startswith("mini-rgbd:")]
    syrip_val = [g for g in dm.val_groups if g.startswith("syrip:")]
    assert len(dm.val_groups) == round(0.2 * (32 + 3)) and len(dm.val_set) == len(syrip_val) + 3 * len(
        mini_val
    )
    mini_train = (~dm.train_set.labelled[:, 1:5]).all(1).sum()  # MINI-RGBD frames: eyes and ears unlabelled
    assert mini_train == 9 - 3 * len(mini_val)
    synthetic_only = PoseVAEDataModule(
        syrip_root=str(syrip_sample),
        syrip_annotation_files=["annotations/200R/person_keypoints_train_infant.json"],
    )
    with pytest.raises(DataError, match="hold no pose"):
        synthetic_only.setup("fit")  # default domain "synthetic": the real-only sample has none


# training + acceptance -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_prior(tmp_path_factory) -> tuple[PoseVAE, Path, float]:
    """A VAE trained for a few seconds (400 steps of 256 poses) on sampled plausible infant poses."""
    rng = np.random.default_rng(5)
    L.seed_everything(0, verbose=False)
    poses = list(to_pixels(sample_infant_poses(4000, rng), rng))
    dm = PoseVAEDataModule(poses=poses, val_fraction=0.05, batch_size=256, drop_prob=0.1)
    task = PosePriorTask(kl_warmup_steps=200, lr=2e-3)
    root = tmp_path_factory.mktemp("prior")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: thread hand-offs cost more than they save on a shared machine
    trainer = L.Trainer(
        max_steps=400,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
        limit_val_batches=1,
        check_val_every_n_epoch=10,
    )
    start = time.perf_counter()
    try:
        trainer.fit(task, datamodule=dm)
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - start
    ckpt = root / "prior.ckpt"
    trainer.save_checkpoint(ckpt)
    return task.vae.freeze(), ckpt, seconds


@pytest.mark.slow
def test_plausible_poses_score_lower_than_broken_ones(trained_prior):
    vae, _, seconds = trained_prior
    rng = np.random.default_rng(6)
    canon = sample_infant_poses(300, rng, knee_flex=(60.0, 120.0))
    lab = torch.ones(17, dtype=torch.bool)

    def per_pose(kp: np.ndarray) -> torch.Tensor:
        px = torch.from_numpy(to_pixels(kp, np.random.default_rng(7)))  # same placement for each variant
        return torch.stack([manifold_loss(px[i : i + 1], vae, lab) for i in range(len(px))])

    good, knees, limbs = per_pose(canon), per_pose(reverse_knees(canon)), per_pose(swap_limbs(canon))
    print(
        f"trained {seconds:.1f}s; L_manifold mean plausible {good.mean():.4f}, reversed knees "
        f"{knees.mean():.4f} (worse in {(knees > good).float().mean():.0%}), "
        f"swapped limbs {limbs.mean():.4f} (worse in {(limbs > good).float().mean():.0%})"
    )
    assert knees.mean() > 2.0 * good.mean() and (knees > good).float().mean() > 0.85
    assert limbs.mean() > 4.0 * good.mean() and (limbs > good).float().mean() > 0.95


@pytest.mark.slow
def test_margin_frees_plausible_poses_and_still_charges_broken_ones(trained_prior):
    """With the margin at the 95th percentile of the prior's errors on plausible poses, plausible poses cost
    nothing and get no gradient (the prior leaves them where they are) while swapped limbs still cost."""
    vae, _, _ = trained_prior
    lab = torch.ones(17, dtype=torch.bool)
    rng = np.random.default_rng(9)
    calib = torch.from_numpy(to_pixels(sample_infant_poses(500, rng), rng))
    margin = float(vae.reconstruction_error(normalize_pose(calib, lab), lab.expand(500, 17)).quantile(0.95))
    canon = sample_infant_poses(200, np.random.default_rng(10))
    good = torch.from_numpy(to_pixels(canon, np.random.default_rng(11)))
    broken = torch.from_numpy(to_pixels(swap_limbs(canon), np.random.default_rng(11)))

    def per_pose(px: torch.Tensor) -> torch.Tensor:
        return torch.stack([manifold_loss(px[i : i + 1], vae, lab, margin=margin) for i in range(len(px))])

    free = per_pose(good) == 0
    assert free.float().mean() > 0.85
    assert (per_pose(broken) > 0).float().mean() > 0.9
    kp = good.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(manifold_loss(kp, vae, lab, margin=margin), kp)
    assert grad[free].abs().max() == 0


@pytest.mark.slow
def test_prior_checkpoint_loads_frozen(trained_prior, tmp_path):
    vae, ckpt, _ = trained_prior
    rng = np.random.default_rng(8)
    kp = normalize_pose(torch.from_numpy(sample_infant_poses(5, rng)), torch.ones(17, dtype=torch.bool))
    mask = torch.ones(5, 17, dtype=torch.bool)
    expected = vae.reconstruction_error(kp, mask)
    from_ckpt = PoseVAE.load(ckpt)
    assert not from_ckpt.training and not any(p.requires_grad for p in from_ckpt.parameters())
    assert torch.allclose(from_ckpt.reconstruction_error(kp, mask), expected)
    vae.save(tmp_path / "vae.safetensors")
    from_st = PoseVAE.load(tmp_path / "vae.safetensors")
    assert torch.allclose(from_st.reconstruction_error(kp, mask), expected)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        PoseVAE.load(tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError, match="no such"):
        PoseVAE.load(tmp_path / "missing.safetensors")


def test_kl_warmup_is_linear():
    task = PosePriorTask(kl_weight=0.01, kl_warmup_steps=100)
    assert [task.kl_beta(s) for s in (0, 50, 100, 500)] == pytest.approx([0.0, 0.005, 0.01, 0.01])
    assert PosePriorTask(kl_weight=0.01, kl_warmup_steps=0).kl_beta(0) == 0.01


def test_pose_vae_config_parses_in_subclass_mode():
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        run=False,
        args=[
            "--config",
            str(REPO / "configs/priors/pose_vae.yaml"),
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.enable_checkpointing=false",
        ],
    )
    assert isinstance(cli.model, PosePriorTask) and isinstance(cli.datamodule, PoseVAEDataModule)
    assert cli.datamodule.hparams.rotation_deg == 180.0 and cli.datamodule.hparams.syrip_domain == "synthetic"
    assert cli.model.hparams.latent_dim == 24
    assert math.isclose(cli.model.hparams.kl_weight, 5e-3)
