"""Generated folders in the real formats: layout, readers, data check, side maps, determinism and the CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from geosapiens.cli.check import main as check_main
from geosapiens.cli.synth import main
from geosapiens.data.check import check_dataset
from geosapiens.data.formats.mini_rgbd import MINI_RGBD_INTRINSICS, read_mini_rgbd
from geosapiens.data.formats.syrip import read_syrip
from geosapiens.data.synth.generate import COMBINED_SPLIT, STILL_SPLITS, generate
from geosapiens.data.synth.presets import PRESETS

TINY = PRESETS["tiny"]


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    generate(out, TINY, seed=3, workers=1, progress=False)
    return out


def test_layout_is_the_official_one(tiny):
    syrip = tiny / "SyRIP"
    assert (syrip / "images" / "train_infant" / "train10000.jpg").is_file()
    assert (syrip / "images" / "train_infant" / "train00001.jpg").is_file()
    assert (syrip / "images" / "validate_infant" / "test0.jpg").is_file()
    assert (syrip / "images" / "val_infant" / "val05000.jpg").is_file()
    for split in STILL_SPLITS:
        assert (syrip / split.annotation).is_file()
    assert (syrip / COMBINED_SPLIT[1]).is_file()
    seq = tiny / "MINI-RGBD_web" / "01"
    for sub, name in (
        ("rgb", "syn_00000.png"),
        ("depth", "syn_00000_depth.png"),
        ("fg_mask", "mask_00000.png"),
        ("joints_2Ddep", "syn_joints_2Ddep_00000.txt"),
        ("joints_3D", "syn_joints_3D_00000.txt"),
    ):
        assert (seq / sub / name).is_file()
    manifest = json.loads((tiny / "manifest.json").read_text())
    assert manifest["mini_rgbd"]["sequences"] == {"01": "synthetic", "02": "real-like"}


def test_data_check_passes(tiny):
    assert check_dataset(tiny / "MINI-RGBD_web", "mini-rgbd") == []
    assert check_dataset(tiny / "SyRIP", "syrip") == []
    assert check_main([str(tiny / "SyRIP")]) == 0 and check_main([str(tiny / "MINI-RGBD_web")]) == 0


def test_mini_rgbd_reader_loads_sequences_with_exact_projection(tiny):
    records = read_mini_rgbd(tiny / "MINI-RGBD_web", max_reprojection_px=0.5)
    assert len(records) == TINY.num_frames
    for rec in records:
        assert rec.maps_path is not None and rec.maps_path.is_file()
        assert rec.width == 640 and rec.height == 480
    # The text files themselves: 3D joints projected with the intrinsics land on the 2D ones (< 0.5 px),
    # and the depth column is 1000 z.
    for txt2d in sorted((tiny / "MINI-RGBD_web").glob("*/joints_2Ddep/*.txt")):
        j2 = np.loadtxt(txt2d)
        j3 = np.loadtxt(txt2d.parent.parent / "joints_3D" / txt2d.name.replace("2Ddep", "3D"))
        assert j2.shape == j3.shape == (25, 4) and (j2[:, 3] == np.arange(25)).all()
        uv = (j3[:, :3] / j3[:, 2:3]) @ MINI_RGBD_INTRINSICS.T
        assert np.abs(uv[:, :2] - j2[:, :2]).max() < 0.5
        np.testing.assert_allclose(j2[:, 2], 1000 * j3[:, 2], atol=0.01)


def test_mini_rgbd_depth_mask_and_maps_agree(tiny):
    frame = tiny / "MINI-RGBD_web" / "02"
    depth = cv2.imread(str(frame / "depth" / "syn_00001_depth.png"), cv2.IMREAD_UNCHANGED)
    mask = cv2.imread(str(frame / "fg_mask" / "mask_00001.png"), cv2.IMREAD_UNCHANGED)
    maps = np.load(tiny / "MINI-RGBD_web" / "geosapiens_maps" / "02" / "rgb" / "syn_00001.npz")
    assert depth.dtype == np.uint16 and set(np.unique(mask)) <= {0, 255}
    assert (
        maps["depth"].dtype == np.float32
        and maps["normals"].dtype == np.float16
        and maps["mask"].dtype == np.uint8
    )
    on = maps["mask"] == 1
    np.testing.assert_array_equal(on, mask == 255)
    assert np.abs(depth[on].astype(np.float32) - maps["depth"][on]).max() <= 0.5
    assert (depth[~on] > 0).all() and not maps["depth"][~on].any()  # the floor is in the depth PNG only
    n = maps["normals"][on].astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=2e-3)


@pytest.mark.parametrize("split", STILL_SPLITS, ids=lambda s: s.name)
def test_syrip_reader_loads_every_split(tiny, split):
    records = read_syrip(tiny / "SyRIP", split.annotation)
    count = getattr(TINY, split.count_field)
    assert len(records) == count
    assert {r.domain for r in records} == {"synthetic" if split.style == "synthetic" else "real"}
    assert sorted(r.image_id for r in records) == list(range(split.first_id, split.first_id + count))
    for rec in records:
        assert rec.image_path.is_file() and rec.maps_path is not None
        assert (rec.width, rec.height) == TINY.still_size
        assert rec.labelled.sum() >= 13
        x, y, w, h = rec.bbox
        kp = rec.keypoints[rec.labelled]
        assert (kp[:, 0] >= x - 1e-3).all() and (kp[:, 0] <= x + w + 1e-3).all()
        assert (kp[:, 1] >= y - 1e-3).all() and (kp[:, 1] <= y + h + 1e-3).all()
        assert rec.area == pytest.approx(w * h, rel=1e-3) and not rec.area_suspect
        assert not rec.visible[~rec.labelled].any()


def test_syrip_json_schema_and_visibility_codes(tiny):
    doc = json.loads((tiny / "SyRIP" / COMBINED_SPLIT[1]).read_text())
    assert len(doc["images"]) == TINY.synthetic_train + TINY.real_train
    assert {im["is_synthetic"] for im in doc["images"]} == {True, False}
    assert doc["categories"][0]["keypoints"][0] == "nose" and len(doc["categories"][0]["skeleton"]) == 19
    codes = []
    for ann, im in zip(doc["annotations"], doc["images"], strict=True):
        assert ann["image_id"] == im["id"] and im["posture"] in {"Supine", "Prone", "Side", "Sitting"}
        kp = np.asarray(ann["keypoints"]).reshape(17, 3)
        codes += list(kp[:, 2])
        assert ann["num_keypoints"] == int((kp[:, 2] > 0).sum())
        assert (kp[kp[:, 2] == 0, :2] == 0).all()
        inside = kp[kp[:, 2] > 0]
        assert (inside[:, 0] >= -0.5).all() and (inside[:, 0] < im["width"] - 0.5).all()
        assert ann["area"] == pytest.approx(ann["bbox"][2] * ann["bbox"][3], abs=0.05)
    assert {1, 2} <= set(codes)  # both visible and self-occluded joints occur


def test_maps_of_stills_match_the_images(tiny):
    rec = read_syrip(tiny / "SyRIP", STILL_SPLITS[0].annotation)[0]
    maps = np.load(rec.maps_path)
    image = cv2.imread(str(rec.image_path))
    assert (
        maps["depth"].shape == image.shape[:2] == maps["mask"].shape and maps["normals"].shape == image.shape
    )
    ys, xs = np.nonzero(maps["mask"])
    assert rec.bbox[0] <= xs.min() - 0.5 + 1e-3 and rec.bbox[1] <= ys.min() - 0.5 + 1e-3


@pytest.mark.slow
def test_same_seed_same_bytes_whatever_the_worker_count(tiny, tmp_path):
    again = tmp_path / "again"
    generate(again, TINY, seed=3, workers=2, progress=False)
    assert _tree_digest(again) == _tree_digest(tiny)


def test_cli_refuses_to_mix_outputs_and_writes_the_preview(tiny, tmp_path, capsys):
    assert main(["--out", str(tiny), "--preset", "tiny", "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--preview-only", "--seed", "1"]) == 0
    sheet = cv2.imread(str(tmp_path / "preview.png"))
    assert sheet.shape == (4 * 240, 4 * 320, 3)
    assert main(["--out", str(tmp_path), "--seed", "-1"]) == 2


@pytest.mark.slow
def test_older_format_is_stale_for_the_demo_and_overwrite_removes_its_folders(tmp_path):
    from geosapiens.cli.demo import data_matches
    from geosapiens.data.synth.generate import FORMAT_VERSION, manifest

    out = tmp_path / "demo_data"
    for legacy in ("syrip", "mini_rgbd"):  # format_version 1's folder names
        (out / legacy / "images").mkdir(parents=True)
    (out / "manifest.json").write_text(json.dumps(manifest(TINY, 3) | {"format_version": 1}))
    assert data_matches(out, "tiny", 3) is False  # the demo regenerates it
    assert main(["--out", str(out), "--preset", "tiny", "--seed", "3", "--workers", "1", "--quiet"]) == 1
    assert main(["--out", str(out), "--preset", "tiny", "--seed", "3", "--workers", "1", "--quiet",
                 "--overwrite"]) == 0  # fmt: skip
    assert not (out / "syrip").exists() and not (out / "mini_rgbd").exists()
    assert json.loads((out / "manifest.json").read_text())["format_version"] == FORMAT_VERSION
    assert data_matches(out, "tiny", 3) is True and data_matches(out, "tiny", 4) is False
    assert data_matches(tmp_path / "none", "tiny", 3) is None
