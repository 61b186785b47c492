"""Critic cache: cached-and-warped maps of an analytic scene, resume after interruption, manifest refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from geosapiens.cli.critics import main
from geosapiens.data.critic_cache import (
    DEFAULT_STRIDE,
    CriticCache,
    build_cache,
    critic_identity,
)
from geosapiens.data.crop import canonical_affine, canonical_to_view
from geosapiens.data.oracle_critic import OracleCritic
from geosapiens.data.records import MAPS_DIRNAME, PoseRecord
from geosapiens.errors import DataError
from geosapiens.models.critics import GeometricCritic, GeometryMaps
from test_geometry_warp import render_sphere, similarity

IMAGE_HW = (120, 100)
F_PX = 150.0
CROP_HW = (64, 48)
SPHERES = [  # (centre xyz in metres, radius): one infant-sized blob per image, at different places
    (np.array([0.05, -0.03, 1.0]), 0.2),
    (np.array([-0.08, 0.05, 1.1]), 0.22),
    (np.array([0.0, 0.1, 0.9]), 0.15),
    (np.array([0.1, 0.0, 1.2]), 0.25),
    (np.array([-0.05, -0.08, 1.0]), 0.18),
]


def canonical_affines(records: list[PoseRecord]) -> np.ndarray:
    """(N, 2, 3) the records' canonical crops (the frame the cache stores)."""
    return np.stack([canonical_affine(r.bbox, CROP_HW) for r in records])


def _camera_centre() -> np.ndarray:
    return np.array([(IMAGE_HW[1] - 1) / 2, (IMAGE_HW[0] - 1) / 2])


def make_dataset(root: Path) -> list[PoseRecord]:
    """Images with generator-style maps (depth mm float32, normals float16, mask uint8) of spheres."""
    records = []
    c = _camera_centre()
    for i, (centre, radius) in enumerate(SPHERES):
        rel = Path("images/train_infant") / f"synth{i:05d}.png"
        depth, normals, mask = render_sphere(*IMAGE_HW, F_PX, c, centre=centre, radius=radius)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), np.full((*IMAGE_HW, 3), 40 * i, np.uint8))
        maps_path = root / MAPS_DIRNAME / rel.with_suffix(".npz")
        maps_path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            maps_path, depth=depth * 1000.0, normals=normals.astype(np.float16), mask=mask.astype(np.uint8)
        )
        ys, xs = np.nonzero(mask)
        bbox = np.array([xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()], np.float32)
        records.append(
            PoseRecord(
                image_path=root / rel,
                keypoints=np.zeros((17, 2), np.float32),
                labelled=np.zeros(17, bool),
                visible=np.zeros(17, bool),
                bbox=bbox,
                width=IMAGE_HW[1],
                height=IMAGE_HW[0],
                image_id=i,
                domain="synthetic",
                maps_path=maps_path,
                annotation_id=i,
            )
        )
    return records


