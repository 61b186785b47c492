"""PredictionWriter through a real ``Trainer.predict``: COCO results score AP 1.0 against a ground truth made
from the same keypoints, tracks round-trip exactly through CSV and NPZ, and 2-rank DDP merges in order."""

from __future__ import annotations

import csv
import json

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from geosapiens.callbacks.prediction_writer import PredictionWriter
from geosapiens.metrics.coco import coco_keypoint_ap
from geosapiens.metrics.prediction_files import merge_rows, track_columns
from geosapiens.skeleton import COCO17

K = 17


class ToyPredictions(Dataset):
    """Still images (int ids, no sequence) then video frames of two sequences, out of frame order."""

    def __init__(self, n_still: int = 8, frames: tuple[int, ...] = (3, 1, 0, 2, 4)) -> None:
        g = torch.Generator().manual_seed(0)
        self.items = []
        for i in range(n_still):
            self.items.append({"image_id": 100 + i, "sequence": "", "frame": -1})
        for seq in ("01/a b", "02"):
            for f in frames:
                self.items.append({"image_id": f"{seq}/{f:05d}", "sequence": seq, "frame": f})
        n = len(self.items)
        # float32 keypoints with awkward decimals: exact round trips must survive them.
        self.keypoints = (torch.rand(n, K, 2, generator=g) * torch.tensor([300.0, 200.0]) + 20.0).float()
        self.scores = torch.rand(n, K, generator=g).float()
        lo = self.keypoints.amin(1)
        hi = self.keypoints.amax(1)
        self.bbox = torch.cat([lo, hi - lo], 1)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        it = self.items[i]
        return {
            "kp": self.keypoints[i],
            "scores": self.scores[i],
            "bbox": self.bbox[i],
            "image_path": f"/data/img_{i:03d}.png",
            "image_id": it["image_id"],
            "sequence": it["sequence"],
            "frame": it["frame"],
        }


def _collate(samples: list[dict]) -> dict:
    out = {k: torch.stack([s[k] for s in samples]) for k in ("kp", "scores", "bbox")}
    out |= {k: [s[k] for s in samples] for k in ("image_path", "image_id", "sequence")}
    out["frame"] = torch.tensor([s["frame"] for s in samples])
    return out


