"""The deployment predictor's parts: One-Euro smoothing against its defining recurrence, box sources
(given, file, tracked), input sources (images, folders, lossless video) and per-frame quality flags."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import torch

from geosapiens.deploy.boxes import AutoBox, BoxFile, FixedBox, TrackedBox, WholeFrame, parse_box_source
from geosapiens.deploy.quality import QualityCheck
from geosapiens.deploy.smoothing import OneEuroFilter, smooth_track
from geosapiens.deploy.sources import open_clips
from geosapiens.errors import DataError
from geosapiens.models.pose_vae import PoseVAE, normalize_pose


# -- One-Euro ------------------------------------------------------------------------------------------------
def test_one_euro_with_zero_beta_is_the_exponential_average_at_min_cutoff():
    fps, cutoff = 30.0, 2.0
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3, 2)) * 5 + 100
    alpha = 1 / (1 + (1 / (2 * math.pi * cutoff)) * fps)
    ref = [x[0]]
    for t in range(1, len(x)):
        ref.append(ref[-1] + alpha * (x[t] - ref[-1]))
    out = smooth_track(x, None, fps, min_cutoff=cutoff, beta=0.0)
    np.testing.assert_allclose(out, np.asarray(ref), rtol=0, atol=1e-9)


def test_one_euro_removes_jitter_at_rest_and_keeps_up_with_fast_motion():
    fps, t = 25.0, np.arange(100)
    rng = np.random.default_rng(1)
    still = np.full((100, 1, 2), 50.0) + rng.normal(scale=2.0, size=(100, 1, 2))
    smoothed = smooth_track(still, None, fps, min_cutoff=1.0, beta=0.01)
    assert smoothed[20:].std() < 0.4 * still[20:].std()

    moving = np.zeros((100, 1, 2))
    moving[:, 0, 0] = 20.0 * t  # 500 px/s
    lag_fast = np.abs(smooth_track(moving, None, fps, min_cutoff=1.0, beta=0.05) - moving)[50:].max()
    lag_slow = np.abs(smooth_track(moving, None, fps, min_cutoff=1.0, beta=0.0) - moving)[50:].max()
    assert lag_fast < 0.2 * lag_slow


def test_one_euro_lets_low_score_joints_through_without_touching_the_state():
    f = OneEuroFilter(25.0, min_cutoff=1.0, beta=0.0, min_score=0.5)
    f(np.array([[0.0, 0.0], [10.0, 10.0]]), np.array([0.9, 0.9]))
    out = f(np.array([[100.0, 100.0], [500.0, 500.0]]), np.array([0.9, 0.1]))
    assert 0 < out[0, 0] < 100  # filtered
    np.testing.assert_array_equal(out[1], [500.0, 500.0])  # passed through
    out = f(np.array([[100.0, 100.0], [10.0, 10.0]]), np.array([0.9, 0.9]))
    np.testing.assert_array_equal(out[1], [10.0, 10.0])  # the state never saw the outlier


# -- boxes ---------------------------------------------------------------------------------------------------
def test_box_sources(tmp_path):
    np.testing.assert_array_equal(WholeFrame().box((48, 64, 3), 0, "a.png"), [0, 0, 64, 48])
    np.testing.assert_array_equal(parse_box_source("1,2,30,40").box((48, 64, 3), 5, "x"), [1, 2, 30, 40])
    with pytest.raises(DataError, match="w, h > 0"):
        FixedBox((0, 0, -1, 5))

    coco = tmp_path / "ann.json"
    coco.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": "images/a.jpg"}, {"id": 8, "file_name": "b.jpg"}],
                "annotations": [{"image_id": 7, "bbox": [1, 2, 3, 4]}, {"image_id": 8, "bbox": [5, 6, 7, 8]}],
            }
        )
    )
    boxes = BoxFile(coco)
    np.testing.assert_array_equal(boxes.box((9, 9), 0, "/x/a.jpg"), [1, 2, 3, 4])
    assert boxes.image_ids == {"a.jpg": 7, "b.jpg": 8}
    with pytest.raises(DataError, match=r"ann\.json: no box for /x/c\.jpg"):
        boxes.box((9, 9), 3, "/x/c.jpg")

    per_frame = tmp_path / "boxes.csv"
    per_frame.write_text("key,x,y,w,h\n0,1,1,10,10\n1,2,2,10,10\n")
    np.testing.assert_array_equal(BoxFile(per_frame).box((9, 9), 1, "v.mp4#1"), [2, 2, 10, 10])
    bad = tmp_path / "bad.json"
    bad.write_text('{"0": [1, 2, "w", 4]}')
    with pytest.raises(DataError, match=r"bad\.json \[0\]: a box is four numbers"):
        BoxFile(bad)
    with pytest.raises(DataError, match="box file not found"):
        parse_box_source(str(tmp_path / "missing.json"))


def test_tracked_box_follows_confident_keypoints_and_falls_back_when_lost():
    tracker = TrackedBox(FixedBox((0, 0, 10, 10)), min_score=0.5, min_joints=3, margin=2.0)
    tracker.start("v")
    np.testing.assert_array_equal(tracker.box((100, 100, 3), 0, "v#0"), [0, 0, 10, 10])
    kp = np.array([[40.0, 40.0], [60.0, 40.0], [50.0, 70.0], [0.0, 0.0]])
    tracker.observe(kp, np.array([0.9, 0.9, 0.9, 0.1]))  # the low-score joint at the origin is ignored
    np.testing.assert_allclose(tracker.box((100, 100, 3), 1, "v#1"), [30.0, 25.0, 40.0, 60.0])
    tracker.observe(kp, np.array([0.9, 0.1, 0.1, 0.1]))  # lost
    np.testing.assert_array_equal(tracker.box((100, 100, 3), 2, "v#2"), [0, 0, 10, 10])
    tracker.observe(kp, np.full(4, 0.9))
    tracker.start("w")  # a new video forgets the old track
    np.testing.assert_array_equal(tracker.box((100, 100, 3), 0, "w#0"), [0, 0, 10, 10])


def test_auto_box_searches_without_a_track_and_tracks_only_videos():
    auto = parse_box_source("auto")
    assert isinstance(auto, AutoBox)
    with pytest.raises(ValueError, match="--initial_box"):
        parse_box_source("auto", "1,2,3,4")
    kp = np.array([[40.0, 40.0], [60.0, 40.0], [50.0, 70.0], [45.0, 60.0], [0.0, 0.0]])
    confident = np.array([0.9, 0.9, 0.9, 0.9, 0.1])
    auto.start("video")
    assert auto.coarse  # the first frame: a coarse pass in the whole frame ...
    np.testing.assert_array_equal(auto.box((100, 200, 3), 0, "v#0"), [0, 0, 200, 100])
    boxed = [38.0, 37.0, 24.0, 36.0]  # ... then the confident joints' box, 1.2x
    np.testing.assert_allclose(auto.refine(kp, confident, (100, 200, 3)), boxed)
    assert auto.refine(kp, np.full(5, 0.1), (100, 200, 3)) is None  # nothing confident: keep the whole frame
    auto.observe(kp, confident)
    assert not auto.coarse  # tracked to the next frame
    np.testing.assert_allclose(auto.box((100, 200, 3), 1, "v#1"), boxed)
    auto.observe(kp, np.full(5, 0.1))
    assert auto.coarse  # lost: searched again
    auto.start(None)  # stills: unrelated images, each searched
    auto.observe(kp, confident)
    assert auto.coarse


# -- sources -------------------------------------------------------------------------------------------------
def test_sources_read_images_folders_and_lossless_video_frame_for_frame(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) for _ in range(4)]
    folder = tmp_path / "frames"
    folder.mkdir()
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"FFV1"), 12.5, (32, 24))
    for i, rgb in enumerate(frames):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / f"{i:03d}.png"), bgr)
        writer.write(bgr)
    writer.release()

    video, seq, stills = open_clips([tmp_path / "clip.avi", folder, folder], fps=None, as_sequence=False)[:3]
    assert (video.sequence, video.fps, len(video)) == ("clip", 12.5, 4) and video.is_video
    assert stills.sequence is None and len(stills) == 4
    as_video = open_clips([folder], as_sequence=True, fps=30)[0]
    assert (as_video.sequence, as_video.fps) == ("frames", 30)
    for a, b in zip(video.frames(), as_video.frames(), strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        assert a.index == b.index
    np.testing.assert_array_equal(next(iter(seq.frames())).image, frames[0])

    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(DataError, match=r"notes\.txt: unknown input type"):
        open_clips([tmp_path / "notes.txt"])
    with pytest.raises(DataError, match="empty: folder holds no images"):
        open_clips([tmp_path / "empty"])
    with pytest.raises(DataError, match="nope.mp4: no such file"):
        open_clips([tmp_path / "nope.mp4"])
    with pytest.raises(DataError, match="share track names"):
        open_clips([folder, folder], as_sequence=True)
    with pytest.raises(DataError, match=r"broken\.jpg: cannot be decoded"):
        next(iter(open_clips([tmp_path / "broken.jpg"])[0].frames()))


# -- quality -------------------------------------------------------------------------------------------------
def test_quality_flags_match_the_prior_and_the_scores():
    torch.manual_seed(0)
    vae = PoseVAE(num_keypoints=17).freeze()
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(0, 200, size=(5, 17, 2))
    scores = np.array([[0.9] * 17, [0.1] * 17, [0.5] * 17, [0.29] * 17, [0.31] * 17])
    mask = torch.ones(5, 17, dtype=torch.bool)
    kp = torch.as_tensor(keypoints, dtype=torch.float32)
    expected = vae.reconstruction_error(normalize_pose(kp, mask), mask).double().numpy()
    threshold = float(np.median(expected))

    flags = QualityCheck(min_mean_score=0.3, pose_prior=vae, max_pose_error=threshold)(keypoints, scores)
    np.testing.assert_allclose(flags["pose_error"], expected, rtol=1e-6)
    np.testing.assert_array_equal(flags["implausible"], expected > threshold)
    np.testing.assert_array_equal(flags["low_confidence"], [False, True, False, True, False])
    no_prior = QualityCheck()(keypoints, scores)
    assert np.isnan(no_prior["pose_error"]).all() and not no_prior["implausible"].any()