class CountingOracle(OracleCritic):
    """The oracle, counting the images it computes; optionally dies after ``fail_after`` of them."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.seen: list[str] = []
        self.fail_after = fail_after

    def maps_and_units(self, records, affines, out_size_hw):
        if self.fail_after is not None and len(self.seen) + len(records) > self.fail_after:
            raise KeyboardInterrupt("simulated kill")
        self.seen += [Path(r.image_path).name for r in records]
        return super().maps_and_units(records, affines, out_size_hw)


def build(records, root, out, critic=None, spec="oracle", size=CROP_HW, batch_size=2, stride=1):
    """Full-resolution maps unless ``stride`` says otherwise (the exactness tests compare at crop pixels)."""
    return build_cache(
        records,
        critic or OracleCritic(),
        out,
        size,
        critic_identity(spec),
        {"root": str(root), "annotation": None, "format": "syrip"},
        batch_size=batch_size,
        stride=stride,
        progress=False,
    )


@pytest.fixture()
def dataset(tmp_path) -> tuple[Path, list[PoseRecord]]:
    root = tmp_path / "data"
    return root, make_dataset(root)


def test_cached_and_warped_maps_match_the_scene_rendered_in_each_view(dataset, tmp_path):
    root, records = dataset
    stats = build(records, root, tmp_path / "cache")
    assert (stats.written, stats.skipped, stats.total) == (5, 0, 5)
    cache = CriticCache(tmp_path / "cache", expected_critic="oracle", input_size=CROP_HW)
    assert len(cache) == 5

    canonical = canonical_affines(records)
    for i, (centre, radius) in enumerate(SPHERES):
        # the depth normalisation the cache applied, recovered from the stored canonical map
        stored = cache.load([records[i].image_path])
        raw_can = _canonical_raw_depth(canonical[i], centre, radius)
        fit_on = binary_erosion(stored.valid[0, 0].numpy() & (raw_can > 0), iterations=2)
        med, mad = _fit_normalisation(raw_can[fit_on], stored.depth.float()[0, 0].numpy()[fit_on])
        box_c = np.array(
            [records[i].bbox[0] + records[i].bbox[2] / 2, records[i].bbox[1] + records[i].bbox[3] / 2]
        )
        for angle, zoom, flip in [(0, 1.0, False), (35, 1.1, False), (0, 0.9, True), (-120, 1.0, True)]:
            view = similarity(
                angle, zoom * 0.5, (0.0, 0.0), flip
            )  # image -> 48x48 view, ~same scale as canonical
            view[:, 2] = np.array([23.5, 23.5]) - view[:, :2] @ box_c
            got = cache.lookup(
                [str(records[i].image_path)],
                canonical_to_view(torch.from_numpy(canonical[i : i + 1]), torch.from_numpy(view[None])),
                out_size_hw=(48, 48),
            )
            d_ref, n_ref, m_ref = _render_image_view(view, centre, radius)
            valid = got.valid[0, 0].numpy()
            both = valid & m_ref
            inner = binary_erosion(both, iterations=2)
            assert (valid != m_ref).mean() < 0.03 and inner.sum() > 200
            depth_expected = (d_ref - med) / mad  # the true view depth under the canonical normalisation
            err = np.abs(got.depth[0, 0].numpy() - depth_expected)
            assert np.median(err[both]) < 0.02 and err[inner].max() < 0.08, (i, angle, flip)
            n_got = got.normals[0].permute(1, 2, 0).numpy()
            ang = np.degrees(np.arccos(np.clip((n_got * n_ref).sum(-1), -1, 1)))
            assert np.median(ang[both]) < 0.5 and ang[inner].max() < 2.0, (i, angle, flip)


def _render_image_view(view: np.ndarray, centre: np.ndarray, radius: float):
    """The sphere rendered by the camera of an image -> view similarity (see test_geometry_warp)."""
    s = np.sqrt(abs(np.linalg.det(view[:, :2])))
    R = view[:, :2] / s
    R3 = np.eye(3)
    R3[:2, :2] = R
    c = s * R @ _camera_centre() + view[:, 2]
    return render_sphere(48, 48, s * F_PX, c, centre=R3 @ centre, radius=radius)


def _canonical_raw_depth(affine, centre, radius):
    """True depth (m) at the canonical crop's pixels, by ray-casting through the inverse crop affine."""
    inv = np.linalg.inv(np.vstack([affine, [0, 0, 1]]))[:2]
    ys, xs = np.mgrid[: CROP_HW[0], : CROP_HW[1]].astype(np.float64)
    u = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    v = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    c = _camera_centre()
    d = np.stack([(u - c[0]) / F_PX, (v - c[1]) / F_PX, np.ones_like(u)], -1)
    dd, dc = (d * d).sum(-1), d @ centre
    disc = dc**2 - dd * (centre @ centre - radius**2)
    return np.where(disc > 0, (dc - np.sqrt(np.maximum(disc, 0))) / dd, 0.0)


