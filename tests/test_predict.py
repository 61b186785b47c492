"""``geosapiens infer`` end to end: a generated infant sequence written as a (lossless) video gives the same
tracks, and the same PCK against the generator's ground truth, as predicting its frames as images; outputs
(COCO results, tracks, flags, overlays) round-trip; test-time adaptation lowers its objective per video and
resets; SyRIP images boxed by their annotation file evaluate as-is; bad input is refused by name."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from geosapiens.cli.main import main
from geosapiens.data.formats.mini_rgbd import read_mini_rgbd
from geosapiens.deploy.boxes import AutoBox, WholeFrame, joint_box
from geosapiens.deploy.predict import Predictor
from geosapiens.deploy.runtime import open_runner
from geosapiens.deploy.sources import open_clips
from geosapiens.metrics.coco import coco_keypoint_ap
from geosapiens.metrics.pck import PCK
from geosapiens.models.pose_vae import PoseVAE
from geosapiens.stages import SupervisedPose
from geosapiens.stages.tta import HeadAdaptation

pytestmark = pytest.mark.slow  # end-to-end: train a checkpoint, then run the command on videos

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A pose stage checkpoint as Lightning writes it (hyperparameters + state dict), tiny CNN at 64x64."""
    torch.manual_seed(0)
    module = SupervisedPose(backbone="timm:resnet10t", input_size=(64, 64), flip_test=False)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    """A generated MINI-RGBD-style sequence (real-like style), its frames as a lossless FFV1 video, and its
    ground truth."""
    root = tmp_path_factory.mktemp("seq")
    assert main(["data", "synth", "--out", str(root / "data"), "--preset", "tiny", "--seed", "0"]) == 0
    mini = root / "data" / "MINI-RGBD_web"
    frames = sorted((mini / "02" / "rgb").glob("*.png"))
    first = cv2.imread(str(frames[0]))
    video = root / "infant02.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 25, first.shape[1::-1])
    for f in frames:
        writer.write(cv2.imread(str(f)))
    writer.release()
    return {"video": video, "frames": mini / "02" / "rgb", "truth": read_mini_rgbd(mini, ["02"])}


def _pck(track: dict, truth) -> float:
    metric = PCK(thresholds=(0.2,), norm="bbox")
    metric.update(
        torch.as_tensor(track["keypoints"]),
        torch.as_tensor(np.stack([r.keypoints for r in truth])).double(),
        torch.as_tensor(np.stack([r.labelled for r in truth])),
        bbox=torch.as_tensor(np.stack([r.bbox for r in truth])).double(),
    )
    return float(metric.compute()["pck@0.2"])


