"""Fuzzing the SyRIP reader and checker with seeded random mutations of the real sample's annotation JSON.

The base dataset is the real sample cut to its four smallest images (the checker decodes every image, so
fewer images buy more mutations in the time budget) with their annotations and every quirk of the real file.
Categories: ``json`` edits the parsed document (keys deleted or renamed, values of the wrong type or out of
range, lists cut, records duplicated, ids swapped or dangling, file-name tricks), ``text`` damages the bytes
(truncation, flipped bytes, binary junk, nesting and integers beyond the parser's limits), ``files`` damages
the files (images missing, truncated, garbage, a directory, symlinks out of the root, a FIFO), and ``benign``
makes changes a reader must accept (reordered lists, unknown keys, placeholders, BOM/UTF-16, unicode names):
those must load with every annotation and check clean.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fuzz import Case, Failures, brief, run_case, seeds, walk
from geosapiens.data.check import check_dataset
from geosapiens.data.formats.syrip import PLACEHOLDER_XY, read_syrip
from geosapiens.data.records import PoseRecord

ANN = "annotations/200R/person_keypoints_train_infant.json"
IMAGES = "images/train_infant"
NUM_IMAGES = 4

# Values planted where a field was: wrong types, out-of-range numbers, hostile strings.
VALUES: list[Any] = [
    "",
    "12",
    "abc",
    "NaN",
    [],
    [0, 1],
    list(range(3000)),
    {},
    {"x": 1},
    None,
    True,
    False,
    0,
    -1,
    1.5,
    -2.5,
    10**30,
    10**400,
    1e308,
    -1e308,
    3.5e38,
    1e-50,
    math.nan,
    math.inf,
    -math.inf,
    "\u202e\x00",
    "\ud800",
    "x" * 5000,
]
PATH_TRICKS = [
    "../train00033.jpg",
    "../../../../etc/hostname",
    "/etc/hostname",
    "C:\\Windows\\win.ini",
    "..\\..\\x.jpg",
    "sub/../../x.jpg",
    "",
    " ",
    ".",
    "./",
    "~/x.jpg",
    "%2e%2e/x.jpg",
    "bébé_ünï©ødé.jpg",
    "x\x00.jpg",
    "\ud800.jpg",
    "a" * 300 + ".jpg",
    "train00033.jpg/",
]


@pytest.fixture(scope="module")
def base(syrip_sample, tmp_path_factory) -> tuple[dict, Path]:
    """(the cut-down annotation document, a folder holding its images, copied once per session)."""
    data = json.loads((syrip_sample / ANN).read_text())
    size = {im["id"]: (syrip_sample / IMAGES / im["file_name"]).stat().st_size for im in data["images"]}
    keep = set(sorted(size, key=size.get)[:NUM_IMAGES])
    doc = {
        **data,
        "images": [im for im in data["images"] if im["id"] in keep],
        "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
    }
    cache = tmp_path_factory.mktemp("syrip_images")
    for im in doc["images"]:
        shutil.copyfile(syrip_sample / IMAGES / im["file_name"], cache / im["file_name"])
    return doc, cache


def make_root(case: Case, doc: dict, cache: Path) -> None:
    (case.root / ANN).parent.mkdir(parents=True)
    (case.root / IMAGES).mkdir(parents=True)
    for im in doc["images"]:
        shutil.copyfile(cache / im["file_name"], case.root / IMAGES / im["file_name"])


def write(case: Case, doc: Any) -> None:
    (case.root / ANN).write_text(json.dumps(doc))


# ------------------------------------------------------------------------------------------ json mutations


def _entries(doc: dict) -> list[tuple[str, dict]]:
    out = [("doc", doc)]
    for key in ("images", "annotations", "categories"):
        if isinstance(doc.get(key), list):
            out += [(f"{key}[{i}]", e) for i, e in enumerate(doc[key]) if isinstance(e, dict)]
    return out


def _pick_entry(case: Case, doc: dict) -> tuple[str, dict] | None:
    entries = [(label, e) for label, e in _entries(doc) if e]
    return case.rng.choice(entries) if entries else None


def delete_key(case: Case, doc: dict) -> None:
    picked = _pick_entry(case, doc)
    if picked:
        label, entry = picked
        key = case.rng.choice(list(entry))
        del entry[key]
        case.did(f"delete {label}[{key!r}]")


def rename_key(case: Case, doc: dict) -> None:
    picked = _pick_entry(case, doc)
    if picked:
        label, entry = picked
        key = case.rng.choice(list(entry))
        new = case.rng.choice([key.upper(), key + "_", key[:-1], " " + key, key.replace("_", "")])
        entry[new] = entry.pop(key)
        case.did(f"rename {label}[{key!r}] -> {new!r}")


def retype_value(case: Case, doc: dict) -> None:
    """Any slot anywhere (fields, list elements, keypoint values) gets a planted value."""
    slots = list(walk(doc))
    label, container, key = case.rng.choice(slots)
    value = copy.deepcopy(case.rng.choice(VALUES))
    container[key] = value
    case.did(f"set doc{label} = {brief(value)}")


def retype_field(case: Case, doc: dict) -> None:
    """The fields the reader relies on, more often than :func:`retype_value` would hit them."""
    field = case.rng.choice(
        [
            ("images", "id"),
            ("images", "file_name"),
            ("images", "width"),
            ("images", "height"),
            ("images", "is_synthetic"),
            ("annotations", "id"),
            ("annotations", "image_id"),
            ("annotations", "category_id"),
            ("annotations", "keypoints"),
            ("annotations", "bbox"),
            ("annotations", "area"),
            ("annotations", "iscrowd"),
            ("categories", "id"),
        ]
    )
    entries = doc.get(field[0])
    if isinstance(entries, list) and entries and isinstance(entries[0], dict):
        i = case.rng.randrange(len(entries))
        value = copy.deepcopy(case.rng.choice(VALUES))
        entries[i][field[1]] = value
        case.did(f"set {field[0]}[{i}][{field[1]!r}] = {brief(value)}")


def number_value(case: Case, doc: dict) -> None:
    """One keypoint or bbox number set to a planted value."""
    anns = [a for a in doc.get("annotations", []) if isinstance(a, dict)]
    if not anns:
        return
    i = case.rng.randrange(len(anns))
    key = case.rng.choice(["keypoints", "bbox"])
    values = anns[i].get(key)
    if isinstance(values, list) and values:
        j = case.rng.randrange(len(values))
        values[j] = copy.deepcopy(
            case.rng.choice(VALUES + [3, -1, 0.5, 2.0, "2", -45, 1e39, -1e-45, 0, 2**63, -(2**64)])
        )
        case.did(f"set annotations[{i}][{key!r}][{j}] = {brief(values[j])}")


def truncate_list(case: Case, doc: dict) -> None:
    lists = [(label, c, k) for label, c, k in walk(doc) if isinstance(c[k], list) and c[k]]
    if lists:
        label, container, key = case.rng.choice(lists)
        n = case.rng.randrange(len(container[key]))
        container[key] = container[key][:n]
        case.did(f"cut doc{label} to {n} items")


def duplicate_entry(case: Case, doc: dict) -> None:
    key = case.rng.choice(["images", "annotations"])
    entries = doc.get(key)
    if isinstance(entries, list) and entries:
        dup = copy.deepcopy(case.rng.choice(entries))
        how = case.rng.choice(["same id", "new id"])
        if how == "new id" and isinstance(dup, dict):
            dup["id"] = 900_000 + case.rng.randrange(1000)
        entries.insert(case.rng.randrange(len(entries) + 1), dup)
        case.did(f"duplicate an entry of {key} ({how})")


def swap_ids(case: Case, doc: dict) -> None:
    key, field = case.rng.choice([("images", "id"), ("annotations", "image_id"), ("annotations", "id")])
    entries = [e for e in doc.get(key, []) if isinstance(e, dict) and field in e]
    if len(entries) >= 2:
        a, b = case.rng.sample(entries, 2)
        a[field], b[field] = b[field], a[field]
        case.did(f"swap {field} of two {key}")


def dangling_image_id(case: Case, doc: dict) -> None:
    anns = [a for a in doc.get("annotations", []) if isinstance(a, dict)]
    if anns:
        ann = case.rng.choice(anns)
        ann["image_id"] = case.rng.choice([999_999, -1, 0])
        case.did(f"annotation {ann.get('id')!r} points at image {ann['image_id']}")


def path_trick(case: Case, doc: dict) -> None:
    images = [im for im in doc.get("images", []) if isinstance(im, dict)]
    if images:
        im = case.rng.choice(images)
        im["file_name"] = case.rng.choice(PATH_TRICKS)
        case.did(f"image {im.get('id')!r} file_name = {brief(im['file_name'])}")


def replace_document(case: Case, doc: dict) -> Any:
    new = copy.deepcopy(case.rng.choice([[], [doc], "COCO", 3, None, {"images": [], "annotations": []}]))
    case.did(f"replace the whole document by {brief(new)}")
    return new


JSON_OPS = [
    (delete_key, 3),
    (rename_key, 2),
    (retype_value, 4),
    (retype_field, 6),
    (number_value, 5),
    (truncate_list, 2),
    (duplicate_entry, 2),
    (swap_ids, 2),
    (dangling_image_id, 1),
    (path_trick, 3),
]


def mutate_json(case: Case, doc: dict) -> Any:
    if case.rng.random() < 0.03:
        return replace_document(case, doc)
    ops, weights = zip(*JSON_OPS, strict=True)
    for op in case.rng.choices(ops, weights, k=case.rng.choice([1, 1, 2, 3])):
        op(case, doc)
    return doc


# ------------------------------------------------------------------------------------------ text mutations


def mutate_text(case: Case, text: bytes) -> bytes:
    rng = case.rng
    kind = rng.choice(["truncate", "flip", "insert", "delete", "huge-int", "deep", "empty", "binary"])
    if kind == "truncate":
        n = rng.randrange(len(text))
        case.did(f"truncate the JSON text to {n} of {len(text)} bytes")
        return text[:n]
    if kind == "flip":
        data = bytearray(text)
        spots = [rng.randrange(len(data)) for _ in range(rng.randint(1, 6))]
        for i in spots:
            data[i] = rng.randrange(256)
        case.did(f"overwrite bytes {spots} with random values")
        return bytes(data)
    if kind == "insert":
        junk = rng.choice(
            [b"\x00" * 8, b"\xff\xfe", b"\xc3\x28", b"}", b"]]", b",", bytes(rng.randbytes(16))]
        )
        i = rng.randrange(len(text))
        case.did(f"insert {junk!r} at byte {i}")
        return text[:i] + junk + text[i:]
    if kind == "delete":
        i = rng.randrange(len(text))
        case.did(f"delete byte {i} ({chr(text[i])!r})")
        return text[:i] + text[i + 1 :]
    if kind == "huge-int":
        case.did("an integer of 5000 digits (beyond Python's int parsing limit)")
        return text.replace(b'"width": ', b'"width": ' + b"1" * 5000, 1)
    if kind == "deep":
        case.did("a value nested 100000 levels deep")
        return text.replace(b'"bbox_head": []', b'"bbox_head": ' + b"[" * 100_000 + b"]" * 100_000, 1)
    if kind == "empty":
        case.did("empty annotation file")
        return b""
    case.did("random binary content")
    return bytes(rng.randbytes(rng.randint(1, 4096)))


# ------------------------------------------------------------------------------------------ file mutations


def mutate_files(case: Case, doc: dict, outside: Path) -> bool:
    """Damage the files of a valid document; True when the checker must find a problem even where the
    loader accepts the dataset (the loader never opens images)."""
    rng = case.rng
    names = [im["file_name"] for im in doc["images"]]
    name = rng.choice(names)
    image = case.root / IMAGES / name
    kind = rng.choice(
        [
            "missing",
            "garbage",
            "truncated",
            "empty",
            "directory",
            "symlink-out",
            "symlink-in",
            "exif",
            "no-image-dir",
            "annotation-dir",
            "annotation-fifo",
            "annotation-devzero",
        ]
    )
    case.did(f"{kind}: {name}" if kind in ("missing", "garbage", "truncated", "empty", "exif") else kind)
    if kind == "missing":
        image.unlink()
    elif kind == "garbage":
        image.write_bytes(rng.randbytes(2048))
        return True
    elif kind == "truncated":
        data = image.read_bytes()
        image.write_bytes(data[: rng.randrange(len(data) // 2, len(data) - 16)])
        return True
    elif kind == "empty":
        image.write_bytes(b"")
        return True
    elif kind == "directory":
        image.unlink()
        image.mkdir()
    elif kind == "symlink-out":
        target = outside / "outside.jpg"
        shutil.copyfile(image, target)
        image.unlink()
        image.symlink_to(target)
    elif kind == "symlink-in":
        image.unlink()
        image.symlink_to(case.root / IMAGES / rng.choice([n for n in names if n != name] or [name]))
    elif kind == "exif":
        with Image.open(image) as im:
            exif = im.getexif()
            exif[0x0112] = 6
            im.save(image, exif=exif)
        return True
    elif kind == "no-image-dir":
        shutil.rmtree(case.root / IMAGES)
    elif kind == "annotation-dir":
        (case.root / ANN).unlink()
        (case.root / ANN).mkdir()
    elif kind == "annotation-fifo":
        (case.root / ANN).unlink()
        os.mkfifo(case.root / ANN)
    else:
        (case.root / ANN).unlink()
        (case.root / ANN).symlink_to("/dev/zero")
    return kind != "symlink-in"


# ---------------------------------------------------------------------------------------- benign mutations


def mutate_benign(case: Case, doc: dict) -> bytes:
    """Changes a reader must take in its stride; returns the file's bytes."""
    rng = case.rng
    for kind in rng.sample(
        ["reorder", "extra-keys", "synthetic", "placeholder", "negative-origin", "no-area", "int-coords",
         "unicode-name", "subfolder", "dot-slash"],
        k=rng.randint(1, 3),
    ):  # fmt: skip
        case.did(kind)
        ann = rng.choice(doc["annotations"])
        im = rng.choice(doc["images"])
        if kind == "reorder":
            rng.shuffle(doc["images"])
            rng.shuffle(doc["annotations"])
        elif kind == "extra-keys":
            doc["info"] = {"note": "extra"}
            im["camera"] = [1, 2]
            ann["score"] = None
        elif kind == "synthetic":
            im["is_synthetic"] = rng.choice([True, 1, 0, False])
        elif kind == "placeholder":
            k = rng.randrange(17)
            ann["keypoints"][3 * k : 3 * k + 3] = rng.choice(
                [[-45, -45, 0], [-45.0, -45.0, 2], [10.0, 20.0, 0]]
            )
        elif kind == "negative-origin":
            ann["bbox"][:2] = [-12.5, -3.0]
        elif kind == "no-area":
            ann.pop("area", None)
        elif kind == "int-coords":
            ann["keypoints"] = [round(v) for v in ann["keypoints"]]
        elif kind in ("unicode-name", "subfolder", "dot-slash"):
            new = {
                "unicode-name": "bébé ü 赤ちゃん.jpg",
                "subfolder": "sub/dir/x.jpg",
                "dot-slash": "./y.jpg",
            }[kind]
            old = case.root / IMAGES / im["file_name"]
            (case.root / IMAGES / new).parent.mkdir(parents=True, exist_ok=True)
            if old.exists():
                old.rename(case.root / IMAGES / new)
                im["file_name"] = new
    text = json.dumps(doc, indent=rng.choice([None, 2]))
    encoding = rng.choice(["utf-8", "utf-8-sig", "utf-16"])
    case.did(f"written as {encoding}")
    return text.encode(encoding)