def _fit_normalisation(raw: np.ndarray, normalised: np.ndarray) -> tuple[float, float]:
    """(median, deviation) such that normalised = (raw - median) / deviation, by least squares."""
    slope, intercept = np.polyfit(raw, normalised, 1)
    assert slope > 0  # larger = farther survives the normalisation
    residual = normalised - (slope * raw + intercept)
    assert np.abs(residual).max() < 0.1  # the stored map is an affine function of the true depth
    return -intercept / slope, 1.0 / slope


def test_entries_are_float16_and_normalised(dataset, tmp_path):
    root, records = dataset
    build(records, root, tmp_path / "cache")
    cache = CriticCache(tmp_path / "cache")
    entry = np.load(cache.path_for(records[0].image_path))
    assert entry.dtype == np.float16 and entry.shape == (6, *CROP_HW)
    valid = entry[4] > 0.5
    d = entry[0][valid].astype(np.float64)
    assert abs(np.median(d)) < 1e-2 and abs(np.abs(d - np.median(d)).mean() - 1) < 1e-2
    assert (entry[0][~valid] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(entry[1:4].astype(np.float32), axis=0)[valid], 1, atol=3e-3)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert (
        manifest["complete"] and manifest["count"] == 5 and manifest["crop"]["input_size_hw"] == list(CROP_HW)
    )
    assert manifest["critic"]["kind"] == "oracle" and "normalize_relative_depth" in manifest["normalisation"]


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(dataset, tmp_path):
    root, records = dataset
    build(records, root, tmp_path / "ref")
    ref = CriticCache(tmp_path / "ref")

    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        build(records, root, out, critic=CountingOracle(fail_after=2), batch_size=1)
    with pytest.raises(DataError, match="incomplete"):
        CriticCache(out)
    done = sorted(p.name for p in (out / "entries").rglob("*.npy"))
    assert len(done) == 2
    assert not list((out / "entries").rglob("*.tmp"))  # the atomic writes left nothing half-written
    # a stale temp file and a truncated entry, as a hard kill (not an exception) could leave behind
    stray = ref.path_for(records[3].image_path).relative_to(tmp_path / "ref")
    (out / stray).parent.mkdir(parents=True, exist_ok=True)
    (out / stray).with_name(f".{stray.name}.12345.tmp").write_bytes(b"partial")
    broken = out / ref.path_for(records[0].image_path).relative_to(tmp_path / "ref")
    broken.write_bytes(broken.read_bytes()[:100])

    critic = CountingOracle()
    stats = build(records, root, out, critic=critic)
    assert sorted(critic.seen) == sorted(Path(r.image_path).name for r in (records[0], *records[2:]))
    assert (stats.written, stats.skipped) == (4, 1)
    assert not list((out / "entries").rglob("*.tmp"))
    cache = CriticCache(out, expected_critic="oracle", input_size=CROP_HW)
    for r in records:
        np.testing.assert_array_equal(
            np.load(cache.path_for(r.image_path)), np.load(ref.path_for(r.image_path))
        )
    # and a third run has nothing left to do
    again = CountingOracle()
    assert build(records, root, out, critic=again).written == 0 and again.seen == []


def test_cache_from_another_critic_or_crop_size_is_refused(dataset, tmp_path):
    root, records = dataset
    build(records, root, tmp_path / "cache")
    weights = tmp_path / "small.safetensors"
    weights.write_bytes(b"\x01" * 5000)
    with pytest.raises(DataError, match=r"64x48 crops, not 32x24"):
        CriticCache(tmp_path / "cache", input_size=(32, 24))
    with pytest.raises(DataError, match=r"critic oracle, not small"):
        CriticCache(tmp_path / "cache", expected_critic=f"small:{weights}")
    with pytest.raises(DataError, match="critic oracle"):
        build(records, root, tmp_path / "cache", spec=f"small:{weights}")
    with pytest.raises(DataError, match="64x48 crops"):
        build(records, root, tmp_path / "cache", size=(32, 24))
    assert CriticCache(tmp_path / "cache").manifest["complete"]  # the refused runs touched nothing

    # same kind, other weights: refused; the same weights moved elsewhere: accepted
    build(records, root, tmp_path / "small_cache", spec=f"small:{weights}")
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"\x02" * 5000)
    with pytest.raises(DataError, match="sha256"):
        CriticCache(tmp_path / "small_cache", expected_critic=f"small:{other}")
    moved = tmp_path / "moved" / "small.safetensors"
    moved.parent.mkdir()
    shutil.copy(weights, moved)
    assert len(CriticCache(tmp_path / "small_cache", expected_critic=f"small:{moved}")) == 5


