"""SyRIP reader on the real 32-image sample and on copies with planted faults."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from geosapiens.data.formats.syrip import default_image_dir, read_syrip
from geosapiens.errors import DataError

ANN = "annotations/200R/person_keypoints_train_infant.json"


def copy_sample(src: Path, dst: Path) -> Path:
    """A writable copy of the sample (the shared one is read-only); images are copied, never linked."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            shutil.copyfile(path, target)
    return dst


def load(root: Path, ann: str = ANN) -> dict:
    return json.loads((root / ann).read_text())


def write_variant(root: Path, data: dict, name: str) -> str:
    """Write ``data`` as ``annotations/<name>/person_keypoints_train_infant.json``; returns that path
    relative to ``root``."""
    rel = f"annotations/{name}/person_keypoints_train_infant.json"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(json.dumps(data))
    return rel


def annotation_of(data: dict, image_id: int) -> dict:
    (ann,) = [a for a in data["annotations"] if a["image_id"] == image_id]
    return ann


@pytest.fixture(scope="module")
def sample_copy(syrip_sample, tmp_path_factory) -> Path:
    return copy_sample(syrip_sample, tmp_path_factory.mktemp("syrip"))


def test_every_sample_image_loads_with_the_json_size(syrip_sample):
    data = load(syrip_sample)
    records = read_syrip(syrip_sample, ANN)
    images = {im["id"]: im for im in data["images"]}
    assert len(records) == len(images) == 32
    assert [r.image_id for r in records] == sorted(images)
    for r in records:
        im = images[r.image_id]
        assert r.image_path == syrip_sample / "images" / "train_infant" / im["file_name"]
        assert r.image_path.is_file()
        assert (r.width, r.height) == (im["width"], im["height"])
        assert r.domain == "real" and r.source == syrip_sample / ANN
        assert r.keypoints.shape == (17, 2) and r.keypoints.dtype == np.float32
        assert r.labelled.all()  # the sample has no placeholders


def test_join_is_by_image_id_with_values_from_the_json(syrip_sample):
    data = load(syrip_sample)
    by_id = {r.image_id: r for r in read_syrip(syrip_sample, ANN)}
    # Known values of image 102 (annotations[0] in the file, but images[7]).
    r = by_id[102]
    assert r.image_path.name == "train00102.jpg" and (r.width, r.height) == (2439, 1536)
    np.testing.assert_allclose(r.keypoints[0], [714.3890380859375, 225.1791229248047])
    np.testing.assert_allclose(
        r.bbox, [496.4322496633571, 83.3993400316665, 460.39001760902056, 1056.9517305671882], rtol=1e-6
    )
    for image_id in (33, 259, 500):
        ann = annotation_of(data, image_id)
        kpts = np.asarray(ann["keypoints"]).reshape(17, 3)
        np.testing.assert_allclose(by_id[image_id].keypoints, kpts[:, :2], rtol=1e-6)
        np.testing.assert_allclose(by_id[image_id].bbox, ann["bbox"], rtol=1e-6)
        assert by_id[image_id].annotation_id == ann["id"]


def test_join_does_not_depend_on_list_order(sample_copy):
    data = load(sample_copy)
    data["images"] = data["images"][::-1]
    data["annotations"] = data["annotations"][5:] + data["annotations"][:5]
    shuffled = read_syrip(sample_copy, write_variant(sample_copy, data, "shuffled"))
    original = read_syrip(sample_copy, ANN)
    assert [r.image_id for r in shuffled] == [r.image_id for r in original]
    for a, b in zip(shuffled, original, strict=True):
        assert a.image_path == b.image_path
        np.testing.assert_array_equal(a.keypoints, b.keypoints)


def test_occluded_v1_is_labelled_but_not_visible(syrip_sample):
    data = load(syrip_sample)
    by_id = {r.image_id: r for r in read_syrip(syrip_sample, ANN)}
    for image_id in (321, 341):  # the two sample images with v = 1 keypoints
        v = np.asarray(annotation_of(data, image_id)["keypoints"]).reshape(17, 3)[:, 2]
        assert (v == 1).any()
        np.testing.assert_array_equal(by_id[image_id].visible, v == 2)
        assert by_id[image_id].labelled.all()