class EchoModel(L.LightningModule):
    """predict_step returns the dataset's keypoints, in the stage contract's format."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {
            "keypoints": batch["kp"],
            "scores": batch["scores"],
            "image_path": batch["image_path"],
            "image_id": batch["image_id"],
            "bbox": batch["bbox"],
            "sequence": batch["sequence"],
            "frame": batch["frame"],
        }


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, **kwargs
    )


def _gt(ds: ToyPredictions, rows: range) -> dict:
    images, anns = [], []
    for i in rows:
        kp = ds.keypoints[i].double()
        images.append({"id": ds.items[i]["image_id"], "width": 400, "height": 300})
        anns.append(
            {
                "id": i,
                "image_id": ds.items[i]["image_id"],
                "category_id": 1,
                "keypoints": torch.cat([kp, torch.full((K, 1), 2.0, dtype=torch.float64)], 1)
                .flatten()
                .tolist(),
                "bbox": ds.bbox[i].double().tolist(),
                "iscrowd": 0,
            }
        )
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


def test_coco_results_score_ap_one_and_tracks_round_trip(tmp_path):
    ds = ToyPredictions()
    writer = PredictionWriter(tmp_path / "pred")
    loader = DataLoader(ds, batch_size=4, collate_fn=_collate)
    _trainer(callbacks=[writer]).predict(EchoModel(), dataloaders=loader, return_predictions=False)

    results = json.loads((tmp_path / "pred" / "coco_results.json").read_text())
    assert [r["image_id"] for r in results] == [it["image_id"] for it in ds.items]  # dataset order
    for i, r in enumerate(results):
        assert r["category_id"] == 1
        flat = torch.tensor(r["keypoints"], dtype=torch.float64).view(K, 3)
        assert torch.equal(flat[:, :2], ds.keypoints[i].double()) and torch.equal(
            flat[:, 2], ds.scores[i].double()
        )
        assert r["score"] == pytest.approx(ds.scores[i].double().mean().item(), abs=1e-15)

    still = [r for r in results if isinstance(r["image_id"], int)]
    assert len(still) == 8
    ap = coco_keypoint_ap(_gt(ds, range(8)), still)
    assert ap["AP"] == pytest.approx(1.0) and ap["AR"] == pytest.approx(1.0)
    shifted = [
        dict(r, keypoints=[v + 15.0 if j % 3 != 2 else v for j, v in enumerate(r["keypoints"])])
        for r in still
    ]
    assert coco_keypoint_ap(_gt(ds, range(8)), shifted)["AP"] < 0.9  # the AP check can fail

    with open(tmp_path / "pred" / "tracks.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        lines = list(reader)
    assert header == track_columns(COCO17.names) and header[4:7] == ["nose_x", "nose_y", "nose_score"]
    expected = sorted(
        (it["sequence"], it["frame"], i) for i, it in enumerate(ds.items) if it["sequence"]
    )  # sorted by (sequence, frame)
    assert [(row[0], int(row[1])) for row in lines] == [(s, f) for s, f, _ in expected]
    for row, (_, _, i) in zip(lines, expected, strict=True):
        assert row[2] == f"/data/img_{i:03d}.png" and row[3] == ds.items[i]["image_id"]
        values = torch.tensor([float(v) for v in row[4:]], dtype=torch.float64).view(K, 3)
        assert torch.equal(values[:, :2], ds.keypoints[i].double())
        assert torch.equal(values[:, 2], ds.scores[i].double())

    files = sorted(p.name for p in (tmp_path / "pred" / "tracks").iterdir())
    assert files == ["01_a_b.npz", "02.npz"]
    for name, seq in (("01_a_b.npz", "01/a b"), ("02.npz", "02")):
        with np.load(tmp_path / "pred" / "tracks" / name) as z:
            rows = [i for s, _, i in expected if s == seq]
            assert str(z["sequence"]) == seq
            assert z["frames"].tolist() == [0, 1, 2, 3, 4]
            assert z["keypoints"].shape == (5, K, 2) and z["scores"].shape == (5, K)
            assert np.array_equal(z["keypoints"], ds.keypoints[rows].double().numpy())
            assert np.array_equal(z["scores"], ds.scores[rows].double().numpy())
            assert np.array_equal(z["bboxes"], ds.bbox[rows].double().numpy())
            assert z["image_paths"].tolist() == [f"/data/img_{i:03d}.png" for i in rows]
    assert not list((tmp_path / "pred").glob(".*tmp"))  # no temporary files left behind


def test_no_sequences_no_tracks_and_default_folder(tmp_path):
    writer = PredictionWriter()
    loader = DataLoader(ToyPredictions(n_still=3, frames=()), batch_size=2, collate_fn=_collate)
    _trainer(callbacks=[writer], default_root_dir=tmp_path).predict(
        EchoModel(), loader, return_predictions=False
    )
    assert [p.name for p in writer.written] == ["coco_results.json"]
    assert writer.written[0].parent == tmp_path / "predictions"
    assert len(json.loads(writer.written[0].read_text())) == 3


def test_merge_rows_restores_order_and_drops_sampler_padding():
    def row(index, image_id):
        return {"index": index, "image_id": image_id, "image_path": f"{image_id}.png", "bbox": [0, 0, 1, 1],
                "sequence": None, "frame": None}  # fmt: skip

    # DistributedSampler over 5 samples on 2 ranks: rank 0 gets 0, 2, 4; rank 1 gets 1, 3 and pads with 0.
    rank0 = [row(0, "a"), row(2, "c"), row(4, "e")]
    rank1 = [row(1, "b"), row(3, "d"), row(0, "a")]
    assert [r["image_id"] for r in merge_rows([rank0, rank1])] == ["a", "b", "c", "d", "e"]
    no_index = [dict(r, index=None) for r in rank0 + rank1]
    assert [r["image_id"] for r in merge_rows([no_index])] == ["a", "c", "e", "b", "d"]


class _DestroyProcessGroup(L.Callback):
    """Avoids gloo's intermittent abort at exit (reference/stack.md §5)."""

    def teardown(self, trainer, pl_module, stage):
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_ranks_merge_into_one_file_in_dataset_order(tmp_path):
    ds = ToyPredictions(n_still=5, frames=(1, 0))  # 9 samples: odd, so the sampler pads rank 1
    writer = PredictionWriter(tmp_path / "pred")
    # ddp_fork: the ranks inherit the imported stack, so the 2-rank run costs < 1 s instead of ~10 s (spawn).
    trainer = _trainer(devices=2, strategy="ddp_fork", callbacks=[writer, _DestroyProcessGroup()])
    trainer.predict(EchoModel(), DataLoader(ds, batch_size=2, collate_fn=_collate), return_predictions=False)
    results = json.loads((tmp_path / "pred" / "coco_results.json").read_text())
    assert [r["image_id"] for r in results] == [it["image_id"] for it in ds.items]
    for i, r in enumerate(results):
        assert torch.equal(torch.tensor(r["keypoints"]).view(K, 3)[:, :2], ds.keypoints[i].double())
    with open(tmp_path / "pred" / "tracks.csv", newline="") as f:
        assert len(list(csv.reader(f))) == 1 + 4
    assert not (tmp_path / "pred" / ".prediction_parts").exists()


class SyRIPEcho(Dataset):
    """The real SyRIP sample's annotations as predictions (image px, score 1 where labelled)."""

    def __init__(self, gt: dict, root) -> None:
        self.anns = gt["annotations"]
        self.files = {
            img["id"]: str(root / "images" / "train_infant" / img["file_name"]) for img in gt["images"]
        }

    def __len__(self) -> int:
        return len(self.anns)

    def __getitem__(self, i: int) -> dict:
        kp = torch.tensor(self.anns[i]["keypoints"], dtype=torch.float32).view(K, 3)
        return {
            "kp": kp[:, :2],
            "scores": (kp[:, 2] > 0).float(),
            "bbox": torch.tensor(self.anns[i]["bbox"], dtype=torch.float32),
            "image_path": self.files[self.anns[i]["image_id"]],
            "image_id": self.anns[i]["image_id"],
            "sequence": "",
            "frame": -1,
        }


def test_results_on_the_real_syrip_sample_score_full_marks_in_evaluate(syrip_sample, tmp_path, capsys):
    from geosapiens.cli.evaluate import main as evaluate_main

    gt_path = syrip_sample / "annotations" / "200R" / "person_keypoints_train_infant.json"
    gt = json.loads(gt_path.read_text())
    writer = PredictionWriter(tmp_path / "pred")
    loader = DataLoader(SyRIPEcho(gt, syrip_sample), batch_size=8, collate_fn=_collate)
    _trainer(callbacks=[writer]).predict(EchoModel(), loader, return_predictions=False)
    assert (
        evaluate_main(
            ["--gt", str(gt_path), "--pred", str(tmp_path / "pred" / "coco_results.json"), "--json"]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["num_results"] == len(gt["annotations"]) == 32
    assert report["coco"]["AP"] == pytest.approx(1.0) and report["pck"]["values"]["pck@0.05"] == 1.0