def test_lookup_runs_on_the_affine_device_and_names_missing_images(dataset, tmp_path):
    root, records = dataset
    build(records[:2], root, tmp_path / "cache")
    cache = CriticCache(tmp_path / "cache")
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).expand(2, 2, 3)
    got = cache.lookup([str(r.image_path) for r in records[:2]], identity)
    stored = cache.load([r.image_path for r in records[:2]])
    torch.testing.assert_close(got.depth, stored.depth.float(), atol=1e-5, rtol=0)
    assert got.depth.device == identity.device and got.valid.dtype == torch.bool
    with pytest.raises(DataError, match=records[3].image_path.name):
        cache.lookup([str(records[3].image_path)], identity[:1])


def _write_coco(root: Path, records: list[PoseRecord]) -> Path:
    """A SyRIP-format annotation file for the records (images under images/train_infant)."""
    ann = root / "annotations" / "synth" / "person_keypoints_train_infant.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    coco = {
        "images": [
            {
                "id": i + 1,
                "file_name": r.image_path.name,
                "width": IMAGE_HW[1],
                "height": IMAGE_HW[0],
                "is_synthetic": True,
            }
            for i, r in enumerate(records)
        ],
        "annotations": [
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "bbox": [float(v) for v in r.bbox],
                "area": float(r.bbox[2] * r.bbox[3]),
                "iscrowd": 0,
                "num_keypoints": 0,
                "keypoints": [0] * 51,
            }
            for i, r in enumerate(records)
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    ann.write_text(json.dumps(coco))
    return ann


def test_cli_builds_a_cache_from_a_syrip_folder(dataset, tmp_path, capsys):
    root, records = dataset
    ann = _write_coco(root, records)
    out = tmp_path / "cli_cache"
    args = [
        "--critic",
        "oracle",
        "--data",
        str(root),
        "--annotation",
        str(ann.relative_to(root)),
        "--out",
        str(out),
        "--input-size",
        "64",
        "48",
        "--no-progress",
    ]
    assert main(args) == 0
    assert "5 images (5 computed, 0 already cached)" in capsys.readouterr().out
    assert main(args) == 0
    assert "(0 computed, 5 already cached)" in capsys.readouterr().out
    assert main([*args[:-3], "32", "24", "--no-progress"]) == 1
    assert "64x48 crops, not 32x24" in capsys.readouterr().err
    # maps identical to the library path
    build(records, root, tmp_path / "lib", stride=DEFAULT_STRIDE)  # the CLI's default stride
    lib, cli = CriticCache(tmp_path / "lib"), CriticCache(out)
    np.testing.assert_array_equal(
        np.load(cli.path_for(records[2].image_path)), np.load(lib.path_for(records[2].image_path))
    )


class BrightnessCritic(GeometricCritic):
    """A transparent 'model': depth = mean channel value, normals = the normalised colour, no mask."""

    def forward(self, images: torch.Tensor) -> GeometryMaps:
        return GeometryMaps(
            depth=images.mean(1, keepdim=True), normals=torch.nn.functional.normalize(images, dim=1)
        )


