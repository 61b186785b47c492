"""Fuzzing the MINI-RGBD reader and checker with seeded random damage to a fixture tree.

The base tree (one sequence, two frames, written once per module by ``tests/fixtures_mini_rgbd.py`` in the
published layout) is copied per case and damaged. Categories: ``joints`` (lines and columns added, dropped,
swapped; garbage, non-finite and out-of-range tokens; empty, truncated, binary files; inconsistent 2D/3D
joints), ``images`` (depth of the wrong dtype, channel count or size; truncated, empty, garbage files, a PNG
header claiming 10^10 pixels; empty or wrong-size masks; missing files), ``layout`` (folders missing,
orphan files, a joint file that is a directory, a FIFO or a link to ``/dev/zero``) and ``benign`` (CRLF,
tabs, blank lines, sub-pixel jitter, extra files): those must load every frame and check clean. The loader
runs with and without ``check_projection`` (chosen by the seed).
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from fixtures_mini_rgbd import frame_paths, write_mini_rgbd
from fuzz import Case, Failures, run_case, seeds
from geosapiens.data.check import check_dataset
from geosapiens.data.formats.mini_rgbd import read_mini_rgbd
from geosapiens.data.records import PoseRecord

SEQUENCE = "01"
FRAMES = (0, 1)
TOKENS = [
    "abc",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e400",
    "1e300",
    "-1e300",
    "3.5e38",
    "1e-320",
    "0x10",
    "1_0",
    "\u22121",  # a unicode minus sign
    "\u0661",  # an Arabic-Indic digit one
    "9" * 400,
    "0",
    "-0.0",
    "1e5",
    "\x00",
    "'1'",
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mini_rgbd_base")
    write_mini_rgbd(root, sequences=(SEQUENCE,), frames=FRAMES)
    return root


def _paths(case: Case) -> dict[str, Path]:
    return frame_paths(case.root, SEQUENCE, f"{case.rng.choice(FRAMES):05d}")


def _png(width: int, height: int, bit_depth: int = 16) -> bytes:
    """A grey PNG whose header claims ``width x height`` (the data is a few bytes: a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 8))
        + chunk(b"IEND", b"")
    )


# ---------------------------------------------------------------------------------------------- joints


def mutate_joints(case: Case) -> None:
    rng = case.rng
    which = rng.choice(["joints_2d", "joints_3d"])
    path = _paths(case)[which]
    lines = path.read_text().splitlines()
    i = rng.randrange(len(lines))
    kind = rng.choice(
        ["drop-line", "add-line", "dup-line", "swap-lines", "empty", "blank", "truncate", "binary", "nul",
         "token", "drop-token", "add-token", "id", "z-sign", "z-zero", "scale", "huge-line"]
    )  # fmt: skip
    text = None
    if kind == "drop-line":
        del lines[i]
    elif kind == "add-line":
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif kind == "dup-line":
        lines[i] = lines[(i + 1) % len(lines)]
    elif kind == "swap-lines":
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "empty":
        text = ""
    elif kind == "blank":
        text = " \n\t\n"
    elif kind == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: rng.randrange(len(data))])
    elif kind == "binary":
        path.write_bytes(rng.randbytes(rng.randint(1, 2048)))
    elif kind == "nul":
        path.write_bytes(b"\x00" * rng.randint(1, 2048))
    elif kind == "token":
        tokens = lines[i].split()
        j = rng.randrange(len(tokens))
        tokens[j] = rng.choice(TOKENS)
        lines[i] = " ".join(tokens)
    elif kind == "drop-token":
        lines[i] = " ".join(lines[i].split()[:-1])
    elif kind == "add-token":
        lines[i] += " " + rng.choice(TOKENS)
    elif kind == "id":
        lines[i] = " ".join(lines[i].split()[:3] + [rng.choice(["-1", "25", "3.5", str(i + 1)])])
    elif kind in ("z-sign", "z-zero", "scale"):
        x, y, z, joint = lines[i].split()
        if kind == "z-sign":
            z = f"-{z}"
        elif kind == "z-zero":
            z = "0"
        else:
            x = f"{float(x) * rng.choice([1.01, 2.0, 1e6]):.6f}"
        lines[i] = f"{x} {y} {z} {joint}"
    else:
        lines[i] = " ".join(["1" * 100_000] * 3 + [str(i)])
    if kind in ("truncate", "binary", "nul"):
        case.did(f"{kind} {path.name}")
        return
    path.write_text(text if text is not None else "\n".join(lines) + "\n")
    case.did(
        f"{kind} {path.name} line {i + 1}"
        + (f": {lines[i][:60]!r}" if kind in ("token", "add-token") else "")
    )


