"""MINI-RGBD reader on a fixture tree written in the published layout (tests/fixtures_mini_rgbd.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fixtures_mini_rgbd import CX, CY, FX, FY, frame_paths, write_joint_file, write_mini_rgbd
from geosapiens.data.formats.mini_rgbd import MINI_RGBD_INTRINSICS, project, read_mini_rgbd
from geosapiens.data.records import MAPS_DIRNAME
from geosapiens.errors import DataError
from geosapiens.skeleton import COCO17, SMIL25, SMIL25_TO_COCO17


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini_rgbd")
    return root, write_mini_rgbd(root)


@pytest.fixture
def tree(fixture, tmp_path) -> Path:
    """A private copy of the fixture tree, to corrupt."""
    return Path(shutil.copytree(fixture[0], tmp_path / "MINI-RGBD_web"))


def test_intrinsics_are_the_published_ones():
    np.testing.assert_array_equal(MINI_RGBD_INTRINSICS, [[FX, 0, CX], [0, FY, CY], [0, 0, 1]])


def test_reads_every_frame_in_order_with_its_files(fixture):
    root, written = fixture
    records = read_mini_rgbd(root)
    assert [(r.sequence, r.frame) for r in records] == sorted(written)
    for r in records:
        paths = frame_paths(root, r.sequence, f"{r.frame:05d}")
        assert r.image_id == f"{r.sequence}/{r.frame:05d}"
        assert (
            r.image_path == paths["rgb"] and r.depth_path == paths["depth"] and r.mask_path == paths["mask"]
        )
        assert r.source == paths["joints_2d"] and r.maps_path is None
        assert (r.width, r.height, r.domain) == (640, 480, "synthetic")


def test_smil_joints_map_to_coco(fixture):
    root, written = fixture
    for r in read_mini_rgbd(root):
        w = written[(r.sequence, r.frame)]
        # Named spot checks of the non-obvious SMIL names (datasets.md §1.5).
        for coco, smil in (
            ("left_shoulder", "leftUpperArm"),
            ("right_elbow", "rightForeArm"),
            ("left_wrist", "leftHand"),
            ("right_hip", "rightThigh"),
            ("left_knee", "leftCalf"),
            ("right_ankle", "rightFoot"),
            ("nose", "noseVertex"),
        ):
            c, s = COCO17.index(coco), SMIL25.index(smil)
            np.testing.assert_allclose(r.keypoints[c], w.joints_2d[s, :2], atol=1e-4)
            np.testing.assert_allclose(r.joints_3d[c], w.joints_3d[s], atol=1e-6)
        mapped = np.asarray(SMIL25_TO_COCO17)
        np.testing.assert_allclose(r.keypoints[mapped >= 0], w.joints_2d[mapped[mapped >= 0], :2], atol=1e-4)
        eyes_ears = [1, 2, 3, 4]
        assert not r.labelled[eyes_ears].any() and r.labelled.sum() == 13
        assert r.weights[eyes_ears].sum() == 0
        np.testing.assert_array_equal(r.keypoints[eyes_ears], 0)
        np.testing.assert_array_equal(r.joints_3d[eyes_ears], 0)


def test_2d_joints_are_the_projection_of_3d_joints(fixture):
    root, _ = fixture
    for r in read_mini_rgbd(root):
        np.testing.assert_allclose(project(r.joints_3d[r.labelled]), r.keypoints[r.labelled], atol=1e-3)


def test_box_is_the_foreground_mask_extent(fixture):
    root, written = fixture
    for r in read_mini_rgbd(root):
        x0, y0, x1, y1 = written[(r.sequence, r.frame)].mask_bbox
        np.testing.assert_array_equal(r.bbox, [x0 - 0.5, y0 - 0.5, x1 - x0 + 1, y1 - y0 + 1])


def test_depth_test_marks_the_occluded_joint(fixture):
    root, written = fixture
    occluded = [(key, j) for key, w in written.items() for j in w.occluded]
    assert occluded == [(("01", 1), SMIL25.index("leftHand"))]
    for r in read_mini_rgbd(root):
        expected = r.labelled.copy()
        if (r.sequence, r.frame) == ("01", 1):
            expected[COCO17.index("left_wrist")] = False
        np.testing.assert_array_equal(r.visible, expected)


def test_sequence_selection(fixture):
    root, _ = fixture
    for chosen in (["02"], [2], ("2",)):
        assert {r.sequence for r in read_mini_rgbd(root, chosen)} == {"02"}
    with pytest.raises(DataError, match=r"sequence folder missing \(found: 01, 02\)") as err:
        read_mini_rgbd(root, ["01", "05"])
    assert err.value.path == str(root / "05")
    with pytest.raises(ValueError, match="sequence"):
        read_mini_rgbd(root, ["one"])


def test_frames_sort_numerically(tmp_path):
    write_mini_rgbd(tmp_path, sequences=("03",), frames=(10, 9, 100, 2), occlude=(), stem_format="{}")
    assert [r.frame for r in read_mini_rgbd(tmp_path)] == [2, 9, 10, 100]


def test_no_sequences_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no MINI-RGBD sequence folders"):
        read_mini_rgbd(tmp_path)
    with pytest.raises(DataError, match="root folder missing"):
        read_mini_rgbd(tmp_path / "absent")


def _rewrite_2d(path: Path, edit) -> None:
    values = np.loadtxt(path)[:, :3]
    edit(values)
    write_joint_file(path, values)


def test_a_2d_joint_off_by_5px_fails_loudly(tree):
    path = frame_paths(tree, "02", "00001")["joints_2d"]
    _rewrite_2d(path, lambda v: v.__setitem__((18, 0), v[18, 0] + 5.0))
    with pytest.raises(DataError) as err:
        read_mini_rgbd(tree)
    assert err.value.path == str(path) and err.value.record == "joint 18"
    assert "joint 18 (leftForeArm) is 5.00 px off (max 1 px" in str(err.value)
    assert len(read_mini_rgbd(tree, check_projection=False)) == 6
    assert len(read_mini_rgbd(tree, max_reprojection_px=6.0)) == 6


def test_depth_column_must_match_3d_depth(tree):
    path = frame_paths(tree, "01", "00002")["joints_2d"]
    _rewrite_2d(path, lambda v: v.__setitem__((slice(None), 2), v[:, 2] / 1000))
    assert len(read_mini_rgbd(tree)) == 6  # a column in metres is the same depth
    _rewrite_2d(path, lambda v: v.__setitem__((7, 2), v[7, 2] + 0.01))  # 10 mm off, column in metres
    with pytest.raises(DataError, match=r"depth column of joint 7 \(leftFoot\) is [0-9.]+ m, but") as err:
        read_mini_rgbd(tree)
    assert err.value.path == str(path) and err.value.record == "joint 7"
    _rewrite_2d(path, lambda v: v.__setitem__((slice(None), 2), v[:, 2] * 1000))  # still 10 mm off, in mm
    with pytest.raises(DataError, match=r"depth column of joint 7 \(leftFoot\) is [0-9.]+ mm, but"):
        read_mini_rgbd(tree)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


MALFORMED = [
    ("24-lines", lambda ls: ls[:24], "has 24 lines, expected 25", None),
    ("26-lines", lambda ls: ls + ["0 0 0 25"], "has 26 lines, expected 25", None),
    ("empty", lambda ls: [], "has 0 lines", None),
    ("3-columns", lambda ls: ls[:4] + [" ".join(ls[4].split()[:3])] + ls[5:], "has 3 columns", "line 5"),
    ("5-columns", lambda ls: ls[:4] + [ls[4] + " 1.0"] + ls[5:], "has 5 columns", "line 5"),
    (
        "not-a-number",
        lambda ls: ls[:2] + [ls[2].replace(ls[2].split()[1], "abc", 1)] + ls[3:],
        "'abc' is not a number",
        "line 3",
    ),
    (
        "nan",
        lambda ls: ls[:6] + ["nan " + " ".join(ls[6].split()[1:])] + ls[7:],
        "non-finite value",
        "line 7",
    ),
    (
        "inf",
        lambda ls: ls[:6] + [" ".join(ls[6].split()[:2]) + " inf 6"] + ls[7:],
        "non-finite value",
        "line 7",
    ),
    ("ids-out-of-order", lambda ls: ls[:3] + [ls[4], ls[3]] + ls[5:], "joint id 4, expected 3", "line 4"),
]


@pytest.mark.parametrize("which", ["joints_2d", "joints_3d"])
@pytest.mark.parametrize(
    ("edit", "text", "record"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_joint_files_fail_with_a_clear_message(tree, which, edit, text, record):
    path = frame_paths(tree, "01", "00001")[which]
    path.write_text("\n".join(edit(_lines(path))) + "\n")
    with pytest.raises(DataError) as err:
        read_mini_rgbd(tree)
    assert err.value.path == str(path)
    assert text in err.value.problem and err.value.record == record


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("rgb", "RGB image missing"),
        ("joints_3d", "joint file missing"),
        ("depth", "depth PNG missing"),
        ("mask", "foreground mask missing"),
    ],
)
def test_a_missing_file_is_named(tree, kind, text):
    path = frame_paths(tree, "02", "00002")[kind]
    path.unlink()
    with pytest.raises(DataError, match=text) as err:
        read_mini_rgbd(tree)
    assert err.value.path == str(path)


def test_a_missing_folder_is_named(tree):
    shutil.rmtree(tree / "02" / "fg_mask")
    with pytest.raises(DataError, match="folder missing from sequence 02") as err:
        read_mini_rgbd(tree)
    assert err.value.path == str(tree / "02" / "fg_mask")


def test_depth_must_be_uint16(tree):
    path = frame_paths(tree, "01", "00000")["depth"]
    cv2.imwrite(str(path), (cv2.imread(str(path), cv2.IMREAD_UNCHANGED) // 4).astype(np.uint8))
    with pytest.raises(DataError, match="depth PNG is uint8 with 1 channel") as err:
        read_mini_rgbd(tree)
    assert err.value.path == str(path)


def test_truncated_depth_png_is_refused(tree):
    path = frame_paths(tree, "01", "00000")["depth"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="cannot decode the depth PNG"):
        read_mini_rgbd(tree)


def test_mask_must_be_non_empty_and_match_the_image_size(tree):
    path = frame_paths(tree, "02", "00000")["mask"]
    cv2.imwrite(str(path), np.zeros((480, 640), np.uint8))
    with pytest.raises(DataError, match="foreground mask is empty"):
        read_mini_rgbd(tree)
    cv2.imwrite(str(path), np.full((240, 320), 255, np.uint8))
    with pytest.raises(DataError, match="is 320x240 but syn_00000.png is 640x480") as err:
        read_mini_rgbd(tree)
    assert err.value.path == str(path)


def test_maps_path_is_set_only_where_the_side_file_exists(tree):
    maps = tree / MAPS_DIRNAME / "02" / "rgb" / "syn_00001.npz"
    maps.parent.mkdir(parents=True)
    np.savez(maps, depth=np.zeros((480, 640), np.float32))
    with_maps = [r for r in read_mini_rgbd(tree) if r.maps_path is not None]
    assert [(r.sequence, r.frame, r.maps_path) for r in with_maps] == [("02", 1, maps)]
