"""``geosapiens data check``: clean data passes, and one run lists every planted fault."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fixtures_mini_rgbd import frame_paths, project, write_joint_file, write_mini_rgbd
from geosapiens.cli import main as cli
from geosapiens.cli.check import main
from geosapiens.data.check import Problem, check_dataset, detect_format, run_checks
from geosapiens.data.formats.mini_rgbd import read_mini_rgbd
from geosapiens.data.formats.syrip import read_syrip
from geosapiens.errors import DataError
from test_formats_syrip import ANN, copy_sample

IMAGES = "images/train_infant"


def _output_problems(out: str) -> list[str]:
    """Problem lines of the CLI output (everything before the summary)."""
    lines = out.strip().splitlines()
    summary = next(i for i, line in enumerate(lines) if " at " in line and "checked" in line)
    return lines[:summary]


# ------------------------------------------------------------------------------------------------- SyRIP


def test_pristine_syrip_sample_is_clean(syrip_sample, capsys):
    assert main([str(syrip_sample)]) == 0
    out = capsys.readouterr().out
    assert _output_problems(out) == []
    assert (
        "checked annotation files 1, image entries 32, images decoded 32, annotations 32; problems 0" in out
    )
    assert "32 annotation(s) have 'area' more than 10% away from bbox w*h" in out
    assert check_dataset(syrip_sample / ANN) == []
    assert cli.main(["data", "check", str(syrip_sample), "--format", "syrip"]) == 0


def _edit_json(root: Path, edit) -> None:
    data = json.loads((root / ANN).read_text())
    edit(data)
    (root / ANN).write_text(json.dumps(data))


def _annotation(data: dict, image_id: int) -> dict:
    return next(a for a in data["annotations"] if a["image_id"] == image_id)


def _truncate(root: Path) -> None:
    path = root / IMAGES / "train00094.jpg"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _set_nan(data: dict) -> None:
    _annotation(data, 113)["keypoints"][3] = math.nan


def _set_image(data: dict, image_id: int, **fields) -> None:
    next(im for im in data["images"] if im["id"] == image_id).update(fields)


# (name, plant(root), expected Problem as (path relative to root, record, text in the problem),
#  whether the loader refuses it too)
SYRIP_FAULTS = [
    ("truncated-jpeg", _truncate, (f"{IMAGES}/train00094.jpg", "image 94", "truncated JPEG"), False),
    (
        "missing-file",
        lambda root: (root / IMAGES / "train00105.jpg").unlink(),
        (f"{IMAGES}/train00105.jpg", "image 105", "image file missing"),
        True,
    ),
    (
        "dotdot-file-name",
        lambda root: _edit_json(root, lambda d: _set_image(d, 109, file_name="../train00109.jpg")),
        (ANN, "image 109", "file name '../train00109.jpg' escapes the image folder"),
        True,
    ),
    (
        "nan-keypoint",
        lambda root: _edit_json(root, _set_nan),
        (ANN, "annotation 113", "keypoint 1 (left_eye): x is nan"),
        True,
    ),
    (
        "wrong-size",
        lambda root: _edit_json(root, lambda d: _set_image(d, 143, width=1000)),
        (
            f"{IMAGES}/train00143.jpg",
            "image 143",
            "image is 1280x720 but person_keypoints_train_infant.json says 1000x720",
        ),
        False,
    ),
    (
        "duplicate-annotation-id",
        lambda root: _edit_json(root, lambda d: _annotation(d, 259).update(id=102)),
        (ANN, "annotation 102", "duplicate annotation id 102"),
        True,
    ),
]


def test_one_run_reports_every_planted_syrip_fault(syrip_sample, tmp_path, capsys):
    root = copy_sample(syrip_sample, tmp_path / "syrip")
    for _, plant, _, _ in SYRIP_FAULTS:
        plant(root)
    assert main([str(root)]) == 1
    printed = _output_problems(capsys.readouterr().out)
    problems = check_dataset(root)
    assert printed == [str(p) for p in problems]
    assert len(problems) == len(SYRIP_FAULTS), "\n".join(printed)
    for name, _, (rel, record, text), _ in SYRIP_FAULTS:
        matches = [
            p for p in problems if p.path == str(root / rel) and p.record == record and text in p.problem
        ]
        assert len(matches) == 1, (name, printed)
    # Each line names the file first: "path [record]: problem".
    assert all(line.startswith(str(root)) for line in printed)


@pytest.mark.parametrize(
    ("plant", "expected", "refused"), [f[1:] for f in SYRIP_FAULTS], ids=[f[0] for f in SYRIP_FAULTS]
)
def test_loader_refuses_its_faults_and_leaves_pixels_to_the_checker(
    syrip_sample, tmp_path, plant, expected, refused
):
    root = copy_sample(syrip_sample, tmp_path / "syrip")
    plant(root)
    rel, record, text = expected
    if not refused:  # decoding images is the checker's job: the loader never opens them
        assert len(read_syrip(root, ANN)) == 32
        assert [(p.path, p.record) for p in check_dataset(root)] == [(str(root / rel), record)]
        return
    with pytest.raises(DataError) as err:
        read_syrip(root, ANN)
    assert (err.value.path, err.value.record) == (str(root / rel), record)
    assert text in err.value.problem


def test_far_outside_keypoint_and_exif_orientation_are_reported(syrip_sample, tmp_path):
    root = copy_sample(syrip_sample, tmp_path / "syrip")

    def far(data):
        _annotation(data, 94)["keypoints"][27:29] = [640 * 1.6, 100.0]  # left_wrist (9) of the 640x360 image
        _annotation(data, 90)["keypoints"][30:32] = [-0.4 * 960, -0.4 * 720]  # within 50%: fine

    _edit_json(root, far)
    from PIL import Image

    path = root / IMAGES / "train00259.jpg"
    with Image.open(path) as im:
        exif = im.getexif()
        exif[0x0112] = 6
        im.save(path, exif=exif)
    problems = check_dataset(root)
    assert [(p.path, p.record) for p in problems] == [
        (str(path), "image 259"),
        (str(root / ANN), "annotation 94"),
    ]
    assert "EXIF orientation 6" in problems[0].problem
    assert (
        "keypoint 9 (left_wrist) at (1024.0, 100.0) is more than 50% of the image size outside the 640x360"
        in problems[1].problem
    )


def test_unusable_json_is_one_problem(syrip_sample, tmp_path):
    root = copy_sample(syrip_sample, tmp_path / "syrip")
    (root / ANN).write_text('{"images": [')
    (problem,) = check_dataset(root)
    assert problem.path == str(root / ANN) and "cannot read the annotation file as JSON" in problem.problem


# --------------------------------------------------------------------------------------------- MINI-RGBD


@pytest.fixture
def mini_tree(tmp_path) -> Path:
    write_mini_rgbd(tmp_path / "MINI-RGBD_web")
    return tmp_path / "MINI-RGBD_web"


def test_clean_mini_rgbd_fixture_passes(mini_tree, capsys):
    assert main([str(mini_tree)]) == 0
    assert "mini-rgbd at" in capsys.readouterr().out
    assert run_checks(mini_tree).counts == {"sequences": 2, "frames": 6}
    assert run_checks(mini_tree / "02").counts == {"sequences": 1, "frames": 3}


def _edit_joint_file(path: Path, edit) -> None:
    values = np.loadtxt(path)[:, :3]
    edit(values)
    write_joint_file(path, values)


def _move_far_outside(root: Path) -> None:
    """Right wrist (SMIL 21) 2 m to the right, consistently in 3D and 2D: far outside, yet consistent."""
    paths = frame_paths(root, "01", "00002")
    _edit_joint_file(paths["joints_3d"], lambda v: v.__setitem__((21, 0), 2.0))
    moved = np.loadtxt(paths["joints_3d"])[21, :3]
    _edit_joint_file(
        paths["joints_2d"], lambda v: v.__setitem__(21, [*project(moved[None])[0], 1000 * moved[2]])
    )


def _lines_edit(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


def test_one_run_lists_every_planted_mini_rgbd_fault(mini_tree, capsys):
    def p(seq, stem, kind):
        return frame_paths(mini_tree, seq, stem)[kind]

    _edit_joint_file(p("01", "00000", "joints_2d"), lambda v: v.__setitem__((16, 0), v[16, 0] + 5.0))
    _lines_edit(p("01", "00001", "joints_3d"), lambda ls: ls.pop())
    rgb = p("01", "00002", "rgb")
    rgb.write_bytes(rgb.read_bytes()[:-200])
    _move_far_outside(mini_tree)
    depth = p("02", "00000", "depth")
    cv2.imwrite(str(depth), (cv2.imread(str(depth), cv2.IMREAD_UNCHANGED) // 4).astype(np.uint8))
    _lines_edit(p("02", "00001", "joints_2d"), lambda ls: ls.__setitem__(4, ls[4] + " 7"))
    _lines_edit(p("02", "00001", "joints_3d"), lambda ls: ls.__setitem__(2, "nan " + ls[2].split(" ", 1)[1]))
    p("02", "00002", "mask").unlink()
    orphan = mini_tree / "02" / "rgb" / "syn_00003.png"
    shutil.copyfile(p("02", "00000", "rgb"), orphan)

    expected = [
        (p("01", "00000", "joints_2d"), "joint 16", "joint 16 (leftUpperArm) is 5.00 px off"),
        (p("01", "00001", "joints_3d"), None, "has 24 lines, expected 25"),
        (rgb, None, "truncated PNG"),
        (p("01", "00002", "joints_2d"), None, "keypoint 10 (right_wrist) at ("),
        (depth, None, "depth PNG is uint8"),
        (p("02", "00001", "joints_2d"), "line 5", "has 5 columns, expected 4"),
        (p("02", "00001", "joints_3d"), "line 3", "non-finite value"),
        (p("02", "00002", "mask"), None, "foreground mask missing"),
        (orphan, None, "no 2D joint file joints_2Ddep/syn_joints_2Ddep_00003.txt"),
    ]
    assert main([str(mini_tree), "--format", "mini-rgbd"]) == 1
    printed = _output_problems(capsys.readouterr().out)
    problems = check_dataset(mini_tree)
    assert printed == [str(q) for q in problems]
    assert len(problems) == len(expected), "\n".join(printed)
    for path, record, text in expected:
        assert any(q.path == str(path) and q.record == record and text in q.problem for q in problems), (
            path,
            text,
            printed,
        )
    with pytest.raises(DataError) as err:  # the loader refuses the same tree at its first problem
        read_mini_rgbd(mini_tree)
    assert any(q.path == err.value.path and q.problem == err.value.problem for q in problems)


# ------------------------------------------------------------------------------------------- detection/CLI


def test_format_detection(syrip_sample, mini_tree, tmp_path):
    assert detect_format(syrip_sample) == "syrip"
    assert detect_format(syrip_sample / ANN) == "syrip"
    assert detect_format(mini_tree) == "mini-rgbd"
    assert detect_format(mini_tree / "01") == "mini-rgbd"
    assert detect_format(tmp_path / "empty") is None
    (tmp_path / "empty").mkdir()
    (problem,) = check_dataset(tmp_path / "empty")
    assert problem == Problem(str(tmp_path / "empty"), None, problem.problem)
    assert "cannot tell the dataset format" in problem.problem
    assert [p.problem for p in check_dataset(tmp_path / "absent")] == ["missing"]


def test_wrong_format_is_a_problem_not_a_crash(syrip_sample, capsys):
    assert main([str(syrip_sample), "--format", "mini-rgbd"]) == 1
    assert "no MINI-RGBD sequence folders" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(syrip_sample), "--format", "coco"])