# ---------------------------------------------------------------------------------------------- images


def mutate_images(case: Case) -> bool:
    """True when the checker must report a problem even where the loader accepts the frame."""
    rng = case.rng
    paths = _paths(case)
    kind, target = rng.choice(
        [
            (k, t)
            for t in ("depth", "mask", "rgb")
            for k in ("missing", "garbage", "truncated", "empty", "directory", "bomb", "wrong-size", "jpeg")
        ]
        + [("uint8", "depth"), ("3-channel", "depth"), ("float", "depth"), ("zeros", "depth")]
        + [("zeros", "mask"), ("inverted", "mask"), ("16-bit", "mask"), ("gray", "rgb")]
    )
    path = paths[target]
    case.did(f"{kind} {target} {path.name}")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if kind == "missing":
        path.unlink()
    elif kind == "garbage":
        path.write_bytes(rng.randbytes(rng.randint(1, 4096)))
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: rng.randrange(8, len(data) - 12)])
        return True
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    elif kind == "bomb":
        path.write_bytes(_png(*rng.choice([(100_000, 100_000), (20_000, 20_000), (2_000_000, 1)])))
    elif kind == "wrong-size":
        cv2.imwrite(str(path), cv2.resize(image, (320, 240), interpolation=cv2.INTER_NEAREST))
    elif kind == "jpeg":
        shown = cv2.convertScaleAbs(image, alpha=255.0 / max(1, int(image.max())))
        path.write_bytes(cv2.imencode(".jpg", shown)[1].tobytes())
    elif kind == "uint8":
        cv2.imwrite(str(path), (image // 256).astype(np.uint8))
    elif kind == "3-channel":
        cv2.imwrite(str(path), np.dstack([image] * 3))
    elif kind == "float":
        path.write_bytes(cv2.imencode(".tiff", image.astype(np.float32))[1].tobytes())
    elif kind == "zeros":
        cv2.imwrite(str(path), np.zeros_like(image))
    elif kind == "inverted":
        cv2.imwrite(str(path), 255 - image)
    elif kind == "16-bit":
        cv2.imwrite(str(path), image.astype(np.uint16) * 257)
    else:  # gray
        cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    return False


# ---------------------------------------------------------------------------------------------- layout


def mutate_layout(case: Case) -> None:
    rng = case.rng
    seq = case.root / SEQUENCE
    paths = _paths(case)
    kind = rng.choice(
        ["no-folder", "no-sequence", "orphan-2d", "orphan-rgb", "junk-names", "renamed-sequence",
         "empty-sequence", "joint-dir", "joint-fifo", "joint-devzero", "joint-link-loop"]
    )  # fmt: skip
    case.did(kind)
    if kind == "no-folder":
        folder = rng.choice(["rgb", "depth", "fg_mask", "joints_2Ddep", "joints_3D"])
        case.did(folder)
        shutil.rmtree(seq / folder)
    elif kind == "no-sequence":
        shutil.rmtree(seq)
    elif kind == "orphan-2d":
        shutil.copyfile(paths["joints_2d"], seq / "joints_2Ddep" / "syn_joints_2Ddep_00007.txt")
    elif kind == "orphan-rgb":
        shutil.copyfile(paths["rgb"], seq / "rgb" / "syn_00009.png")
    elif kind == "junk-names":
        for name in ("syn_joints_2Ddep_abc.txt", "syn_joints_2Ddep_.txt", "notes.txt", ".DS_Store"):
            (seq / "joints_2Ddep" / name).write_text("junk")
        (seq / "joints_2Ddep" / "syn_joints_2Ddep_\u0663.txt").write_text("junk")  # an Arabic-Indic digit
    elif kind == "renamed-sequence":
        seq.rename(case.root / "1")
    elif kind == "empty-sequence":
        (case.root / "02").mkdir()
    else:
        joint = paths[rng.choice(["joints_2d", "joints_3d"])]
        joint.unlink()
        if kind == "joint-dir":
            joint.mkdir()
        elif kind == "joint-fifo":
            os.mkfifo(joint)
        elif kind == "joint-devzero":
            joint.symlink_to("/dev/zero")
        else:
            joint.symlink_to(joint)


# ---------------------------------------------------------------------------------------------- benign


def mutate_benign(case: Case) -> None:
    rng = case.rng
    paths = _paths(case)
    for kind in rng.sample(
        ["crlf", "tabs", "trailing-blank", "spaces", "jitter", "extra-files"], k=rng.randint(1, 3)
    ):
        case.did(kind)
        path = paths[rng.choice(["joints_2d", "joints_3d"])]
        lines = path.read_text().splitlines()
        if kind == "crlf":
            path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
        elif kind == "tabs":
            path.write_text("\n".join("\t".join(line.split()) for line in lines) + "\n")
        elif kind == "trailing-blank":
            path.write_text("\n".join(lines) + "\n\n  \n")
        elif kind == "spaces":
            path.write_text("\n".join("  " + "   ".join(line.split()) + " " for line in lines))
        elif kind == "jitter":  # a quarter pixel: within the 1 px reprojection tolerance
            path = paths["joints_2d"]
            values = np.loadtxt(path)
            values[:, :2] += rng.uniform(-0.25, 0.25)
            path.write_text("\n".join(f"{x:.6f} {y:.6f} {d:.6f} {int(j)}" for x, y, d, j in values) + "\n")
        else:
            (case.root / SEQUENCE / "README.txt").write_text("notes")
            (case.root / "notes").mkdir(exist_ok=True)
            (case.root / SEQUENCE / "rgb" / "thumbs.db").write_bytes(b"\x00")


# -------------------------------------------------------------------------------------------------- checks


def validate(record: PoseRecord, root: Path) -> None:
    """A record the loader returned is usable as it is."""
    assert record.keypoints.shape == (17, 2) and record.keypoints.dtype == np.float32
    assert np.isfinite(record.keypoints).all(), record.keypoints
    assert record.labelled.dtype == bool and record.labelled.sum() == 13
    assert not (record.visible & ~record.labelled).any()
    assert record.joints_3d.shape == (17, 3) and np.isfinite(record.joints_3d).all(), record.joints_3d
    assert record.bbox.shape == (4,) and np.isfinite(record.bbox).all() and (record.bbox[2:] > 0).all()
    assert (record.width, record.height) == (640, 480)
    assert record.image_id == f"{record.sequence}/{record.frame:05d}"
    for path in (record.image_path, record.depth_path, record.mask_path, record.source):
        assert path.is_file() and path.is_relative_to(root), path


CATEGORIES = {"joints": (10, 130), "images": (11, 80), "layout": (12, 30), "benign": (13, 20)}


@pytest.mark.slow
@pytest.mark.parametrize("category", list(CATEGORIES))
def test_mutated_mini_rgbd_loads_valid_records_or_fails_naming_the_file(base, tmp_path, category):
    index, cases = CATEGORIES[category]
    failures = Failures()
    refused = accepted = 0
    case_seeds = seeds(index, cases)
    for seed in case_seeds:
        case = Case(seed, tmp_path / str(seed))
        shutil.copytree(base, case.root)

        def body(case=case) -> None:
            nonlocal refused, accepted
            must_find = False
            if category == "joints":
                mutate_joints(case)
            elif category == "images":
                must_find = mutate_images(case)
            elif category == "layout":
                mutate_layout(case)
            else:
                mutate_benign(case)
            projection = category == "benign" or case.rng.random() < 0.7
            case.did(f"check_projection={projection}")
            outcome = run_case(
                case,
                lambda: read_mini_rgbd(case.root, check_projection=projection),
                lambda: check_dataset(case.root, "mini-rgbd"),
                lambda record: validate(record, case.root),
            )
            assert outcome.problems or not must_find, "check_dataset found nothing wrong"
            if category == "benign":
                assert outcome.error is None, f"refused a valid tree: {outcome.error}"
                assert len(outcome.records) == len(FRAMES)
                assert outcome.problems == [], [str(p) for p in outcome.problems]
            refused += outcome.error is not None
            accepted += outcome.error is None

        failures.run(case, body)
        shutil.rmtree(case.root, ignore_errors=True)
    failures.assert_none(f"MINI-RGBD {category}")
    if category != "benign" and len(case_seeds) >= 20:  # the mutations must bite, and not only bite
        assert refused >= 0.3 * (refused + accepted), (refused, accepted)
        assert accepted > 0, (refused, accepted)


def _token(path: Path, line: int, column: int, token: str) -> None:
    lines = path.read_text().splitlines()
    tokens = lines[line].split()
    tokens[column] = token
    lines[line] = " ".join(tokens)
    path.write_text("\n".join(lines) + "\n")


def _replace(path: Path, make) -> None:
    path.unlink()
    make(path)


# Faults the fuzzing found: each crashed the reader (another exception type), hung it, put inf in a record,
# or produced a message of hundreds of kilobytes.
FOUND = [
    (
        "rgb-bomb-header",
        lambda p: p["rgb"].write_bytes(_png(100_000, 100_000)),
        "exceeds limit of 178956970 pixels",
    ),
    ("depth-bomb-header", lambda p: p["depth"].write_bytes(_png(100_000, 100_000)), "OpenCV refused it"),
    ("mask-bomb-header", lambda p: p["mask"].write_bytes(_png(100_000, 100_000)), "OpenCV refused it"),
    ("joint-fifo", lambda p: _replace(p["joints_2d"], os.mkfifo), "joint file is not a regular file"),
    (
        "joint-dev-zero",
        lambda p: _replace(p["joints_3d"], lambda q: q.symlink_to("/dev/zero")),
        "not a regular",
    ),
    (
        "joint-1e300",
        lambda p: _token(p["joints_3d"], 6, 0, "1e300"),
        "value beyond the float32 range in '1e300",
    ),
    (
        "joint-100000-digits",
        lambda p: _token(p["joints_2d"], 6, 0, "1" * 100_000),
        "non-finite value in '1111",
    ),
]


@pytest.mark.parametrize(("plant", "text"), [f[1:] for f in FOUND], ids=[f[0] for f in FOUND])
def test_faults_found_by_fuzzing_are_refused_with_a_clear_message(base, tmp_path, plant, text):
    case = Case(0, tmp_path / "root")
    shutil.copytree(base, case.root)
    plant(frame_paths(case.root, SEQUENCE, "00001"))
    for projection in (True, False):
        outcome = run_case(
            case,
            lambda projection=projection: read_mini_rgbd(case.root, check_projection=projection),
            lambda: check_dataset(case.root),
            lambda record: validate(record, case.root),
        )
        assert outcome.error is not None and text in str(outcome.error), outcome.error


def test_checker_names_the_missing_folder_not_every_file_beside_it(base, tmp_path):
    root = Path(shutil.copytree(base, tmp_path / "root"))
    shutil.rmtree(root / SEQUENCE / "fg_mask")
    assert [(p.path, p.problem) for p in check_dataset(root)] == [
        (str(root / SEQUENCE / "fg_mask"), "folder missing from sequence 01")
    ]