def test_model_critics_run_on_canonical_crops_of_the_images(tmp_path):
    from geosapiens.data.crop import warp_image
    from geosapiens.data.images import read_image
    from geosapiens.models.geometry import normalize_relative_depth
    from geosapiens.models.preprocess import to_tensor

    root = tmp_path / "data"
    records = make_dataset(root)
    for r in records:  # a gradient image, so that crops differ from pixel to pixel
        yy, xx = np.mgrid[: IMAGE_HW[0], : IMAGE_HW[1]]
        rgb = np.stack([2 * xx, 2 * yy, (xx + yy) % 255], -1).astype(np.uint8)
        cv2.imwrite(str(r.image_path), rgb[..., ::-1])
        r.bbox = np.array([2.0, 20.0, 40.0, 60.0], np.float32)  # near the left edge: the padded crop runs off
    weights = tmp_path / "critic.pt2"
    weights.write_bytes(b"\x03" * 100)
    build(
        records, root, tmp_path / "cache", critic=BrightnessCritic().freeze(), spec=f"torchscript:{weights}"
    )
    cache = CriticCache(tmp_path / "cache", expected_critic=f"torchscript:{weights}", input_size=CROP_HW)

    A = canonical_affine(records[1].bbox, CROP_HW)
    image = read_image(records[1].image_path)
    crop = to_tensor(warp_image(image, A, CROP_HW))[None]
    inside = torch.from_numpy(warp_image(np.ones(IMAGE_HW, np.uint8), A, CROP_HW) > 0)[None, None]
    assert 0 < inside.float().mean() < 1  # the padded box runs off the image: the border is not 'valid'
    expected = BrightnessCritic()(crop)
    stored = cache.load([records[1].image_path])
    assert torch.equal(stored.valid, inside)
    torch.testing.assert_close(
        stored.depth.float(), normalize_relative_depth(expected.depth, inside), atol=2e-3, rtol=2e-3
    )
    torch.testing.assert_close(stored.normals.float(), expected.normals * inside, atol=1e-3, rtol=0)


def test_oracle_on_depth_pngs_derives_normals_from_depth(tmp_path):
    """MINI-RGBD style: uint16 mm depth + foreground mask, no normals: they come from depth and intrinsics."""
    centre, radius = SPHERES[0]
    c = _camera_centre()
    depth, normals, mask = render_sphere(*IMAGE_HW, F_PX, c, centre=centre, radius=radius)
    cv2.imwrite(str(tmp_path / "depth.png"), np.round(depth * 1000).astype(np.uint16))
    cv2.imwrite(str(tmp_path / "mask.png"), mask.astype(np.uint8) * 255)
    ys, xs = np.nonzero(mask)
    record = PoseRecord(
        image_path=tmp_path / "rgb.png",
        keypoints=np.zeros((17, 2), np.float32),
        labelled=np.zeros(17, bool),
        visible=np.zeros(17, bool),
        bbox=np.array([xs.min(), ys.min(), np.ptp(xs), np.ptp(ys)], np.float32),
        width=IMAGE_HW[1],
        height=IMAGE_HW[0],
        image_id="01/00000",
        depth_path=tmp_path / "depth.png",
        mask_path=tmp_path / "mask.png",
    )
    K = np.array([[F_PX, 0, c[0]], [0, F_PX, c[1]], [0, 0, 1]])
    with pytest.raises(DataError, match="intrinsics"):
        OracleCritic().image_maps(record)
    maps = OracleCritic(K).image_maps(record)
    ok = maps.valid[0, 0].numpy()
    assert ok.sum() > 0.8 * mask.sum() and not (ok & ~mask).any()
    est = maps.normals[0].permute(1, 2, 0).numpy()
    angle = np.degrees(np.arccos(np.clip((est * normals).sum(-1), -1, 1)))
    inner = binary_erosion(ok, iterations=3)  # smoothing (sigma 1.5 px) bends normals at the silhouette
    assert np.median(angle[ok]) < 1.0 and np.percentile(angle[inner], 95) < 2.0 and angle[inner].max() < 3.0
    A = torch.from_numpy(canonical_affine(record.bbox, CROP_HW))[None]
    crop = OracleCritic(K).maps([record], A, CROP_HW)
    assert crop.depth.shape == (1, 1, *CROP_HW) and crop.valid.any()