def test_video_tracks_equal_image_mode_and_score_the_same_pck(checkpoint, sequence, tmp_path):
    common = ["--model", str(checkpoint), "--box", "tracked", "--batch_size", "1", "--no-progress"]
    assert main(["infer", str(sequence["video"]), "--out", str(tmp_path / "video"), *common]) == 0
    assert (
        main(["infer", str(sequence["frames"]), "--sequence", "--out", str(tmp_path / "img"), *common]) == 0
    )
    video = np.load(tmp_path / "video" / "tracks" / "infant02.npz")
    images = np.load(tmp_path / "img" / "tracks" / "rgb.npz")
    assert video["keypoints"].shape == (len(sequence["truth"]), 17, 2)
    np.testing.assert_allclose(video["keypoints"], images["keypoints"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(video["bboxes"], images["bboxes"], rtol=0, atol=1e-6)  # the tracker agrees
    assert _pck(video, sequence["truth"]) == _pck(images, sequence["truth"])


def test_box_auto_boxes_the_coarse_pass_then_tracks(checkpoint, sequence, tmp_path):
    out = tmp_path / "auto"
    args = ["infer", str(sequence["frames"]), "--sequence", "--model", str(checkpoint), "--box", "auto"]
    assert main([*args, "--batch_size", "1", "--out", str(out), "--no_progress"]) == 0
    track = np.load(out / "tracks" / "rgb.npz")
    # Frame 0: the whole-frame pass, then the box of its confident joints (the whole frame if none).
    runner = open_runner(checkpoint, runtime="torch")
    (clip,) = open_clips([sequence["frames"]], as_sequence=True)
    coarse = Predictor(runner, WholeFrame(), batch_size=1).predict_clip(clip)
    shape = (*coarse.sizes[0], 3)
    first = joint_box(coarse.keypoints[0], coarse.scores[0], shape)
    np.testing.assert_allclose(track["bboxes"][0], coarse.boxes[0] if first is None else first, atol=1e-6)
    # Later frames: the previous frame's confident joints (tracked), or a new search when lost.
    auto = Predictor(runner, AutoBox(), batch_size=1).predict_clip(clip)
    np.testing.assert_allclose(auto.boxes, track["bboxes"], atol=1e-6)
    for t in range(1, len(auto.boxes)):
        tracked = joint_box(auto.keypoints_raw[t - 1], auto.scores[t - 1], shape)
        if tracked is not None:
            np.testing.assert_allclose(auto.boxes[t], tracked, atol=1e-6)


def test_two_videos_with_tta_as_in_the_readme(checkpoint, sequence, tmp_path, capsys):
    # `geosapiens infer a.mp4 b.mp4 --model best.ckpt --tta.steps 5 --pose_prior vae.ckpt --out predictions/`
    vae = tmp_path / "vae.safetensors"
    PoseVAE(num_keypoints=17).save(vae)
    b = tmp_path / "b.avi"
    b.write_bytes(sequence["video"].read_bytes())
    out = tmp_path / "predictions"
    args = ["infer", str(sequence["video"]), str(b), "--model", str(checkpoint), "--tta.steps", "5"]
    assert main([*args, "--pose_prior", str(vae), "--out", str(out), "--no_progress"]) == 0
    assert {p.name for p in (out / "tracks").glob("*.npz")} == {"infant02.npz", "b.npz"}
    n = len(sequence["truth"])
    assert f"geosapiens infer: {2 * n} frames from 2 input(s)" in capsys.readouterr().out


def test_outputs_round_trip_with_smoothing_flags_and_overlay(checkpoint, sequence, tmp_path, capsys):
    vae = tmp_path / "vae.safetensors"
    PoseVAE(num_keypoints=17).save(vae)
    out = tmp_path / "out"
    args = ["infer", str(sequence["video"]), "--model", str(checkpoint), "--out", str(out), "--no-progress"]
    assert main([*args, "--smooth", "--pose_prior", str(vae), "--overlay", "--batch_size", "2"]) == 0
    summary = capsys.readouterr().out.strip().splitlines()  # a summary, not a line per file
    assert len(summary) == 3 and summary[0].startswith(f"geosapiens infer: {len(sequence['truth'])} frames")
    assert "H.264" in summary[2] or "mp4v (this OpenCV has no H.264 encoder" in summary[2]

    track = np.load(out / "tracks" / "infant02.npz")
    n = len(sequence["truth"])
    assert track["keypoints"].shape == track["keypoints_raw"].shape == (n, 17, 2)
    assert not np.allclose(track["keypoints"][1:], track["keypoints_raw"][1:])  # smoothing changed the track
    np.testing.assert_array_equal(track["keypoints"][0], track["keypoints_raw"][0])  # ... not its start
    assert np.isfinite(track["pose_error"]).all() and track["implausible"].dtype == bool

    with open(out / "tracks.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n and rows[0]["sequence"] == "infant02"
    assert {"mean_score", "pose_error", "low_confidence", "implausible"} <= set(rows[0])
    np.testing.assert_allclose(float(rows[2]["nose_x"]), track["keypoints"][2, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(float(rows[2]["pose_error"]), track["pose_error"][2], rtol=1e-12)

    results = json.loads((out / "coco_results.json").read_text())
    images = json.loads((out / "images.json").read_text())["images"]
    assert [r["image_id"] for r in results] == [im["id"] for im in images]
    assert [im["frame"] for im in images] == list(range(n))
    np.testing.assert_allclose(np.reshape(results[3]["keypoints"], (17, 3))[:, :2], track["keypoints"][3])
    assert results[3]["pose_error"] == pytest.approx(float(track["pose_error"][3]))

    overlay = cv2.VideoCapture(str(out / "overlays" / "infant02.mp4"))
    assert int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == n
    ok, frame = overlay.read()
    assert ok and frame.shape == (480, 640, 3)


def test_tta_lowers_its_objective_per_video_and_resets_between_videos(checkpoint, sequence, tmp_path):
    vae = tmp_path / "vae.safetensors"
    torch.manual_seed(1)
    PoseVAE(num_keypoints=17).save(vae)
    runner = open_runner(checkpoint, runtime="torch")
    trained = {k: v.clone() for k, v in runner.model.head.state_dict().items()}
    clip = open_clips([sequence["video"]])[0]
    plain = Predictor(runner, WholeFrame(), batch_size=4).predict_clip(clip)

    adaptation = HeadAdaptation(steps=5, lr=1e-3, pose_prior=str(vae))
    predictor = Predictor(runner, WholeFrame(), batch_size=4, adaptation=adaptation)
    adapted = predictor.predict_clip(clip)
    assert len(adaptation.history) == 1 and all(after < before for before, after in adaptation.history)
    assert not np.allclose(adapted.keypoints, plain.keypoints)
    for k, v in runner.model.head.state_dict().items():  # reset after the video
        torch.testing.assert_close(v, trained[k], rtol=0, atol=0)
    again = predictor.predict_clip(clip)  # a second video starts from the trained head, not the adapted one
    np.testing.assert_allclose(again.keypoints, adapted.keypoints, rtol=0, atol=1e-9)


def test_syrip_images_boxed_by_their_annotations_evaluate_as_is(checkpoint, syrip_sample, tmp_path):
    annotation = syrip_sample / "annotations" / "200R" / "person_keypoints_train_infant.json"
    out = tmp_path / "syrip"
    folder = syrip_sample / "images" / "train_infant"
    args = ["infer", str(folder), "--model", str(checkpoint), "--box", str(annotation), "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    results = json.loads((out / "coco_results.json").read_text())
    gt = json.loads(annotation.read_text())
    ids = {im["file_name"].split("/")[-1]: im["id"] for im in gt["images"]}
    images = json.loads((out / "images.json").read_text())["images"]
    assert {im["id"] for im in images} == set(ids.values())
    assert all(ids[im["file_name"].split("/")[-1]] == im["id"] for im in images)
    stats = coco_keypoint_ap(annotation, out / "coco_results.json")
    assert 0.0 <= stats["AP"] <= 1.0
    assert len(results) == len(gt["images"])


def test_bad_input_is_refused_by_name(checkpoint, tmp_path, capsys):
    assert main(["infer", str(tmp_path / "missing.mp4"), "--model", str(checkpoint)]) == 2
    assert "missing.mp4: no such file or folder" in capsys.readouterr().err
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((32, 32, 3), np.uint8))
    assert main(["infer", str(image), "--model", str(tmp_path / "none.ckpt")]) == 2
    assert "none.ckpt" in capsys.readouterr().err
    assert main(["infer", str(image), "--model", str(checkpoint), "--tta.steps", "3"]) == 2
    assert "--tta.steps needs an objective" in capsys.readouterr().err


def test_python_api_matches_the_command_on_files_and_on_frames_in_memory(checkpoint, sequence, tmp_path):
    """``Predictor.from_file`` (the README's Python API): a video, its frames as files and the same frames as
    arrays in memory give the command's track."""
    out = tmp_path / "cli"
    args = ["infer", str(sequence["video"]), "--model", str(checkpoint), "--box", "tracked"]
    assert main([*args, "--batch_size", "1", "--out", str(out), "--no-progress"]) == 0
    expected = np.load(out / "tracks" / "infant02.npz")["keypoints"]
    predictor = Predictor.from_file(checkpoint, box="tracked", batch_size=1)
    (video,) = predictor.predict(sequence["video"])
    np.testing.assert_allclose(video.keypoints, expected, atol=1e-9)
    frames = sorted(sequence["frames"].glob("*.png"))
    arrays = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in frames]
    in_memory = predictor.predict_frames(arrays, fps=25.0)
    assert in_memory.clip.sequence == "frames" and in_memory.keypoints.shape == expected.shape
    np.testing.assert_allclose(in_memory.keypoints, expected, atol=1e-9)  # FFV1 is lossless
    with pytest.raises(ValueError, match="uint8 RGB"):
        predictor.predict_frames([arrays[0].astype(np.float32)])


def test_onnx_prediction_imports_neither_lightning_nor_timm(checkpoint, sequence, tmp_path):
    """The clinic's path (an ONNX file on a CPU) runs without the training stack: in a fresh interpreter,
    ``geosapiens infer --model X.onnx`` predicts and leaves Lightning and timm unimported."""
    model = tmp_path / "tiny.onnx"
    assert main(["export", str(checkpoint), "--out", str(model), "--no-check"]) == 0
    frame = sorted(sequence["frames"].glob("*.png"))[0]
    out = tmp_path / "out"
    script = (
        "import json, sys\n"
        "from geosapiens.cli.main import main\n"
        f"code = main(['infer', {str(frame)!r}, '--model', {str(model)!r}, '--out', {str(out)!r}, "
        "'--no_progress'])\n"
        "heavy = ('lightning', 'pytorch_lightning', 'timm', 'geosapiens.stages')\n"
        "print(json.dumps({'code': code, 'imported': [m for m in heavy if m in sys.modules]}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"code": 0, "imported": []}
    (result,) = json.loads((out / "coco_results.json").read_text())
    assert len(result["keypoints"]) == 17 * 3