# -------------------------------------------------------------------------------------------------- checks


def validate(record: PoseRecord, root: Path) -> None:
    """A record the loader returned is usable as it is."""
    assert record.keypoints.shape == (17, 2) and record.keypoints.dtype == np.float32
    assert record.labelled.shape == (17,) and record.labelled.dtype == bool
    assert record.visible.shape == (17,) and not (record.visible & ~record.labelled).any()
    assert np.isfinite(record.keypoints).all(), record.keypoints
    assert not record.keypoints[~record.labelled].any(), "unlabelled joints must sit at 0"
    assert record.bbox.shape == (4,) and record.bbox.dtype == np.float32
    assert np.isfinite(record.bbox).all() and (record.bbox[2:] > 0).all(), record.bbox
    assert type(record.width) is int and type(record.height) is int and record.width > 0 < record.height
    assert record.domain in ("real", "synthetic")
    assert record.area is None or (math.isfinite(record.area) and record.area >= 0)
    assert record.image_path.is_file(), record.image_path
    assert record.image_path.resolve().is_relative_to(root.resolve()), record.image_path


def matches_document(record: PoseRecord, doc: Any) -> None:
    """The record says what the (mutated) JSON says: joined by ids, values unchanged."""
    ann = next(a for a in doc["annotations"] if isinstance(a, dict) and a.get("id") == record.annotation_id)
    im = next(i for i in doc["images"] if isinstance(i, dict) and i.get("id") == record.image_id)
    assert ann["image_id"] == record.image_id
    assert record.image_path.as_posix().endswith(os.path.normpath(im["file_name"]).replace(os.sep, "/"))
    kpts = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)
    placeholder = (kpts[:, :2] == PLACEHOLDER_XY).all(axis=1)
    np.testing.assert_array_equal(record.labelled, (kpts[:, 2] > 0) & ~placeholder)
    np.testing.assert_array_equal(
        record.keypoints[record.labelled], kpts[record.labelled, :2].astype(np.float32)
    )
    np.testing.assert_array_equal(record.bbox, np.asarray(ann["bbox"], dtype=np.float32))