def test_oracle_errors_name_the_file(dataset, tmp_path):
    root, records = dataset
    broken = records[0].maps_path
    np.savez(broken, depth=np.zeros((4, 4), np.float32), mask=np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=rf"{broken.name}.*normals"):
        OracleCritic().image_maps(records[0])
    broken.write_bytes(b"garbage")
    with pytest.raises(DataError, match=broken.name):
        OracleCritic().image_maps(records[0])
    records[1].maps_path = None
    with pytest.raises(DataError, match="no rendered geometry"):
        OracleCritic().image_maps(records[1])


@pytest.mark.slow
def test_generator_mini_rgbd_cache_and_depth_derived_normals(tmp_path, capsys):
    """On the generator's tiny MINI-RGBD output: the CLI caches it, and normals derived from its depth PNGs
    agree with its rendered normals (the fallback real MINI-RGBD, which has no normals, relies on)."""
    import dataclasses

    from geosapiens.data.formats.mini_rgbd import MINI_RGBD_INTRINSICS, read_mini_rgbd
    from geosapiens.data.synth.generate import generate
    from geosapiens.data.synth.presets import PRESETS

    generate(tmp_path / "synth", PRESETS["tiny"], seed=0, workers=1, progress=False)
    root = tmp_path / "synth" / "MINI-RGBD_web"
    records = read_mini_rgbd(root)
    assert len(records) == 8 and all(r.maps_path is not None and r.depth_path is not None for r in records)
    oracle = OracleCritic(MINI_RGBD_INTRINSICS)
    rendered = oracle.image_maps(records[0])
    derived = oracle.image_maps(dataclasses.replace(records[0], maps_path=None))
    both = (rendered.valid & derived.valid)[0, 0]
    assert both.sum() > 0.9 * derived.valid.sum() and both.sum() > 0.8 * rendered.valid.sum()
    angle = torch.rad2deg(torch.acos((rendered.normals * derived.normals).sum(1)[0][both].clamp(-1, 1)))
    assert angle.median() < 3.0, angle.median()
    assert (rendered.depth - derived.depth)[0, 0][both].abs().max() <= 0.5 + 1e-3  # PNG: whole millimetres

    out = tmp_path / "cache"
    assert (
        main(
            [
                "--critic",
                "oracle",
                "--data",
                str(root),
                "--format",
                "mini-rgbd",
                "--out",
                str(out),
                "--input-size",
                "64",
                "48",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "8 images (8 computed" in capsys.readouterr().out
    cache = CriticCache(out, expected_critic="oracle", input_size=(64, 48))
    assert cache.manifest["dataset"]["format"] == "mini-rgbd"
    maps = cache.load([r.image_path for r in records])
    assert maps.valid.flatten(1).any(1).all()


class _ScriptedGeometry(torch.nn.Module):
    """Stands in for an official ``*_torchscript.pt2``: depth = red channel, normals = the colour."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, :1], x


@pytest.mark.filterwarnings(
    "ignore:`torch.jit.*deprecated:FutureWarning"
)  # the official files are TorchScript
def test_cli_loads_a_torchscript_critic_and_refuses_its_cache_for_another_file(dataset, tmp_path, capsys):
    root, records = dataset
    ann = _write_coco(root, records)
    script = tmp_path / "geometry_torchscript.pt2"
    torch.jit.save(torch.jit.script(_ScriptedGeometry()), str(script))
    out = tmp_path / "ts_cache"
    args = [
        "--critic",
        f"torchscript:{script}",
        "--data",
        str(root),
        "--annotation",
        str(ann.relative_to(root)),
        "--out",
        str(out),
        "--input-size",
        "64",
        "48",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    cache = CriticCache(out, expected_critic=f"torchscript:{script}", input_size=CROP_HW)
    stored = cache.load([records[0].image_path])
    assert stored.valid.all()  # the crop lies inside the image and a TorchScript critic has no mask
    unit = torch.ones(1, *cache.map_size)  # stored at the CLI's default stride
    torch.testing.assert_close(stored.normals.float().norm(dim=1), unit, atol=2e-3, rtol=0)
    other = tmp_path / "other_torchscript.pt2"
    torch.jit.save(torch.jit.script(torch.nn.Sequential(_ScriptedGeometry())), str(other))
    assert main([*args[:1], f"torchscript:{other}", *args[2:]]) == 1
    assert "cache built with critic torchscript" in capsys.readouterr().err


def test_strided_maps_agree_with_full_resolution_and_the_oracle_measures_lambda_z(dataset, tmp_path):
    """Maps stored at stride 4 are the full-resolution maps, antialiased and UDP-aligned; the body distance
    is 0 on the body and grows off it; the oracle's manifest says what its units are in millimetres."""
    from geosapiens.losses.functional import sample_maps

    root, records = dataset
    K = np.array([[F_PX, 0, _camera_centre()[0]], [0, F_PX, _camera_centre()[1]], [0, 0, 1]])
    build(records, root, tmp_path / "full", critic=OracleCritic(K))
    build(records, root, tmp_path / "coarse", critic=OracleCritic(K), stride=4)
    full, coarse = CriticCache(tmp_path / "full"), CriticCache(tmp_path / "coarse")
    assert coarse.map_size == (16, 12) and full.map_size == CROP_HW
    paths = [r.image_path for r in records]
    a, b = full.load(paths), coarse.load(paths)
    # compare where both see the body, well inside it, at the pixel centres of the coarse map
    ys, xs = np.mgrid[:16, :12]
    uv = torch.from_numpy(np.stack([xs / 11.0, ys / 15.0], -1).reshape(1, -1, 2)).float().expand(5, -1, -1)
    eroded = np.stack([binary_erosion(v, iterations=5) for v in a.valid[:, 0].numpy()])
    inner = sample_maps(torch.from_numpy(eroded).float()[:, None], uv)[..., 0] > 0.99
    assert inner.sum() > 100
    depth_a, depth_b = (sample_maps(m.depth.float(), uv)[..., 0] for m in (a, b))
    # the prefilter averages a curved surface over ~2 px (the dome reads ~0.1 MAD farther), no more
    assert (depth_a - depth_b)[inner].abs().median() < 0.15
    # aligned: the body's centroid in image units is the same at both resolutions (within 1/4 coarse px)
    def centroids(valid: torch.Tensor) -> np.ndarray:
        h, w = valid.shape[-2:]
        yy, xx = np.mgrid[:h, :w]
        return np.array([[(xx / (w - 1))[v].mean(), (yy / (h - 1))[v].mean()] for v in valid[:, 0].numpy()])

    assert np.abs(centroids(a.valid) - centroids(b.valid)).max() < 0.25 / 11
    na, nb = (torch.nn.functional.normalize(sample_maps(m.normals.float(), uv), dim=-1) for m in (a, b))
    assert torch.rad2deg(torch.acos((na * nb).sum(-1).clamp(-1, 1)))[inner].median() < 3.0
    # body distance: exactly 0 on the body, the pixel distance to it (over the crop's longer side) off it
    dist = full.load(paths).body_distance.float()
    assert dist[a.valid].abs().max() == 0 and (dist[~a.valid] > 0).all()
    assert dist.max() <= np.hypot(*CROP_HW) / (max(CROP_HW) - 1)

    # lambda_z = (depth unit / image unit)^2, each measured from the spheres directly
    canonical = canonical_affines(records)
    expected = []
    for i, (centre, radius) in enumerate(SPHERES):
        raw = _canonical_raw_depth(canonical[i], centre, radius) * 1000.0
        body = raw[raw > 0]
        depth_unit = np.abs(body - np.median(body)).mean()
        crop_px_per_image_px = np.sqrt(abs(np.linalg.det(canonical[i, :, :2])))
        image_unit = (max(CROP_HW) - 1) * np.median(body) / F_PX / crop_px_per_image_px
        expected.append((depth_unit / image_unit) ** 2)
    metric = full.manifest["metric"]
    assert metric["images"] == 5 and metric["lambda_z"] == pytest.approx(np.median(expected), rel=0.1)
    assert full.lambda_z == metric["lambda_z"] == coarse.lambda_z
