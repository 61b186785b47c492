"""LogValidationImages in real Trainer runs: the sheet's size and pixels (prediction, dimmed ground truth,
critic maps), CSV and W&B (offline) loggers, and the test PCK curve (a stage's, from its per-sample errors:
metrics.pck.pck_curve_from_errors, as PoseStage makes it) against metrics.pck.pck_curve, also gathered over
two DDP ranks, plotted and written."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
import wandb
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch.utils.data import DataLoader, Dataset

from geosapiens.affine import apply_affine, invert_affine
from geosapiens.callbacks.results import TestResultsWriter
from geosapiens.callbacks.visualize import LogValidationImages
from geosapiens.metrics.pck import SampleErrors, pck_curve, pck_curve_from_errors
from geosapiens.models.critics import GeometryMaps
from geosapiens.skeleton import COCO17
from geosapiens.viz import draw

K, H, W = 17, 64, 48
AFFINE = torch.tensor([[0.5, 0.0, -10.0], [0.0, 0.5, -20.0]])  # image -> crop
# A pose in crop px (inside 48 x 64, away from the label strip at the top) and the same pose in image px.
POSE_CROP = torch.tensor(
    [
        [24, 20], [21, 18], [27, 18], [18, 20], [30, 20], [16, 28], [32, 28], [12, 36], [36, 36], [10, 44],
        [38, 44], [19, 44], [29, 44], [18, 52], [30, 52], [17, 60], [31, 60],
    ],
    dtype=torch.float64,
)  # fmt: skip
POSE_IMAGE = (POSE_CROP + torch.tensor([10.0, 20.0])) / 0.5
BBOX = torch.tensor([20.0, 40.0, 100.0, 80.0])  # max side 100 image px
DIST = torch.tensor([4.5, 9.5, 14.5, 19.5])  # per-sample prediction error, image px (never on a threshold)
DIRECTION = torch.tensor([0.6, 0.8], dtype=torch.float64)
GREY = 60


class CropDataset(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict:
        image = torch.full((3, H, W), float(GREY + i))  # the toy model reads the sample number off the image
        mean = torch.tensor(draw.SAPIENS_MEAN).view(3, 1, 1)
        std = torch.tensor(draw.SAPIENS_STD).view(3, 1, 1)
        weights = torch.ones(K)
        weights[1] = 0.0  # left eye unlabelled
        return {
            "image": (image - mean) / std,
            "keypoints": POSE_CROP.float(),
            "weights": weights,
            "affine": AFFINE,
            "bbox": BBOX,
            "image_path": f"/data/infant_{i}.png",
            "index": i,
        }


class ToyStage(L.LightningModule):
    """Predicts the pose moved by DIST[i] along DIRECTION for sample i (its image has grey level GREY + i)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.predict_calls = 0
        self.test_errors = SampleErrors(norm="bbox")
        self.test_pck_curve: dict | None = None

    def training_step(self, batch, batch_idx):
        return self.layer(torch.ones(1, 1)).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", 0.0, batch_size=len(batch["image"]))

    def test_step(self, batch, batch_idx):
        """As PoseStage's: each sample's errors from the predictions, the curve from them at the end."""
        keypoints, _ = self.predict_keypoints(batch["image"], batch["affine"])
        target = apply_affine(batch["keypoints"].double(), invert_affine(batch["affine"].double()))
        labelled = batch["weights"] > 0
        self.test_errors.update(keypoints, target, labelled, index=batch["index"], bbox=batch["bbox"])
        self.log("test/pck@0.1", 0.5, batch_size=len(batch["image"]))

    def on_test_epoch_end(self):
        self.test_pck_curve = pck_curve_from_errors(self.test_errors.compute()[1], "bbox")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def predict_keypoints(
        self, images: torch.Tensor, affine: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.predict_calls += 1
        b = len(images)
        sample = torch.from_numpy(draw.denormalize_image(images)[:, 0, 0, 0].astype(np.int64) - GREY)
        keypoints = POSE_IMAGE.expand(b, K, 2) + DIST[sample, None, None].double() * DIRECTION
        return keypoints, torch.full((b, K), 0.9)

    def critic_maps_for_visualisation(self, batch: dict) -> GeometryMaps:
        b = len(batch["image"])
        depth = torch.linspace(1.0, 2.0, 12).expand(b, 1, 16, 12).clone()
        normals = torch.tensor([0.0, 0.0, -1.0]).view(1, 3, 1, 1).expand(b, 3, 16, 12).clone()
        valid = torch.ones(b, 1, 16, 12, dtype=torch.bool)
        valid[:, :, -4:, -3:] = False  # bottom-right corner: no critic data
        return GeometryMaps(depth, normals, valid)


def _trainer(tmp_path, logger, callbacks) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=logger,
        callbacks=callbacks,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _loader(batch_size: int = 4) -> DataLoader:
    return DataLoader(CropDataset(), batch_size=batch_size)


TILE_W = 3 * W + 2 * 2  # overlay | depth | normals with 2 px gaps
SHEET_SHAPE = (2 * (H + 2) + 2, 2 * (TILE_W + 2) + 2, 3)  # 3 tiles, 2 per row


def test_validation_sheet_png_with_csv_logger(tmp_path):
    callback = LogValidationImages(num_images=3)
    logger = CSVLogger(tmp_path, name="run")
    _trainer(tmp_path, logger, [callback]).fit(ToyStage(), _loader(), _loader())
    path = tmp_path / "run" / "version_0" / "images" / "epoch_000.png"
    assert callback.last_image_path == path
    sheet = draw.read_png(path)
    assert sheet.shape == SHEET_SHAPE

    for i in range(3):  # tile i: top-left corner
        y0, x0 = 2 + (i // 2) * (H + 2), 2 + (i % 2) * (TILE_W + 2)
        pred = AFFINE[:, :2].double() @ (POSE_IMAGE + DIST[i] * DIRECTION).T + AFFINE[:, 2:].double()
        for j, color in ((9, draw.LEFT_COLOR), (10, draw.RIGHT_COLOR)):  # wrists
            x, y = torch.round(pred[:, j]).long().tolist()
            assert tuple(sheet[y0 + y, x0 + x]) == color, (i, COCO17.names[j])
        x, y = torch.round((pred[:, 11] + pred[:, 12]) / 2).long().tolist()  # the hip line is central
        assert tuple(sheet[y0 + y, x0 + x]) == draw.CENTER_COLOR
        gx, gy = POSE_CROP[3].long().tolist()  # left ear: the grey ground truth, dimmed over the grey crop
        if i == 2:  # the prediction is 7 crop px away here, so the ground-truth disc shows
            assert np.abs(sheet[y0 + gy, x0 + gx].astype(int) - (235 + GREY + i) / 2).max() <= 1
        depth = sheet[y0 : y0 + H, x0 + W + 2 : x0 + 2 * W + 2]
        normals = sheet[y0 : y0 + H, x0 + 2 * W + 4 : x0 + 3 * W + 4]
        assert tuple(normals[40, 5]) == (128, 128, 0) and tuple(normals[-1, -1]) == (0, 0, 0)
        assert depth[40, 0, 0] > depth[40, 0, 2] and depth[40, -5, 2] > depth[40, -5, 0]  # near red, far blue
        assert tuple(depth[-1, -1]) == (0, 0, 0)
    assert (sheet[2 + H + 2 :, 2 + TILE_W + 2 :] == 0).all()  # the empty fourth cell


def test_validation_sheet_stays_local_with_an_online_wandb_logger_unless_asked(tmp_path, monkeypatch):
    """Infant photos never reach W&B by default: an online-mode logger receives no image (its log_image is
    recorded, never run); the sheet is a local PNG. ``log_images="remote"`` sends it; ``"off"`` draws none."""
    sent = []
    monkeypatch.setattr(WandbLogger, "log_image", lambda self, key, images, **kw: sent.append(key))
    for mode, expected in (("local", []), ("remote", ["val/predictions"]), ("off", [])):
        sent.clear()
        logger = WandbLogger(save_dir=tmp_path / mode, project="geosapiens-test", offline=False)
        callback = LogValidationImages(num_images=3, log_images=mode)
        try:
            _trainer(tmp_path / mode, logger, [callback]).fit(ToyStage(), _loader(), _loader())
        finally:
            wandb.finish()
        assert sent == expected, mode
        pngs = sorted(p.name for p in (tmp_path / mode).rglob("images/epoch_*.png"))
        assert pngs == (["epoch_000.png"] if mode == "local" else []), mode
    with pytest.raises(ValueError, match="log_images"):
        LogValidationImages(log_images="cloud")


def test_validation_sheet_goes_to_wandb_offline_when_asked(tmp_path):
    logger = WandbLogger(save_dir=tmp_path, project="geosapiens-test", offline=True)
    callback = LogValidationImages(num_images=3, log_images="remote")
    try:
        _trainer(tmp_path, logger, [callback]).fit(ToyStage(), _loader(), _loader())
        run_dir = logger.experiment.dir
    finally:
        wandb.finish()
    images = sorted((tmp_path / "wandb").glob("offline-run-*/files/media/images/val/predictions_*.png"))
    assert len(images) == 1, sorted(p.relative_to(tmp_path) for p in (tmp_path / "wandb").rglob("*.png"))
    assert str(images[0]).startswith(run_dir)
    assert draw.read_png(images[0]).shape == SHEET_SHAPE
    assert callback.last_image_path is None  # no local PNG when an image logger took it


def test_sanity_check_and_epoch_period_skip_images(tmp_path):
    callback = LogValidationImages(every_n_epochs=2)
    trainer = _trainer(tmp_path, CSVLogger(tmp_path, name="run"), [callback])
    trainer.fit_loop.max_epochs = 2
    trainer.num_sanity_val_steps = 1
    stage = ToyStage()
    trainer.fit(stage, _loader(), _loader())
    assert trainer.current_epoch == 2 and trainer.sanity_checking is False
    assert stage.predict_calls == 1  # epoch 0 only: not in the sanity check, not in epoch 1
    assert [p.name for p in (tmp_path / "run" / "version_0" / "images").iterdir()] == ["epoch_000.png"]


def test_test_pck_curve_matches_pck_curve_and_lands_in_results(tmp_path):
    curve_cb = LogValidationImages()
    results = TestResultsWriter()
    trainer = _trainer(tmp_path, CSVLogger(tmp_path, name="run"), [curve_cb, results])
    stage = ToyStage()
    trainer.test(stage, _loader(batch_size=2))  # two batches of two
    assert stage.predict_calls == 2  # the stage's own test forward, one per batch: the callback only draws

    preds = POSE_IMAGE + DIST[:, None, None].double() * DIRECTION  # (4, K, 2)
    target = apply_affine(POSE_CROP.expand(4, K, 2).double(), invert_affine(AFFINE.expand(4, 2, 3).double()))
    assert torch.allclose(target, POSE_IMAGE.expand(4, K, 2), atol=1e-9)
    labelled = torch.ones(4, K, dtype=torch.bool)
    labelled[:, 1] = False
    thr, mean, per_joint = pck_curve(preds, target, labelled, torch.full((4,), 100.0))
    curve = stage.test_pck_curve
    assert curve["thresholds"] == pytest.approx(thr.tolist(), abs=1e-12)
    assert curve["pck"] == pytest.approx(mean.tolist())
    by_t = dict(zip([round(t, 2) for t in curve["thresholds"]], curve["pck"], strict=True))
    assert (by_t[0.0], by_t[0.05], by_t[0.1], by_t[0.15], by_t[0.2], by_t[0.5]) == (0, 0.25, 0.5, 0.75, 1, 1)
    assert curve["per_joint"]["nose"] == pytest.approx(per_joint[:, 0].tolist())

    run_dir = tmp_path / "run" / "version_0"
    saved = json.loads((run_dir / "test_metrics.json").read_text())
    assert saved["pck_curve"]["pck"] == pytest.approx(mean.tolist())
    assert all(v is None for v in saved["pck_curve"]["per_joint"]["left_eye"])  # never labelled
    assert saved["metrics"] == {"test/pck@0.1": 0.5}
    plot = draw.read_png(run_dir / "images" / "test_pck_curve.png")
    assert plot.shape[0] > 100 and plot.shape[1] > 100 and plot.std() > 0


class _DestroyProcessGroup(L.Callback):
    """Avoids gloo's intermittent abort at exit (reference/stack.md §5)."""

    def teardown(self, trainer, pl_module, stage):
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_test_pck_curve_sums_over_two_ddp_ranks(tmp_path):
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",  # forked ranks inherit the imports: < 1 s instead of ~10 s with ddp_spawn
        default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path, name="run"),
        callbacks=[LogValidationImages(), TestResultsWriter(), _DestroyProcessGroup()],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(ToyStage(), _loader(batch_size=1))  # each rank scores two of the four samples
    saved = json.loads((tmp_path / "run" / "version_0" / "test_metrics.json").read_text())
    by_t = dict(
        zip([round(t, 2) for t in saved["pck_curve"]["thresholds"]], saved["pck_curve"]["pck"], strict=True)
    )
    assert (by_t[0.05], by_t[0.1], by_t[0.15], by_t[0.2]) == (0.25, 0.5, 0.75, 1.0)  # all four samples
    assert saved["run"]["world_size"] == 2
    assert (tmp_path / "run" / "version_0" / "images" / "test_pck_curve.png").exists()