def test_placeholders_and_v0_are_unlabelled(sample_copy):
    data = load(sample_copy)
    kpts = annotation_of(data, 33)["keypoints"]
    kpts[3:6] = [-45, -45, 0]  # left_eye: the SyRIP placeholder
    kpts[8] = 0  # right_eye: v = 0 with a position
    kpts[12:15] = [-45.0, -45.0, 2]  # left_ear: placeholder position even with v = 2
    r = next(
        r
        for r in read_syrip(sample_copy, write_variant(sample_copy, data, "placeholders"))
        if r.image_id == 33
    )
    unlabelled = [1, 2, 4]
    assert not r.labelled[unlabelled].any() and not r.visible[unlabelled].any()
    np.testing.assert_array_equal(r.keypoints[unlabelled], 0.0)
    assert r.labelled.sum() == 14 and r.weights.sum() == 14


def test_area_kept_as_read_and_flagged(syrip_sample, sample_copy):
    data = load(syrip_sample)
    records = read_syrip(syrip_sample, ANN)
    ratios = []
    for r in records:
        ann = annotation_of(data, r.image_id)
        assert r.area == ann["area"]
        ratios.append(ann["area"] / (ann["bbox"][2] * ann["bbox"][3]))
    assert np.median(ratios) < 0.1  # train200's area is ~0.05x bbox w*h
    assert all(r.area_suspect for r in records)

    for scale, suspect in ((1.05, False), (0.95, False), (1.2, True), (0.8, True)):
        for ann in data["annotations"]:
            ann["area"] = scale * ann["bbox"][2] * ann["bbox"][3]
        records = read_syrip(sample_copy, write_variant(sample_copy, data, f"area{scale}"))
        assert all(r.area_suspect == suspect for r in records), scale


def test_negative_bbox_origin_is_kept(sample_copy):
    data = load(sample_copy)
    annotation_of(data, 90)["bbox"][:2] = [-12.5, -3.0]
    r = next(
        r for r in read_syrip(sample_copy, write_variant(sample_copy, data, "negbox")) if r.image_id == 90
    )
    np.testing.assert_allclose(r.bbox[:2], [-12.5, -3.0])


def test_domain_from_is_synthetic(sample_copy):
    data = load(sample_copy)
    synthetic = {im["id"] for im in data["images"][:5]}
    for im in data["images"][:5]:
        im["is_synthetic"] = True
    rel = write_variant(sample_copy, data, "mixed")
    assert {r.image_id for r in read_syrip(sample_copy, rel, domain="synthetic")} == synthetic
    real = read_syrip(sample_copy, rel, domain="real")
    assert len(real) == 27 and all(r.domain == "real" for r in real)
    assert len(read_syrip(sample_copy, rel)) == 32
    with pytest.raises(ValueError, match="domain"):
        read_syrip(sample_copy, rel, domain="fake")


def test_image_dir_default_and_explicit(sample_copy, tmp_path):
    assert (
        default_image_dir("annotations/validate100/person_keypoints_validate_infant.json")
        == "images/validate_infant"
    )
    assert default_image_dir("train.json") is None
    odd = sample_copy / "annotations" / "odd_name.json"
    shutil.copyfile(sample_copy / ANN, odd)
    with pytest.raises(DataError, match="cannot derive the image folder") as err:
        read_syrip(sample_copy, odd)
    assert str(odd) in str(err.value)
    assert len(read_syrip(sample_copy, odd, image_dir="images/train_infant")) == 32
    assert (
        len(read_syrip(sample_copy, str(sample_copy / ANN), image_dir=sample_copy / "images/train_infant"))
        == 32
    )


def _first(data: dict) -> dict:
    return data["annotations"][0]