def run(case: Case, check_doc: Any = None) -> object:
    root = case.root

    def checked(record: PoseRecord) -> None:
        validate(record, root)
        if check_doc is not None:
            matches_document(record, check_doc)

    return run_case(case, lambda: read_syrip(root, ANN), lambda: check_dataset(root), checked)


CATEGORIES = {"json": (0, 150), "text": (1, 50), "files": (2, 36), "benign": (3, 24)}


@pytest.mark.slow
@pytest.mark.parametrize("category", list(CATEGORIES))
def test_mutated_syrip_loads_valid_records_or_fails_naming_the_file(base, tmp_path, category):
    doc0, cache = base
    index, cases = CATEGORIES[category]
    failures = Failures()
    refused = accepted = 0
    outside = tmp_path / "outside"
    outside.mkdir()
    case_seeds = seeds(index, cases)
    for seed in case_seeds:
        case = Case(seed, tmp_path / str(seed))
        doc = copy.deepcopy(doc0)
        make_root(case, doc, cache)

        def body(case=case, doc=doc) -> None:
            nonlocal refused, accepted
            if category == "json":
                mutated = mutate_json(case, doc)
                write(case, mutated)
                outcome = run(case, mutated if isinstance(mutated, dict) else None)
            elif category == "text":
                (case.root / ANN).write_bytes(mutate_text(case, json.dumps(doc).encode()))
                outcome = run(case)
            elif category == "files":
                write(case, doc)
                must_find = mutate_files(case, doc, outside)
                outcome = run(case)
                assert outcome.problems or not must_find, "check_dataset found nothing wrong"
            else:
                (case.root / ANN).write_bytes(mutate_benign(case, doc))
                outcome = run(case, doc)
                assert outcome.error is None, f"refused a valid file: {outcome.error}"
                assert len(outcome.records) == len(doc["annotations"])
                assert outcome.problems == [], [str(p) for p in outcome.problems]
            refused += outcome.error is not None
            accepted += outcome.error is None

        failures.run(case, body)
        shutil.rmtree(case.root, ignore_errors=True)
    failures.assert_none(f"SyRIP {category}")
    if category != "benign" and len(case_seeds) >= 20:  # the mutations must bite, and not only bite
        assert refused >= 0.3 * (refused + accepted), (refused, accepted)
        if category != "text":
            assert accepted > 0, (refused, accepted)