# (id, how to plant the fault in the parsed JSON, text expected in the message, expected record,
#  the file the error must name: None = the annotation JSON, else a path relative to the dataset root)
LOADER_FAULTS = [
    ("missing-key", lambda d: d.pop("annotations"), "missing top-level key(s) 'annotations'", None, None),
    ("images-not-list", lambda d: d.update(images={}), "'images' must be list", None, None),
    (
        "keypoints-50",
        lambda d: _first(d).update(keypoints=_first(d)["keypoints"][:50]),
        "has 50 values",
        "annotation 102",
        None,
    ),
    (
        "keypoint-string",
        lambda d: _first(d)["keypoints"].__setitem__(4, "12"),
        "not a number",
        "annotation 102",
        None,
    ),
    (
        "nan-keypoint",
        lambda d: _first(d)["keypoints"].__setitem__(3, math.nan),
        "x is nan",
        "annotation 102",
        None,
    ),
    (
        "inf-keypoint",
        lambda d: _first(d)["keypoints"].__setitem__(4, math.inf),
        "y is inf",
        "annotation 102",
        None,
    ),
    (
        "visibility-3",
        lambda d: _first(d)["keypoints"].__setitem__(2, 3),
        "visibility 3 is not",
        "annotation 102",
        None,
    ),
    ("nan-bbox", lambda d: _first(d)["bbox"].__setitem__(1, math.nan), "not finite", "annotation 102", None),
    (
        "zero-width",
        lambda d: _first(d)["bbox"].__setitem__(2, 0),
        "zero or negative size",
        "annotation 102",
        None,
    ),
    (
        "negative-height",
        lambda d: _first(d)["bbox"].__setitem__(3, -5.0),
        "zero or negative size",
        "annotation 102",
        None,
    ),
    (
        "duplicate-image-id",
        lambda d: d["images"][1].update(id=d["images"][0]["id"]),
        "duplicate image id 33",
        "image 33",
        None,
    ),
    (
        "duplicate-annotation-id",
        lambda d: d["annotations"][1].update(id=102),
        "duplicate annotation id 102",
        "annotation 102",
        None,
    ),
    (
        "unknown-image",
        lambda d: _first(d).update(image_id=9999),
        "image id 9999, which is not in 'images'",
        "annotation 102",
        None,
    ),
    ("bool-id", lambda d: d["images"][0].update(id=True), "'id' is True", "images[0]", None),
    ("width-string", lambda d: d["images"][0].update(width="1280"), "'width' is '1280'", "image 33", None),
    (
        "dotdot",
        lambda d: d["images"][0].update(file_name="../train00033.jpg"),
        "escapes the image folder with '..'",
        "image 33",
        None,
    ),
    ("absolute", lambda d: d["images"][0].update(file_name="/etc/hostname"), "is absolute", "image 33", None),
    (
        "duplicate-file",
        lambda d: d["images"][1].update(file_name=d["images"][0]["file_name"]),
        "also used by image 33",
        "image 35",
        None,
    ),
    (
        "missing-file",
        lambda d: d["images"][0].update(file_name="gone.jpg"),
        "image file missing",
        "image 33",
        "images/train_infant/gone.jpg",
    ),
]


@pytest.mark.parametrize(
    ("plant", "text", "record", "named"), [f[1:] for f in LOADER_FAULTS], ids=[f[0] for f in LOADER_FAULTS]
)
def test_loader_refuses_each_fault_naming_file_and_record(sample_copy, plant, text, record, named):
    data = load(sample_copy)
    plant(data)
    rel = write_variant(sample_copy, data, "fault")
    with pytest.raises(DataError) as err:
        read_syrip(sample_copy, rel)
    message = str(err.value)
    assert text in message
    assert err.value.record == record
    assert err.value.path == str(sample_copy / (named or rel)), message
    assert message.startswith(err.value.path)


def test_symlink_escaping_the_root_is_refused(sample_copy, tmp_path):
    outside = tmp_path / "outside.jpg"
    shutil.copyfile(sample_copy / "images/train_infant/train00033.jpg", outside)
    link = sample_copy / "images/train_infant/escape.jpg"
    link.symlink_to(outside)
    inside = sample_copy / "images/train_infant/inside.jpg"
    inside.symlink_to(sample_copy / "images/train_infant/train00033.jpg")
    try:
        data = load(sample_copy)
        data["images"][0]["file_name"] = "inside.jpg"  # a link that stays inside the root is fine
        assert read_syrip(sample_copy, write_variant(sample_copy, data, "inside"))[0].image_path == inside
        data["images"][0]["file_name"] = "escape.jpg"
        with pytest.raises(DataError, match="escapes the dataset root through a symlink") as err:
            read_syrip(sample_copy, write_variant(sample_copy, data, "escape"))
        assert err.value.record == "image 33"
    finally:
        link.unlink()
        inside.unlink()


def test_missing_annotation_file_and_image_folder(sample_copy):
    with pytest.raises(DataError, match="annotation file missing"):
        read_syrip(sample_copy, "annotations/200R/person_keypoints_nothing_infant.json")
    with pytest.raises(DataError, match="image folder missing") as err:
        read_syrip(sample_copy, ANN, image_dir="images/elsewhere")
    assert err.value.path == str(sample_copy / "images/elsewhere")