def _first(doc: dict, key: str) -> dict:
    return doc[key][0]


# Faults the fuzzing found: each crashed the reader or the checker with another exception type, put a
# non-finite or zero-size value in a record, dropped an annotation silently, or produced a giant message.
FOUND = [
    (
        "int-5000-digits",
        lambda d, t: t.replace(b'"width": ', b'"width": ' + b"1" * 5000, 1),
        "Exceeds the limit",
    ),
    (
        "nested-100000",
        lambda d, t: t.replace(b'"bbox_head": []', b'"bbox_head": ' + b"[" * 100_000 + b"]" * 100_000, 1),
        "cannot read the annotation file as JSON: values nested too deeply",
    ),
    (
        "category-list",
        lambda d, t: _first(d, "annotations").update(category_id=[1]),
        "'category_id' [1] is not in",
    ),
    (
        "category-dict",
        lambda d, t: _first(d, "annotations").update(category_id={}),
        "'category_id' {} is not in",
    ),
    (
        "keypoint-int-10e400",
        lambda d, t: _first(d, "annotations")["keypoints"].__setitem__(3, 10**400),
        "x is 100000000000000000...0000000000000000000, beyond the float32 range",
    ),
    (
        "keypoint-3.5e38",
        lambda d, t: _first(d, "annotations")["keypoints"].__setitem__(4, 3.5e38),
        "y is 3.5e+38, beyond the float32 range",
    ),
    (
        "bbox-int-10e400",
        lambda d, t: _first(d, "annotations")["bbox"].__setitem__(0, 10**400),
        "is not finite",
    ),
    (
        "bbox-1e39",
        lambda d, t: _first(d, "annotations")["bbox"].__setitem__(0, 1e39),
        "beyond the float32 range",
    ),
    ("bbox-w-1e-50", lambda d, t: _first(d, "annotations")["bbox"].__setitem__(2, 1e-50), "size (w=0, h="),
    (
        "area-int-10e400",
        lambda d, t: _first(d, "annotations").update(area=10**400),
        "expected a finite non-negative",
    ),
    ("width-int-10e30", lambda d, t: _first(d, "images").update(width=10**30), "(at most 1048576)"),
    (
        "iscrowd-string",
        lambda d, t: _first(d, "annotations").update(iscrowd="0"),
        "'iscrowd' is '0', expected 0 or 1",
    ),
    (
        "file-name-nul",
        lambda d, t: _first(d, "images").update(file_name="x\x00.jpg"),
        "is not a valid file name",
    ),
    (
        "file-name-surrogate",
        lambda d, t: _first(d, "images").update(file_name="\ud800.jpg"),
        "not a valid file name",
    ),
    (
        "file-name-300",
        lambda d, t: _first(d, "images").update(file_name="a" * 300),
        "cannot be looked up: File name",
    ),
    (
        "bbox-3000-values",
        lambda d, t: _first(d, "annotations").update(bbox=list(range(3000))),
        "'bbox' is [0, 1, 2",
    ),
]


@pytest.mark.parametrize(("plant", "text"), [f[1:] for f in FOUND], ids=[f[0] for f in FOUND])
def test_faults_found_by_fuzzing_are_refused_with_a_clear_message(base, tmp_path, plant, text):
    doc, cache = copy.deepcopy(base[0]), base[1]
    case = Case(0, tmp_path / "root")
    make_root(case, doc, cache)
    planted = plant(doc, json.dumps(doc).encode())
    (case.root / ANN).write_bytes(planted if isinstance(planted, bytes) else json.dumps(doc).encode())
    outcome = run(case)  # every promise of the fuzz cases, plus:
    assert outcome.error is not None and text in str(outcome.error), outcome.error
